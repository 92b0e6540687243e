"""The training loop: schedules, seeds, resume, NaN stop, bf16, and the train stage end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from genladder.checkpoint import checkpoint_path, load_state, run_key
from genladder.config import BackboneConfig, ParamsError, TrainConfig, VariantConfig, validate_params
from genladder.data import save_split
from genladder.models import build_model, load_model
from genladder.trainer import (
    TrainingDiverged,
    batch_indices,
    derive_seed,
    ema_decay_at,
    evaluate,
    global_batch,
    lr_at,
    train,
)

REPO = Path(__file__).resolve().parents[1]
DATA = {"channels": 1, "image_size": 8, "levels": 16, "num_classes": 2}
BACKBONE = BackboneConfig(width=8, channel_mult=[1, 2], num_res_blocks=1, dropout=0.1)
AR = VariantConfig(paradigm="ar", group_sizes=[1, 4], patch_sizes=[2, 4])
DIFFUSION = VariantConfig(paradigm="diffusion", timesteps=50)


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one thread: tiny models gain nothing from more, and lose a lot when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def class_patterns(count: int, size: int = 8, levels: int = 16, num_classes: int = 2, seed: int = 0):
    """Return uint8 images (count, 1, size, size), one fixed random pattern per class, and labels."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randint(levels, (num_classes, 1, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.arange(count) % num_classes
    return patterns[labels].clone(), labels


def small_config(**overrides) -> TrainConfig:
    values = {"batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "precision": "fp32", "log_every": 1, "checkpoint_every": 2}
    return TrainConfig(**{**values, **overrides})


# ---------------------------------------------------------------------------
# Schedules and seeds
# ---------------------------------------------------------------------------


def test_lr_warmup_then_cosine():
    config = TrainConfig(lr=1e-3, warmup_steps=10)
    assert math.isclose(lr_at(0, config, 110), 1e-4)
    assert math.isclose(lr_at(9, config, 110), 1e-3)
    assert math.isclose(lr_at(10, config, 110), 1e-3)
    assert math.isclose(lr_at(60, config, 110), 0.5e-3)
    assert math.isclose(lr_at(109, config, 110), 1e-3 * 0.5 * (1 + math.cos(math.pi * 0.99)))


def test_lr_without_warmup():
    config = TrainConfig(lr=2e-3, warmup_steps=0)
    assert math.isclose(lr_at(0, config, 100), 2e-3)
    assert lr_at(99, config, 100) > 0


def test_ema_decay_ramp():
    assert math.isclose(ema_decay_at(0, 0.999), 0.1)
    assert math.isclose(ema_decay_at(90, 0.999), 0.91)
    assert ema_decay_at(100_000, 0.999) == 0.999


def test_derive_seed_depends_on_every_part():
    assert derive_seed(0, "batch", 1) == derive_seed(0, "batch", 1)
    assert derive_seed(0, "batch", 1) != derive_seed(0, "batch", 2)
    assert derive_seed(0, "batch", 1) != derive_seed(1, "batch", 1)
    assert derive_seed(-5, "x") >= 0


def test_batch_indices_walk_epoch_permutations():
    steps = [batch_indices(10, 3, seed=0, step=s) for s in range(3)]
    epoch = torch.cat(steps)
    assert len(set(epoch.tolist())) == 9
    assert torch.equal(batch_indices(10, 3, seed=0, step=1), steps[1])
    assert not torch.equal(batch_indices(10, 3, seed=1, step=1), steps[1])
    assert batch_indices(10, 3, seed=0, step=3).shape == (3,)


def test_batch_indices_with_replacement_for_tiny_split():
    index = batch_indices(2, 5, seed=0, step=0)
    assert index.shape == (5,)
    assert set(index.tolist()) <= {0, 1}


def test_global_batch_is_function_of_step():
    images, labels = class_patterns(16)
    model = build_model(AR, BACKBONE, DATA, seed=0)
    config = small_config(label_dropout=0.5)
    first = global_batch(model, images, labels, config, step=3)
    again = global_batch(model, images, labels, config, step=3)
    other = global_batch(model, images, labels, config, step=4)
    assert torch.equal(first[0], again[0])
    assert torch.equal(first[1], again[1])
    assert torch.equal(first[2]["known"], again[2]["known"])
    assert not torch.equal(first[2]["known"], other[2]["known"])
    assert (first[1] == model.no_label).any()


def test_run_key_tracks_relevant_params():
    images, labels = class_patterns(16)
    base = run_key(AR, BACKBONE, small_config(), 10, DATA, images, labels)
    assert base == run_key(AR, BACKBONE, small_config(log_every=7, checkpoint_every=9), 10, DATA, images, labels)
    assert base != run_key(AR, BACKBONE, small_config(lr=1e-3), 10, DATA, images, labels)
    assert base != run_key(AR, BACKBONE, small_config(), 11, DATA, images, labels)
    assert base != run_key(DIFFUSION, BACKBONE, small_config(), 10, DATA, images, labels)
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1
    assert base != run_key(AR, BACKBONE, small_config(), 10, DATA, changed, labels)


def test_batch_must_split_across_processes():
    with pytest.raises(ParamsError, match="nproc"):
        validate_params({"train": {"batch_size": 63, "nproc": 2}})


# ---------------------------------------------------------------------------
# Resume and divergence
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [AR, DIFFUSION], ids=["ar", "diffusion"])
def test_resume_matches_uninterrupted_run(tmp_path, variant):
    images, labels = class_patterns(24)
    config = small_config(label_dropout=0.2)
    steps = 6
    reference = train(build_model(variant, BACKBONE, DATA, seed=0), images, labels, config, steps)

    path = tmp_path / "run.pt"

    def interrupt(row):
        if row["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(build_model(variant, BACKBONE, DATA, seed=0), images, labels, config, steps,
              checkpoint=path, run_key="k", on_log=interrupt)
    assert load_state(path, "k")["step"] == 2

    resumed = train(build_model(variant, BACKBONE, DATA, seed=0), images, labels, config, steps,
                    checkpoint=path, run_key="k")
    assert resumed.resumed_from == 2
    for a, b in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(reference.ema.parameters(), resumed.ema.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [r["step"] for r in resumed.history] == list(range(1, 7))
    assert resumed.history[-1] == reference.history[-1]


def test_checkpoint_of_other_params_is_ignored(tmp_path):
    images, labels = class_patterns(16)
    path = tmp_path / "run.pt"
    train(build_model(AR, BACKBONE, DATA, seed=0), images, labels, small_config(), 2, checkpoint=path, run_key="old")
    assert load_state(path, "new") is None
    fresh = train(build_model(AR, BACKBONE, DATA, seed=0), images, labels, small_config(), 2,
                  checkpoint=path, run_key="new")
    assert fresh.resumed_from == 0


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path):
    images, labels = class_patterns(16)
    model = build_model(DIFFUSION, BACKBONE, DATA, seed=0)
    calls = {"n": 0}

    def poison_fourth_batch(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 4 else output

    model.backbone.register_forward_hook(poison_fourth_batch)
    path = tmp_path / "ckpt" / "run.pt"
    with pytest.raises(TrainingDiverged, match=r"step 4") as error:
        train(model, images, labels, small_config(), 8, checkpoint=path, run_key="k")
    assert str(path) in str(error.value)
    assert "(step 2) is kept" in str(error.value)
    state = load_state(path, "k")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_before_first_checkpoint_says_none(tmp_path):
    images, labels = class_patterns(16)
    model = build_model(AR, BACKBONE, DATA, seed=0)
    model.backbone.register_forward_hook(lambda module, inputs, output: output * float("inf"))
    with pytest.raises(TrainingDiverged, match="none was written yet"):
        train(model, images, labels, small_config(), 4, checkpoint=tmp_path / "run.pt", run_key="k")


def test_bf16_loss_close_to_fp32():
    images, labels = class_patterns(32)
    losses = {}
    for precision in ("fp32", "bf16"):
        config = small_config(precision=precision, lr=5e-3, batch_size=16, log_every=5)
        result = train(build_model(DIFFUSION, BACKBONE, DATA, seed=0), images, labels, config, 30)
        losses[precision] = evaluate(result.model, images, labels, seed=1, precision="fp32")["val_loss"]
    assert losses["bf16"] != losses["fp32"]  # autocast took effect
    assert abs(losses["bf16"] - losses["fp32"]) < 0.15 * losses["fp32"]


# ---------------------------------------------------------------------------
# The train stage
# ---------------------------------------------------------------------------


def stage_repo(root: Path, params: dict) -> Path:
    """Lay out a repository with params.yaml and prepared 8x8 data, enough for stages/train.py."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    for split, count in (("train", 32), ("val", 8), ("test", 8)):
        images, labels = class_patterns(count, levels=4)
        save_split(prepared / f"{split}.npz", images.numpy(), labels.numpy())
    meta = {"source": "digits", "image_size": 8, "channels": 1, "levels": 4, "num_classes": 2, "class_names": ["a", "b"]}
    (prepared / "meta.json").write_text(json.dumps(meta))
    return root


STAGE_PARAMS = {
    "data": {"source": "digits", "image_size": 8, "levels": 4},
    "backbone": {"width": 8, "channel_mult": [1, 2], "num_res_blocks": 1},
    "train": {"batch_size": 8, "steps": 4, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 2, "precision": "fp32"},
    "variants": {
        "ar": {"paradigm": "ar", "group_sizes": [1, 4], "patch_sizes": [2, 4]},
        "regression": {"paradigm": "regression", "steps": 2},
    },
    "runtime": {"device": "cpu"},
    "tracking": {"experiment": "unit"},
}


def run_stage(root: Path, variant: str, tracking_uri: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "train.py"), variant],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


def test_stage_writes_outputs_and_registers_model(tmp_path, monkeypatch):
    import mlflow
    import mlflow.pytorch
    from mlflow.tracking import _tracking_service

    root = stage_repo(tmp_path / "repo", STAGE_PARAMS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_stage(root, "ar", uri)
    assert result.returncode == 0, result.stderr

    out = root / "models" / "ar"
    model, checkpoint = load_model(out / "model.pt")
    assert checkpoint["paradigm"] == "ar"
    assert checkpoint["step"] == 4
    assert checkpoint["data"]["levels"] == 4
    tsv = (out / "loss.tsv").read_text().splitlines()
    assert tsv[0] == "step\tloss\tlr"
    assert [line.split("\t")[0] for line in tsv[1:]] == ["2", "4"]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("param_count", "train_loss", "val_loss", "val_nll_bpd", "images_per_second", "validation"):
        assert key in metrics
    assert [row["step"] for row in metrics["validation"]] == [2, 4]
    assert not list((root / "checkpoints" / "ar").glob("*.pt"))

    monkeypatch.setattr(_tracking_service.utils, "_tracking_uri", None)
    mlflow.set_tracking_uri(uri)
    logged = mlflow.pytorch.load_model("models:/genladder-ar/1")
    x = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    known = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    logits = logged(x, known, torch.tensor([0, 2]))
    assert logits.shape == (2, 1, 4, 8, 8)
    torch.testing.assert_close(logits, model(x, known, torch.tensor([0, 2])))


def test_stage_unknown_variant_exits_2(tmp_path):
    root = stage_repo(tmp_path / "repo", STAGE_PARAMS)
    result = run_stage(root, "nope", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.returncode == 2
    assert "unknown variant 'nope'" in result.stderr
    assert "['ar', 'regression']" in result.stderr
    assert not (root / "models").exists()


def test_stage_resumes_after_checkpoint(tmp_path):
    params = {**STAGE_PARAMS, "tracking": {"experiment": "unit", "enabled": False}}
    root = stage_repo(tmp_path / "repo", params)
    from genladder.config import validate_params as validate
    from genladder.data import load_split

    parsed = validate(params)
    images, labels, meta = load_split("train", root)
    key = run_key(parsed.variants["regression"], parsed.backbone, parsed.train, 2, meta, images, labels)
    path = checkpoint_path(root, "regression", key)
    # A checkpoint at the last step is what a run interrupted right after training leaves behind.
    model = build_model(parsed.variants["regression"], parsed.backbone, meta, seed=parsed.train.seed)
    train(model, images, labels, parsed.train, 2, checkpoint=path, run_key=key)
    assert path.is_file()

    result = run_stage(root, "regression", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.returncode == 0, result.stderr
    assert "resuming train@regression" in result.stderr
    _, checkpoint = load_model(root / "models" / "regression" / "model.pt", weights="model")
    for name, value in model.state_dict().items():
        assert torch.equal(checkpoint["model"][name], value)
    assert not path.exists()
