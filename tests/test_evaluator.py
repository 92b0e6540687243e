"""The evaluator classifier: shapes, training on real digits, checkpoints and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from genladder.config import EvaluatorConfig
from genladder.evaluator import Evaluator, load_evaluator, predict, random_shift, save_evaluator, train_evaluator
from genladder.runtime import DataError

META = {"source": "digits", "image_size": 8, "channels": 1, "levels": 17, "num_classes": 10, "class_names": list("0123456789")}


def digits_splits():
    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(data.target).long()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, val, test = order[:1200], order[1200:1450], order[1450:]
    return [(images[i], labels[i]) for i in (train, val, test)]


@pytest.fixture(scope="module")
def trained():
    train, val, test = digits_splits()
    cfg = EvaluatorConfig(width=8, epochs=3, batch_size=64, lr=5e-3, seed=0)
    return train_evaluator(cfg, train, val, test, META, torch.device("cpu")), cfg, test


@pytest.mark.parametrize("side, channels", [(8, 1), (16, 1), (28, 1), (32, 3)])
def test_evaluator_shapes(side, channels):
    model = Evaluator(channels=channels, num_classes=10, levels=16, width=8).eval()
    images = torch.randint(0, 16, (5, channels, side, side), dtype=torch.uint8)
    features, logits = predict(model, images, batch_size=2)
    assert features.shape == (5, 32)
    assert logits.shape == (5, 10)
    assert model.num_features == 32


def test_training_beats_chance_on_digits(trained):
    result, _, _ = trained
    # Ten classes: chance is 0.1. Three epochs of a width-8 network reached 0.82 on a 2-core CPU.
    assert result.metrics["test_accuracy"] > 0.7
    assert result.metrics["val_accuracy"] > 0.7
    assert len(result.history) == 3
    assert 1 <= result.metrics["best_epoch"] <= 3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_training_is_seeded():
    train, val, test = digits_splits()
    cfg = EvaluatorConfig(width=4, epochs=1, batch_size=128, seed=3)
    small = [(x[:300], y[:300]) for x, y in (train, val, test)]
    first = train_evaluator(cfg, *small, META, torch.device("cpu"))
    second = train_evaluator(cfg, *small, META, torch.device("cpu"))
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_round_trip(trained, tmp_path):
    result, cfg, test = trained
    path = tmp_path / "evaluator" / "model.pt"
    save_evaluator(path, result, cfg, META)
    model, checkpoint = load_evaluator(path)
    assert checkpoint["num_features"] == result.model.num_features
    assert checkpoint["metrics"]["test_accuracy"] == result.metrics["test_accuracy"]
    assert not model.training
    _, expected = predict(result.model, test[0][:50])
    _, loaded = predict(model, test[0][:50])
    assert torch.allclose(expected, loaded)


def test_missing_checkpoint_names_the_stage(tmp_path):
    with pytest.raises(DataError, match="dvc repro train_evaluator"):
        load_evaluator(tmp_path / "missing.pt")


def test_random_shift_translates_whole_images():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)
    shifted = random_shift(x, 1, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    for i in range(2):
        windows = [padded[i, :, dy : dy + 5, dx : dx + 5] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(shifted[i], w) for w in windows)
