"""The three paradigms: forward shapes, losses at initialization, training lowers the loss, model files."""

from __future__ import annotations

import math

import pytest
import torch

from genladder.config import BackboneConfig, Paradigm, TrainConfig, VariantConfig
from genladder.data import to_unit
from genladder.models import build_model, count_parameters, load_model, model_checkpoint, save_model
from genladder.runtime import DataError
from genladder.trainer import evaluate, train

BACKBONE = BackboneConfig(width=8, channel_mult=[1, 2], num_res_blocks=1)
SHAPES = [(8, 1), (16, 1), (28, 1), (32, 3)]
VARIANTS = {
    "regression": VariantConfig(paradigm="regression"),
    "ar": VariantConfig(paradigm="ar", group_sizes=[1, 4], patch_sizes=[2, 4]),
    "diffusion": VariantConfig(paradigm="diffusion", timesteps=50, schedule="cosine", prediction="eps"),
    "diffusion_v": VariantConfig(paradigm="diffusion", timesteps=50, schedule="linear", prediction="v"),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one thread: tiny models gain nothing from more, and lose a lot when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def meta(size=8, channels=1, levels=16, num_classes=10) -> dict:
    return {"channels": channels, "image_size": size, "levels": levels, "num_classes": num_classes}


def class_patterns(count: int, size: int = 8, levels: int = 16, num_classes: int = 2, seed: int = 0):
    """Return uint8 images (count, 1, size, size), one fixed random pattern per class, and labels."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randint(levels, (num_classes, 1, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.arange(count) % num_classes
    return patterns[labels].clone(), labels


def run_forward(model, paradigm: Paradigm, size: int, channels: int) -> torch.Tensor:
    batch = 2
    labels = torch.tensor([0, model.no_label])
    if paradigm is Paradigm.regression:
        return model(labels)
    if paradigm is Paradigm.ar:
        x = torch.randint(model.levels, (batch, channels, size, size), dtype=torch.uint8)
        known = torch.rand(batch, 1, size, size) < 0.5
        return model(x, known, labels)
    x_t = torch.randn(batch, channels, size, size)
    return model(x_t, torch.tensor([0, model.timesteps - 1]), labels)


@pytest.mark.parametrize("size,channels", SHAPES)
@pytest.mark.parametrize("name", ["regression", "ar", "diffusion"])
def test_forward_shape(name, size, channels):
    variant = VARIANTS[name]
    model = build_model(variant, BACKBONE, meta(size, channels), seed=0)
    out = run_forward(model, variant.paradigm, size, channels)
    if variant.paradigm is Paradigm.ar:
        assert out.shape == (2, channels, 16, size, size)
    else:
        assert out.shape == (2, channels, size, size)


def test_same_backbone_in_every_paradigm():
    models = {name: build_model(VARIANTS[name], BACKBONE, meta(), seed=0) for name in ("regression", "ar", "diffusion")}
    inner = {name: sum(p.numel() for n, p in m.named_parameters() if not n.startswith("backbone.conv_")) for name, m in models.items()}
    assert len(set(inner.values())) == 1
    assert models["ar"].backbone.conv_in.in_channels == 2
    assert models["ar"].backbone.conv_out.out_channels == 16
    assert models["diffusion"].backbone.conv_in.in_channels == 1


def test_seed_fixes_initial_weights():
    first = build_model(VARIANTS["ar"], BACKBONE, meta(), seed=3)
    second = build_model(VARIANTS["ar"], BACKBONE, meta(), seed=3)
    other = build_model(VARIANTS["ar"], BACKBONE, meta(), seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))


@pytest.mark.parametrize("levels", [2, 16, 256])
def test_ar_loss_at_init_is_log2_levels(levels):
    # The zero-initialized output layer gives uniform logits: log2(L) bits per dimension.
    model = build_model(VARIANTS["ar"], BACKBONE, meta(levels=levels), seed=0)
    images, labels = class_patterns(6, levels=levels)
    draws = model.draw(6, torch.Generator().manual_seed(0))
    loss = model.training_loss(images, labels, draws)
    torch.testing.assert_close(loss, torch.full((6,), math.log2(levels)))


def test_regression_loss_at_init_closed_form():
    model = build_model(VARIANTS["regression"], BACKBONE, meta(), seed=0)
    images, labels = class_patterns(4)
    loss = model.training_loss(images, labels, {})
    torch.testing.assert_close(loss, to_unit(images, 16).square().mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("name", ["diffusion", "diffusion_v"])
def test_diffusion_loss_at_init_closed_form(name):
    model = build_model(VARIANTS[name], BACKBONE, meta(), seed=0)
    images, labels = class_patterns(4)
    draws = model.draw(4, torch.Generator().manual_seed(0))
    x0 = to_unit(images, 16)
    abar = model.alphas_cumprod[draws["t"]].float()[:, None, None, None]
    if model.prediction == "eps":
        target = draws["noise"]
    else:
        target = abar.sqrt() * draws["noise"] - (1 - abar).sqrt() * x0
    torch.testing.assert_close(model.training_loss(images, labels, draws), target.square().mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("name", ["regression", "ar", "diffusion", "diffusion_v"])
def test_training_lowers_loss(name):
    images, labels = class_patterns(32)
    model = build_model(VARIANTS[name], BACKBONE, meta(), seed=0)
    config = TrainConfig(
        batch_size=16, steps=25, lr=5e-3, warmup_steps=2, precision="fp32", log_every=5, checkpoint_every=100
    )
    before = evaluate(model, images, labels, seed=1, precision=config.precision)["val_loss"]
    result = train(model, images, labels, config, steps=25)
    after = evaluate(result.model, images, labels, seed=1, precision=config.precision)["val_loss"]
    assert after < 0.8 * before
    assert result.history[-1]["step"] == 25


def test_model_file_round_trip(tmp_path):
    variant = VARIANTS["ar"]
    model = build_model(variant, BACKBONE, meta(), seed=0)
    ema = build_model(variant, BACKBONE, meta(), seed=1)
    train_config = TrainConfig()
    path = tmp_path / "ar" / "model.pt"
    save_model(path, model_checkpoint("ar", model, ema, variant, BACKBONE, train_config, meta(), step=7))

    loaded, checkpoint = load_model(path, "cpu")
    assert checkpoint["variant"] == "ar"
    assert checkpoint["paradigm"] == "ar"
    assert checkpoint["param_count"] == count_parameters(model)
    assert checkpoint["step"] == 7
    assert set(checkpoint["config"]) == {"variant", "backbone", "train"}
    assert not loaded.training
    for loaded_param, ema_param in zip(loaded.parameters(), ema.parameters(), strict=True):
        assert torch.equal(loaded_param, ema_param)
    raw, _ = load_model(path, "cpu", weights="model")
    for raw_param, param in zip(raw.parameters(), model.parameters(), strict=True):
        assert torch.equal(raw_param, param)


def test_load_model_missing_file_names_stage(tmp_path):
    with pytest.raises(DataError, match=r"train@diffusion"):
        load_model(tmp_path / "diffusion" / "model.pt")


def test_build_model_rejects_incomplete_meta():
    with pytest.raises(DataError, match="levels"):
        build_model(VARIANTS["regression"], BACKBONE, {"channels": 1, "image_size": 8, "num_classes": 10})
