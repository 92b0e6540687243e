"""Stage train_evaluator: train the classifier behind every metric and record its test accuracy."""

from __future__ import annotations

import logging

from genladder.config import load_params
from genladder.data import load_split
from genladder.evaluator import REGISTERED_NAME, save_evaluator, train_evaluator
from genladder.runtime import repo_root, select_device, stage_entry, write_json, write_text
from genladder.tracking import stage_run

log = logging.getLogger("genladder.stages.train_evaluator")


@stage_entry
def main() -> None:
    params = load_params()
    cfg = params.evaluator
    device = select_device(params.runtime.device)
    train_images, train_labels, meta = load_split("train")
    val_images, val_labels, _ = load_split("val")
    test_images, test_labels, _ = load_split("test")
    log.info(
        "training the evaluator on %d images (%d val, %d test) on %s",
        len(train_images), len(val_images), len(test_images), device,
    )

    result = train_evaluator(
        cfg,
        (train_images, train_labels),
        (val_images, val_labels),
        (test_images, test_labels),
        meta,
        device,
    )

    out = repo_root() / "models" / "evaluator"
    save_evaluator(out / "model.pt", result, cfg, meta)
    write_json(out / "metrics.json", result.metrics)
    columns = ["epoch", "train_loss", "train_accuracy", "val_accuracy"]
    rows = ["\t".join(columns)] + ["\t".join(f"{row[c]:.6g}" for c in columns) for row in result.history]
    write_text(out / "history.tsv", "\n".join(rows) + "\n")

    with stage_run("train_evaluator", params.tracking.experiment, params.tracking.enabled) as run:
        run.log_params({"evaluator": cfg.model_dump(mode="json"), "data": meta})
        for row in result.history:
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        run.log_metrics({k: v for k, v in result.metrics.items() if k != "best_epoch"})
        run.log_artifact(out / "metrics.json")
        run.log_artifact(out / "history.tsv")
        # The input example shows in MLflow's model page what the classifier takes.
        example = result.model.encode(train_images[:2]).cpu().numpy()
        model = result.model.cpu().eval()
        run.log_torch_model(model, name="evaluator", registered_name=REGISTERED_NAME, input_example=example)


if __name__ == "__main__":
    main()
