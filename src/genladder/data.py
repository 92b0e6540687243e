"""Prepared data: quantization, the stratified split, and the files every later stage reads.

Layout under data/prepared (written by the prepare stage):

- ``{train,val,test}.npz``: ``images`` uint8 (N, C, H, W) with levels 0..L-1, ``labels`` int64 (N,)
- ``meta.json``: source, image_size, channels, levels, num_classes, class_names
- ``stats.json``: counts per class and split, histogram of levels
- ``preview.png``: a grid of training images, one row per class
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from genladder.runtime import DataError, atomic_path, repo_root

SPLITS = ("train", "val", "test")


def prepared_dir(root: Path | None = None) -> Path:
    return (root or repo_root()) / "data" / "prepared"


# ---------------------------------------------------------------------------
# Levels: uint8 0..L-1 <-> float [-1, 1]
# ---------------------------------------------------------------------------


def quantize(images: np.ndarray, levels: int) -> np.ndarray:
    """Map float images in [0, 1] to uint8 levels 0..levels-1, rounding to the nearest level."""
    scaled = np.clip(images, 0.0, 1.0) * (levels - 1)
    return np.rint(scaled).astype(np.uint8)


def to_unit(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Map integer levels 0..L-1 to floats in [-1, 1] (level 0 -> -1, level L-1 -> 1)."""
    return images.float() * (2.0 / (levels - 1)) - 1.0


def from_unit(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Map floats in [-1, 1] to the nearest of the L levels, as uint8; values outside are clamped."""
    scaled = (x.float().clamp(-1.0, 1.0) + 1.0) * ((levels - 1) / 2.0)
    return scaled.round().to(torch.uint8)


# ---------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Return index arrays per split, drawing the same fractions from every class.

    Deterministic for a given seed; each class contributes round(fraction * count)
    images to val and test (at least one each when the class has three or more).
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(val_fraction * len(idx)))
        n_test = int(round(test_fraction * len(idx)))
        if len(idx) >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    return {s: np.sort(np.concatenate(parts[s])) for s in SPLITS}


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def save_split(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one split atomically as an uncompressed .npz that np.load reads.

    np.savez stamps each member with the current time; fixed timestamps here make the
    bytes a function of the arrays alone, so an unchanged rerun (on the host or in a
    container) leaves DVC hashes unchanged.
    """
    arrays = {"images": images.astype(np.uint8), "labels": labels.astype(np.int64)}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                # writestr with the size known up front: ZipFile.open(..., force_zip64=True)
                # writes different headers in Python 3.11.2 and 3.11.7, writestr does not.
                member = io.BytesIO()
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
                archive.writestr(info, member.getvalue())


def load_meta(root: Path | None = None) -> dict:
    path = prepared_dir(root) / "meta.json"
    if not path.is_file():
        raise DataError(f"prepared data not found: {path}; run `dvc repro prepare` first")
    return json.loads(path.read_text())


def load_split(split: str, root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Load a prepared split as (images uint8 (N,C,H,W), labels int64 (N,), meta dict)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    meta = load_meta(root)
    path = prepared_dir(root) / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"prepared split not found: {path}; run `dvc repro prepare` first")
    try:
        with np.load(path) as arrays:
            images, labels = arrays["images"], arrays["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc}); rerun `dvc repro -f prepare`") from None
    return torch.from_numpy(images), torch.from_numpy(labels), meta
