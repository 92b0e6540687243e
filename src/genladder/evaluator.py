"""The evaluator: a small CNN classifier trained on the prepared data, used only for metrics.

Its penultimate layer (global average pool of the last conv block, 4 * width features) is the
feature space of every distribution metric (Fréchet distance, KID, precision and recall,
diversity). Its class predictions give the class consistency of generated samples.

Input is uint8 levels (B, C, H, W), mapped to [-1, 1] by :func:`genladder.data.to_unit`, the
same space the generative models see. The network ends in adaptive pooling, so any image size
from 8x8 upwards works with the same code.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from genladder.config import EvaluatorConfig
from genladder.data import to_unit
from genladder.runtime import DataError, atomic_path

log = logging.getLogger(__name__)

REGISTERED_NAME = "genladder-evaluator"


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Evaluator(nn.Module):
    """Conv classifier: four conv blocks, two 2x2 max-pools, global average pool, linear head.

    Args:
        channels: image channels C.
        num_classes: number of classes.
        levels: intensity levels L of the uint8 input.
        width: channels of the first stage; the stages have width, 2*width and 4*width.
        dropout: dropout before the linear head (training only).
    """

    def __init__(self, channels: int, num_classes: int, levels: int, width: int = 32, dropout: float = 0.3):
        super().__init__()
        self.channels = channels
        self.num_classes = num_classes
        self.levels = levels
        self.num_features = 4 * width
        self.body = nn.Sequential(
            _conv_block(channels, width),
            _conv_block(width, width),
            nn.MaxPool2d(2),
            _conv_block(width, 2 * width),
            nn.MaxPool2d(2),
            _conv_block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, num_classes)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Map uint8 levels (B, C, H, W) to the float input in [-1, 1] on this module's device."""
        device = self.head.weight.device
        return to_unit(images.to(device), self.levels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the penultimate features (B, 4 * width) of float input x in [-1, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits (B, num_classes) of float input x in [-1, 1]."""
        return self.head(self.dropout(self.body(x)))


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def predict(
    model: Evaluator, images: torch.Tensor, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (features (N, F) float32, logits (N, num_classes) float32) on the CPU for uint8 images."""
    was_training = model.training
    model.eval()
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        x = model.encode(images[start : start + batch_size])
        f = model.features(x)
        feats.append(f.float().cpu())
        logits.append(model.head(f).float().cpu())
    model.train(was_training)
    num_features = model.num_features
    if not feats:
        return torch.zeros(0, num_features), torch.zeros(0, model.num_classes)
    return torch.cat(feats), torch.cat(logits)


def accuracy(model: Evaluator, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    _, logits = predict(model, images, batch_size)
    return float((logits.argmax(1) == labels.cpu()).float().mean())


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of x (B, C, H, W) by up to `shift` pixels per axis, repeating edge pixels."""
    if shift == 0:
        return x
    batch, _, height, width = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (batch, 2), generator=generator)
    out = torch.empty_like(x)
    # One slice per distinct offset, (2 * shift + 1)^2 at most, instead of one per image.
    for dy in range(2 * shift + 1):
        for dx in range(2 * shift + 1):
            chosen = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
            out[chosen] = padded[chosen, :, dy : dy + height, dx : dx + width]
    return out


@dataclass
class TrainResult:
    """The selected model and what training measured."""

    model: Evaluator
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def train_evaluator(
    cfg: EvaluatorConfig,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    meta: dict[str, Any],
    device: torch.device,
    on_epoch=None,
) -> TrainResult:
    """Train the classifier; keep the epoch with the best validation accuracy, then measure test accuracy.

    Args:
        cfg: evaluator settings (width, epochs, batch size, learning rate, shift, seed).
        train, val, test: (images uint8 (N, C, H, W), labels int64 (N,)) per split.
        meta: prepared-data meta (channels, levels, num_classes).
        device: where to train.
        on_epoch: optional callback(epoch, row) after each epoch, for tracking.
    """
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    images, labels = train
    if len(images) == 0:
        raise DataError("the prepared train split is empty; rerun `dvc repro prepare` with more data")

    model = Evaluator(meta["channels"], meta["num_classes"], meta["levels"], width=cfg.width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    # One-cycle: linear warm-up over the first 10% of steps, then cosine decay to zero.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.1, anneal_strategy="cos"
    )

    best_accuracy, best_epoch, best_state = -1.0, 0, None
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    progress = tqdm(range(1, cfg.epochs + 1), desc="evaluator", unit="epoch")
    for epoch in progress:
        model.train()
        order = torch.randperm(len(images), generator=generator)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(images), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x = random_shift(to_unit(images[idx], meta["levels"]), cfg.shift, generator).to(device)
            y = labels[idx].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"evaluator training loss is {loss_sum} at epoch {epoch}; lower evaluator.lr")

        val_accuracy = accuracy(model, *val) if len(val[0]) else correct / len(images)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / len(images),
            "train_accuracy": correct / len(images),
            "val_accuracy": val_accuracy,
        }
        history.append(row)
        progress.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{val_accuracy:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, row)
        if val_accuracy > best_accuracy:
            best_accuracy, best_epoch = val_accuracy, epoch
            best_state = copy.deepcopy(model.state_dict())

    model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(model, *test) if len(test[0]) else float("nan")
    metrics = {
        "test_accuracy": test_accuracy,
        "val_accuracy": best_accuracy,
        "best_epoch": best_epoch,
        "param_count": param_count(model),
        "train_seconds": round(seconds, 2),
    }
    log.info(
        "evaluator: test accuracy %.4f, val accuracy %.4f at epoch %d, %.1f s",
        test_accuracy, best_accuracy, best_epoch, seconds,
    )
    return TrainResult(model=model, metrics=metrics, history=history)


# ---------------------------------------------------------------------------
# Checkpoint
# ---------------------------------------------------------------------------


def save_evaluator(path: str | Path, result: TrainResult, cfg: EvaluatorConfig, meta: dict[str, Any]) -> None:
    """Write the checkpoint atomically: weights, settings, data meta and metrics."""
    checkpoint = {
        "kind": "evaluator",
        "config": cfg.model_dump(mode="json"),
        "data": meta,
        "num_features": result.model.num_features,
        "param_count": param_count(result.model),
        "metrics": result.metrics,
        "model": {k: v.cpu() for k, v in result.model.state_dict().items()},
    }
    # A file object, not the random temporary path, so that the zip's folder name is fixed.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoint, f)


def load_evaluator(path: str | Path, device: torch.device | str = "cpu") -> tuple[Evaluator, dict[str, Any]]:
    """Load the evaluator in eval mode; raises DataError naming the file and the stage that writes it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"evaluator checkpoint not found: {path}; run `dvc repro train_evaluator` first")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        meta, cfg = checkpoint["data"], checkpoint["config"]
        model = Evaluator(meta["channels"], meta["num_classes"], meta["levels"], width=cfg["width"])
        model.load_state_dict(checkpoint["model"])
    except (OSError, KeyError, RuntimeError, TypeError) as exc:
        raise DataError(f"cannot read evaluator checkpoint {path} ({exc}); rerun `dvc repro -f train_evaluator`") from None
    return model.to(device).eval(), checkpoint
