"""The prepare stage's work: load a source, resize, quantize, cap, split, and write data/prepared."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genladder.config import DataConfig
from genladder.data import SPLITS, prepared_dir, quantize, save_split, stratified_split
from genladder.runtime import atomic_path, write_json
from genladder.sources import RawDataset, load_source

log = logging.getLogger(__name__)

PREVIEW_PER_CLASS = 10
PREVIEW_SCALE = 4


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize float images (N, C, H, W) to size x size with antialiased bilinear interpolation."""
    if images.shape[-2:] == (size, size):
        return images
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0.0, 1.0).numpy()


def cap_per_class(labels: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """Return sorted indices keeping at most `cap` images of each class, chosen with `seed`."""
    if cap is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        keep.append(idx if len(idx) <= cap else rng.choice(idx, size=cap, replace=False))
    return np.sort(np.concatenate(keep))


def statistics(splits: dict[str, tuple[np.ndarray, np.ndarray]], cfg: DataConfig, class_names: list[str]) -> dict:
    """Return counts per class and split, and the histogram of levels over the training images."""
    train_images = splits["train"][0]
    histogram = np.bincount(train_images.reshape(-1), minlength=cfg.levels)
    stats = {
        "num_images": {split: int(len(labels)) for split, (_, labels) in splits.items()},
        "per_class": {
            split: {class_names[c]: int(n) for c, n in enumerate(np.bincount(labels, minlength=len(class_names)))}
            for split, (_, labels) in splits.items()
        },
        "level_histogram": [int(n) for n in histogram],
        "mean_level": float((histogram * np.arange(cfg.levels)).sum() / max(histogram.sum(), 1)),
    }
    return stats


def save_preview(path: Path, images: np.ndarray, labels: np.ndarray, levels: int, num_classes: int) -> None:
    """Save a grid of up to PREVIEW_PER_CLASS training images per class, one row per class."""
    from torchvision.utils import save_image

    rows = []
    for cls in range(num_classes):
        picked = images[labels == cls][:PREVIEW_PER_CLASS]
        row = np.zeros((PREVIEW_PER_CLASS, *images.shape[1:]), dtype=np.float32)
        row[: len(picked)] = picked / (levels - 1)
        rows.append(row)
    grid = torch.from_numpy(np.concatenate(rows))
    grid = F.interpolate(grid, scale_factor=PREVIEW_SCALE, mode="nearest")
    with atomic_path(path) as tmp:
        save_image(grid, tmp, nrow=PREVIEW_PER_CLASS, padding=2, pad_value=0.5, format="png")


def prepare(cfg: DataConfig, data_root: Path, out_dir: Path | None = None) -> dict:
    """Run the whole preparation and return the statistics written to stats.json."""
    out_dir = out_dir or prepared_dir()

    # 1. Load and resize to image_size x image_size.
    raw: RawDataset = load_source(cfg, data_root)
    log.info("loaded %s: %d images of %s", cfg.source.value, len(raw.labels), "x".join(map(str, raw.images.shape[1:])))
    keep = cap_per_class(raw.labels, cfg.max_per_class, cfg.seed)
    images = resize(raw.images[keep], cfg.image_size)
    labels = raw.labels[keep]

    # 2. Quantize to levels 0..L-1 and split, the same fractions from every class.
    levels = quantize(images, cfg.levels)
    index = stratified_split(labels, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    splits = {split: (levels[index[split]], labels[index[split]]) for split in SPLITS}
    for split, (_, split_labels) in splits.items():
        if len(split_labels) == 0:
            raise ValueError(f"the {split} split is empty; lower data.max_per_class or use a larger dataset")

    # 3. Write the arrays, the metadata, the statistics and the preview.
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, (split_images, split_labels) in splits.items():
        save_split(out_dir / f"{split}.npz", split_images, split_labels)
    meta = {
        "source": cfg.source.value,
        "image_size": cfg.image_size,
        "channels": int(levels.shape[1]),
        "levels": cfg.levels,
        "num_classes": len(raw.class_names),
        "class_names": raw.class_names,
    }
    write_json(out_dir / "meta.json", meta)
    stats = statistics(splits, cfg, raw.class_names)
    write_json(out_dir / "stats.json", stats)
    save_preview(out_dir / "preview.png", *splits["train"], cfg.levels, len(raw.class_names))
    log.info("wrote %s: %s", out_dir, stats["num_images"])
    return stats
