"""The training loop shared by every variant.

AdamW, a linear learning-rate warm-up then cosine decay to zero, gradient clipping by
global norm, an exponential moving average (EMA) of the weights, and optional bf16
autocast on CPU and CUDA. Validation runs on the EMA weights every ``checkpoint_every``
steps and after the last step.

Reproducibility: every random draw of step s comes from generators seeded by
(train.seed, s), namely the batch indices (a permutation per epoch), label dropout, the
paradigm's draws (noise, times, masks) and backbone dropout. The learning rate is a
function of s too. A run resumed from a checkpoint, which stores the weights, the EMA,
the optimizer state and s, therefore ends with the same weights as an uninterrupted run
on the same device and thread count.

Data parallelism: with an initialized process group every rank draws the same global
batch and trains on its slice (see :mod:`genladder.distributed`). DDP averages the
gradients, so N ranks compute what one process computes on the whole batch, up to
floating-point summation order.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from genladder.checkpoint import FORMAT_VERSION, load_state, save_state
from genladder.config import Precision, TrainConfig
from genladder.distributed import DistributedContext, all_reduce_mean, broadcast_from_main, current_context, shard
from genladder.paradigms import Draws, ParadigmModel

log = logging.getLogger(__name__)

VALIDATION_BATCH = 500


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclass
class TrainResult:
    """Weights and records of a finished run; ``history`` rows are {"step", "loss", "lr"}."""

    model: ParadigmModel
    ema: ParadigmModel
    steps: int
    batch_size: int
    history: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    resumed_from: int = 0

    @property
    def images_per_second(self) -> float:
        """Training throughput over all steps, including those before a resume."""
        return self.steps * self.batch_size / self.train_seconds if self.train_seconds > 0 else float("nan")

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")


# ---------------------------------------------------------------------------
# Schedules and seeds
# ---------------------------------------------------------------------------


def lr_at(step: int, config: TrainConfig, steps: int) -> float:
    """Return the learning rate of 0-based `step`: linear warm-up to train.lr, then cosine decay to 0."""
    warmup = config.warmup_steps
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def ema_decay_at(updates: int, decay: float) -> float:
    """Return the EMA decay after `updates` updates: min(decay, (1 + n) / (10 + n)).

    The ramp keeps the average from holding on to the random initial weights in short
    runs, because 0.999 ** 1000 is still 37%.
    """
    return min(decay, (1.0 + updates) / (10.0 + updates))


def derive_seed(seed: int, *parts: Any) -> int:
    """Return a 63-bit seed that depends only on `seed` and `parts`, e.g. ("batch", step)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def seeded_generator(seed: int, *parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Return the example indices of 0-based `step`: consecutive slices of one permutation per epoch.

    The last incomplete slice of an epoch is dropped. A split smaller than a batch is
    sampled with replacement instead.
    """
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        return torch.randint(num_examples, (batch_size,), generator=seeded_generator(seed, "batch", step))
    epoch, position = divmod(step, per_epoch)
    permutation = torch.randperm(num_examples, generator=seeded_generator(seed, "epoch", epoch))
    return permutation[position * batch_size : (position + 1) * batch_size]


# ---------------------------------------------------------------------------
# Pieces of a step
# ---------------------------------------------------------------------------


class Objective(nn.Module):
    """Paradigm wrapper whose forward pass returns the per-example training loss, so DDP can wrap it."""

    def __init__(self, model: ParadigmModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor, draws: Draws) -> torch.Tensor:
        return self.model.training_loss(images, labels, draws)


def global_batch(
    model: ParadigmModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor, Draws]:
    """Assemble step `step`'s global batch on the CPU: images, labels after dropout, and the paradigm's draws."""
    index = batch_indices(images.shape[0], config.batch_size, config.seed, step)
    generator = seeded_generator(config.seed, "draws", step)
    batch_labels = labels[index].clone()
    drop = torch.rand(config.batch_size, generator=generator) < config.label_dropout
    batch_labels[drop] = model.no_label
    draws = model.draw(config.batch_size, generator)
    return images[index], batch_labels, draws


def local_batch(
    batch: tuple[torch.Tensor, torch.Tensor, Draws], context: DistributedContext, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, Draws]:
    """Slice a global batch for this rank and move it to `device`."""
    images, labels, draws = batch
    images = shard(images, context).to(device, non_blocking=True)
    labels = shard(labels, context).to(device, non_blocking=True)
    draws = {k: shard(v, context).to(device, non_blocking=True) for k, v in draws.items()}
    return images, labels, draws


def autocast(device: torch.device, precision: Precision | str):
    enabled = Precision(precision) is Precision.bf16
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param.detach(), 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


@torch.no_grad()
def evaluate(
    model: ParadigmModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    precision: Precision,
    batch_size: int = VALIDATION_BATCH,
) -> dict[str, float]:
    """Return the model's mean validation figures on a split, with draws that are the same on every call."""
    device = model.device
    generator = seeded_generator(seed, "validation")
    totals: dict[str, float] = {}
    was_training = model.training
    model.eval()
    for start in range(0, images.shape[0], batch_size):
        batch_images = images[start : start + batch_size].to(device)
        batch_labels = labels[start : start + batch_size].to(device)
        with autocast(device, precision):
            figures = model.validation_losses(batch_images, batch_labels, generator)
        for name, values in figures.items():
            totals[name] = totals.get(name, 0.0) + float(values.double().sum())
    model.train(was_training)
    return {name: total / images.shape[0] for name, total in totals.items()}


# ---------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------


def train(
    model: ParadigmModel,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    config: TrainConfig,
    steps: int,
    val_images: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    checkpoint: Path | None = None,
    run_key: str = "",
    on_log: Callable[[dict[str, float]], None] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> TrainResult:
    """Train `model` (already on its device) for `steps` steps, resuming from `checkpoint` when it matches `run_key`.

    Images are uint8 levels (N, C, H, W) and labels int64 (N,), on the CPU. Every
    ``config.checkpoint_every`` steps and after the last one, the EMA weights are
    validated and, on rank 0, the state is saved to `checkpoint`. `on_log` receives each
    row of the loss history on rank 0. `progress` shows a tqdm bar on rank 0.

    Raises:
        TrainingDiverged: the loss or gradient norm is not finite. The failing step's
            update is not applied, and the last good checkpoint stays in place.
    """
    context = current_context()
    device = model.device
    if config.batch_size % context.world_size:
        raise ValueError(
            f"train.batch_size {config.batch_size} is not divisible by the {context.world_size} ranks; "
            "use a multiple of train.nproc"
        )

    # 1. Optimizer, EMA copy, and the wrapper DDP synchronizes.
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr_at(0, config, steps), weight_decay=config.weight_decay)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    objective: nn.Module = Objective(model)
    if context.enabled:
        # Imported here because it loads all of torch.distributed, which takes seconds.
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        objective = DistributedDataParallel(objective, device_ids=device_ids)
    result = TrainResult(model=model, ema=ema, steps=0, batch_size=config.batch_size)

    # 2. Resume. Only rank 0 writes checkpoints, so the other ranks take its copy, which
    # matters when they run on other machines.
    last_good = None
    state = load_state(checkpoint, run_key) if checkpoint is not None and context.is_main else None
    state = broadcast_from_main(state, context)
    if state is not None:
        _restore(state, result, optimizer)
        last_good = (checkpoint, result.steps)
        if context.is_main:
            log.info("resuming %s from %s at step %d of %d", desc, checkpoint, result.steps, steps)

    # 3. Steps.
    window_loss, window_steps = 0.0, 0
    bar = tqdm(total=steps, initial=result.steps, desc=desc, disable=not (progress and context.is_main), mininterval=1.0)
    for step in range(result.steps, steps):
        started = time.perf_counter()
        lr = lr_at(step, config, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(derive_seed(config.seed, "dropout", step, context.rank))
        images, labels, draws = local_batch(global_batch(model, train_images, train_labels, config, step), context, device)

        with autocast(device, config.precision):
            loss = objective(images, labels, draws).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)

        # The weights change only after this check, so a bad step leaves them as they were.
        figures = all_reduce_mean(torch.stack([loss.detach().float(), grad_norm.float()]), context).tolist()
        if not all(math.isfinite(x) for x in figures):
            bar.close()
            where = f"{last_good[0]} (step {last_good[1]}) is kept" if last_good else "none was written yet"
            raise TrainingDiverged(
                f"{desc}: loss {figures[0]} and gradient norm {figures[1]} at step {step + 1}; "
                f"last good checkpoint: {where}. Lower train.lr or check the data, then rerun."
            )
        optimizer.step()
        update_ema(ema, model, ema_decay_at(step, config.ema_decay))
        result.steps = step + 1
        result.train_seconds += time.perf_counter() - started
        window_loss += figures[0]
        window_steps += 1
        bar.update(1)

        # 4. Log, validate, checkpoint.
        done = result.steps == steps
        if result.steps % config.log_every == 0 or done:
            row = {"step": result.steps, "loss": window_loss / window_steps, "lr": lr}
            result.history.append(row)
            window_loss, window_steps = 0.0, 0
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{result.images_per_second:.0f}")
            if context.is_main and on_log is not None:
                on_log(row)
        if result.steps % config.checkpoint_every == 0 or done:
            if context.is_main and val_images is not None and val_labels is not None:
                figures_val = evaluate(ema, val_images, val_labels, config.seed, config.precision)
                result.validation.append({"step": result.steps, **figures_val})
                log.info("%s step %d: %s", desc, result.steps, _format(figures_val))
            if checkpoint is not None:
                if context.is_main:
                    save_state(checkpoint, _state(result, optimizer, run_key))
                last_good = (checkpoint, result.steps)
    bar.close()
    return result


def _restore(state: dict[str, Any], result: TrainResult, optimizer: torch.optim.Optimizer) -> None:
    result.model.load_state_dict(state["model"])
    result.ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    result.steps = result.resumed_from = int(state["step"])
    result.history = list(state["history"])
    result.validation = list(state["validation"])
    result.train_seconds = float(state["train_seconds"])


def _state(result: TrainResult, optimizer: torch.optim.Optimizer, run_key: str) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "key": run_key,
        "step": result.steps,
        "model": result.model.state_dict(),
        "ema": result.ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": result.history,
        "validation": result.validation,
        "train_seconds": result.train_seconds,
    }


def _format(figures: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in figures.items())
