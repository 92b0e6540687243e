"""Resumable training state under checkpoints/VARIANT/, keyed by the params the run depends on.

The file name is the first 16 hex digits of a SHA-256 over the variant, backbone and
train params, the step count, the data description and the bytes of the training split.
Changing any of them starts a fresh run, and a rerun with the same inputs resumes.
``train.log_every``, ``train.checkpoint_every`` and ``train.nproc`` are left out of the
key, because they change neither the data nor the update of any step.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from genladder.config import BackboneConfig, TrainConfig, VariantConfig
from genladder.runtime import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
KEY_EXCLUDED_TRAIN_FIELDS = ("log_every", "checkpoint_every", "nproc")


def run_key(
    variant: VariantConfig,
    backbone: BackboneConfig,
    train: TrainConfig,
    steps: int,
    data: Mapping[str, Any],
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
) -> str:
    """Return the SHA-256 hex digest that names a training run's checkpoint."""
    description = {
        "format": FORMAT_VERSION,
        "variant": variant.model_dump(mode="json"),
        "backbone": backbone.model_dump(mode="json"),
        "train": train.model_dump(mode="json", exclude=set(KEY_EXCLUDED_TRAIN_FIELDS)),
        "steps": int(steps),
        "data": dict(data),
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode())
    for tensor in (train_images, train_labels):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def checkpoint_path(root: Path, variant_name: str, key: str) -> Path:
    return Path(root) / CHECKPOINT_DIR / variant_name / f"{key[:16]}.pt"


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write the training state atomically, so an interrupted write leaves the previous file intact."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def load_state(path: Path, key: str) -> dict[str, Any] | None:
    """Return the training state saved at `path` for run `key`, or None when there is none to resume."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        log.warning("cannot read checkpoint %s (%s); starting from step 0", path, exc)
        return None
    if state.get("format") != FORMAT_VERSION or state.get("key") != key:
        log.warning("checkpoint %s belongs to other params; starting from step 0", path)
        return None
    return state
