"""Stage prepare: turn the configured dataset into quantized, split arrays under data/prepared."""

from __future__ import annotations

import logging

from genladder.config import load_params
from genladder.data import prepared_dir
from genladder.prepare import prepare
from genladder.runtime import repo_root, stage_entry
from genladder.sources import check_source_files
from genladder.tracking import stage_run

log = logging.getLogger("genladder.stages.prepare")


@stage_entry
def main() -> None:
    params = load_params()
    cfg = params.data
    data_root = (repo_root() / cfg.root).resolve()
    check_source_files(cfg, data_root)

    stats = prepare(cfg, data_root)

    out = prepared_dir()
    with stage_run("prepare", params.tracking.experiment, params.tracking.enabled) as run:
        run.log_params({"data": cfg.model_dump(mode="json")})
        run.log_metrics({f"images_{split}": n for split, n in stats["num_images"].items()})
        run.log_artifact(out / "stats.json")
        run.log_artifact(out / "meta.json")
        run.log_artifact(out / "preview.png")


if __name__ == "__main__":
    main()
