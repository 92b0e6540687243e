"""Stage train@VARIANT: train one variant and write models/VARIANT/.

Usage: ``python stages/train.py VARIANT`` from the repository root, where VARIANT is a key
of ``variants`` in params.yaml. Writes model.pt, loss.tsv (step, loss, lr) and
metrics.json, then logs the run to MLflow and registers the model as genladder-VARIANT.
Resumes from checkpoints/VARIANT/ after an interruption. With ``train.nproc > 1`` it
reruns itself under torchrun, one process per rank.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from genladder.config import ParamsError, Params, load_params
from genladder.runtime import repo_root, select_device, stage_entry, write_json, write_text

log = logging.getLogger("genladder.stages.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train one variant of params.yaml and write models/VARIANT/.")
    parser.add_argument("variant", help="key of the variants section of params.yaml, e.g. ar")
    return parser.parse_args(argv)


@stage_entry
def main() -> None:
    args = parse_args()
    params = load_params()
    if args.variant not in params.variants:
        raise ParamsError(
            f"unknown variant {args.variant!r}; params.yaml defines variants {sorted(params.variants)}"
        )

    from genladder.distributed import inside_torchrun, torchrun_command

    if params.train.nproc > 1 and not inside_torchrun():
        command = torchrun_command(params.train.nproc, str(Path(__file__).resolve()), [args.variant])
        log.info("running %d training processes: %s", params.train.nproc, " ".join(command))
        sys.exit(subprocess.call(command))
    run(params, args.variant)


def run(params: Params, name: str) -> None:
    """Train variant `name` and, on rank 0, write its outputs and track the run."""
    import torch

    from genladder import distributed
    from genladder.checkpoint import checkpoint_path, run_key
    from genladder.data import load_split
    from genladder.models import build_model, count_parameters, mlflow_model_arguments, model_checkpoint, save_model
    from genladder.trainer import TrainingDiverged, train

    variant = params.variants[name]
    steps = variant.steps or params.train.steps
    root = repo_root()

    # 1. Data, devices, model.
    train_images, train_labels, meta = load_split("train", root)
    val_images, val_labels, _ = load_split("val", root)
    context, device = distributed.init_from_env(select_device(params.runtime.device))
    if params.train.batch_size % context.world_size:
        distributed.shutdown()
        raise ParamsError(
            f"train.batch_size {params.train.batch_size} is not divisible by the {context.world_size} "
            "processes that torchrun started; use a multiple of the process count"
        )
    model = build_model(variant, params.backbone, meta, seed=params.train.seed).to(device)
    key = run_key(variant, params.backbone, params.train, steps, meta, train_images, train_labels)
    checkpoint = checkpoint_path(root, name, key)
    if context.is_main:
        log.info(
            "training %s (%s, %d parameters) for %d steps on %s, %d process(es)",
            name, variant.paradigm.value, count_parameters(model), steps, device, context.world_size,
        )

    # 2. Train.
    try:
        result = train(
            model, train_images, train_labels, params.train, steps,
            val_images=val_images, val_labels=val_labels,
            checkpoint=checkpoint, run_key=key, desc=f"train@{name}",
        )
    except TrainingDiverged as exc:
        log.error("%s", exc)
        distributed.shutdown()
        sys.exit(1)
    distributed.shutdown()  # no collective calls follow, and only rank 0 writes
    if not context.is_main:
        return

    # 3. Files first: model.pt, loss.tsv, metrics.json.
    out = root / "models" / name
    save_model(out / "model.pt", model_checkpoint(
        name, result.model, result.ema, variant, params.backbone, params.train, meta, result.steps
    ))
    rows = ["step\tloss\tlr"] + [f"{r['step']}\t{r['loss']:.6f}\t{r['lr']:.6g}" for r in result.history]
    write_text(out / "loss.tsv", "\n".join(rows) + "\n")
    last_validation = result.validation[-1] if result.validation else {}
    metrics = {
        "variant": name,
        "paradigm": variant.paradigm.value,
        "param_count": count_parameters(result.model),
        "steps": result.steps,
        "train_loss": result.final_loss,
        **{k: v for k, v in last_validation.items() if k != "step"},
        "images_per_second": round(result.images_per_second, 1),
        "train_seconds": round(result.train_seconds, 1),
        "validation": result.validation,
    }
    write_json(out / "metrics.json", metrics)
    checkpoint.unlink(missing_ok=True)
    log.info("wrote %s; removed the finished run's checkpoint %s", out, checkpoint)

    # 4. Then tracking, which only warns when MLflow fails.
    from genladder.tracking import stage_run

    with stage_run("train", params.tracking.experiment, params.tracking.enabled, variant=name) as tracked:
        tracked.log_params({
            "variant": variant.model_dump(mode="json"),
            "backbone": params.backbone.model_dump(mode="json"),
            "train": params.train.model_dump(mode="json"),
            "steps": steps,
        })
        for row in result.history:
            tracked.log_metrics({"loss": row["loss"], "lr": row["lr"]}, step=int(row["step"]))
        for row in result.validation:
            tracked.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
        tracked.log_metrics({
            "param_count": metrics["param_count"],
            "images_per_second": metrics["images_per_second"],
            "train_seconds": metrics["train_seconds"],
        })
        tracked.log_artifact(out / "loss.tsv")
        tracked.log_artifact(out / "metrics.json")
        ema = result.ema.to(torch.device("cpu"))
        tracked.log_torch_model(ema, "model", registered_name=f"genladder-{name}", **mlflow_model_arguments(ema))


if __name__ == "__main__":
    main()
