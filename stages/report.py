"""Stage report: write report/report.md and report/index.html with the metrics, pictures and claims."""

from __future__ import annotations

import logging

from genladder.config import load_params
from genladder.report.render import load_evaluation, write_report
from genladder.runtime import repo_root, stage_entry
from genladder.tracking import stage_run

log = logging.getLogger("genladder.stages.report")


@stage_entry
def main() -> None:
    params = load_params()
    root = repo_root()
    evaluation = load_evaluation(root, order=list(params.samplers))
    paths = write_report(root, root / "report", evaluation)
    for claim in evaluation.claims:
        log.info("claim %d (%s): %s", claim.number, claim.title, claim.verdict.value)
    log.info("wrote %s and %s", paths["markdown"], paths["html"])

    with stage_run("report", params.tracking.experiment, params.tracking.enabled) as run:
        run.set_tags({f"claim.{c.number}": c.verdict.value for c in evaluation.claims})
        run.log_artifact(paths["folder"], "report")


if __name__ == "__main__":
    main()
