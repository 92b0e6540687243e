"""Stage evaluate: score every sampler, the reference rows and the ar NLL against held-out data."""

from __future__ import annotations

import logging

from genladder.config import load_params
from genladder.metrics.run import REAL_TRAIN, evaluate_all, quality_rows, summary, write_outputs
from genladder.report.plots import plot_quality_vs_nfe
from genladder.runtime import repo_root, select_device, stage_entry
from genladder.tracking import flatten, stage_run

log = logging.getLogger("genladder.stages.evaluate")


@stage_entry
def main() -> None:
    params = load_params()
    root = repo_root()
    device = select_device(params.runtime.device)

    results = evaluate_all(params, root, device)
    paths = write_outputs(results, root)
    floor = results.references[REAL_TRAIN]["metrics"]["frechet_distance"]["value"]
    plot_quality_vs_nfe(quality_rows(results), paths["png"], floor=floor)
    log.info("wrote %s, %s and %s", paths["metrics"], paths["tsv"], paths["png"])

    with stage_run("evaluate", params.tracking.experiment, params.tracking.enabled) as run:
        run.log_params({"evaluate": params.evaluate.model_dump(mode="json"), "samplers": ", ".join(params.samplers)})
        figures = flatten(summary(results))
        run.log_metrics({k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        run.log_artifact(paths["metrics"], "metrics")
        run.log_artifact(paths["tsv"], "plots")
        run.log_artifact(paths["png"], "plots")


if __name__ == "__main__":
    main()
