"""Stage sample@SAMPLER: generate class-conditional samples with one sampler of params.yaml.

Writes samples/SAMPLER/{samples.npz, grid.png, process.gif, info.json}, then logs one
MLflow run. Exits 2 when params are invalid, SAMPLER is not a key of samplers, or the
model it needs is missing or does not fit the sampler.
"""

from __future__ import annotations

import argparse
import logging

from genladder.config import ParamsError, load_params
from genladder.models import load_model
from genladder.runtime import DataError, repo_root, select_device, stage_entry
from genladder.sampling import check_model, run_sampler, write_outputs
from genladder.tracking import stage_run

log = logging.getLogger("genladder.stages.sample")


@stage_entry
def main() -> None:
    parser = argparse.ArgumentParser(description="Generate samples with one sampler of params.yaml.")
    parser.add_argument("sampler", help="a key of the samplers section of params.yaml")
    args = parser.parse_args()
    name = args.sampler

    params = load_params()
    if name not in params.samplers:
        raise ParamsError(f"unknown sampler {name!r}; known samplers: {', '.join(sorted(params.samplers))}")
    sampler = params.samplers[name]

    root = repo_root()
    model_path = root / "models" / sampler.variant / "model.pt"
    if not model_path.is_file():
        raise DataError(f"model not found: {model_path}; run `dvc repro train@{sampler.variant}` first")
    device = select_device(params.runtime.device)
    model, checkpoint = load_model(model_path, device)
    meta = checkpoint["data"]
    paradigm = checkpoint["paradigm"]
    check_model(sampler, str(getattr(paradigm, "value", paradigm)), model, meta)

    result = run_sampler(name, sampler, params.sampling, model, meta, device)
    out_dir = root / "samples" / name
    info = write_outputs(out_dir, name, sampler, result, int(meta["levels"]))
    log.info(
        "wrote %s: %d images, NFE %d, %.4f s per image on %s",
        out_dir, info["num_samples"], info["nfe"], info["seconds_per_image"], device,
    )

    tags = {"model_variant": sampler.variant, "method": sampler.method.value}
    with stage_run("sample", params.tracking.experiment, params.tracking.enabled, variant=name, tags=tags) as run:
        run.log_params(
            {
                "variant": sampler.variant,
                "method": sampler.method.value,
                "sampling": params.sampling.model_dump(mode="json"),
                "settings": info["settings"],
            }
        )
        run.log_metrics({key: info[key] for key in ("nfe", "seconds_total", "seconds_per_image", "images_per_second")})
        for file_name in ("grid.png", "process.gif", "info.json"):
            run.log_artifact(out_dir / file_name)


if __name__ == "__main__":
    main()
