"""Per-sample statistics of image sets: duplicates, diversity, sharpness and memorization.

Images are uint8 levels (N, C, H, W). Pixel distances and gradients use intensities scaled
to [0, 1] (level / (L - 1)), so their values do not depend on the number of levels.
"""

from __future__ import annotations

import torch


def to_intensity(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Map uint8 levels to float32 intensities in [0, 1]."""
    return images.float() / (levels - 1)


def duplicate_indicator(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return a bool (N,) that is True where the image has an identical twin with the same label."""
    if len(images) == 0:
        return torch.zeros(0, dtype=torch.bool)
    rows = torch.cat([labels.long().view(-1, 1), images.reshape(len(images), -1).long()], dim=1)
    _, inverse, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
    return counts[inverse] > 1


def within_class_distance(features: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> dict[int, torch.Tensor]:
    """Return, per class, the mean L2 distance between distinct samples under each row of counts (R, N), as (R,).

    Pairs of copies of the same original sample are skipped, so a resample does not shrink the
    distance by pairing a sample with itself. A class with fewer than two distinct samples in a
    replicate gets NaN there.
    """
    features = features.double().cpu()
    weights_all = counts.double()
    out: dict[int, torch.Tensor] = {}
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels.cpu() == cls).flatten()
        # Exact differences (no matrix-product shortcut), so identical features are exactly 0 apart.
        distances = torch.cdist(features[members], features[members], compute_mode="donot_use_mm_for_euclid_dist")
        weights = weights_all[:, members]  # (R, n_c)
        pair_sum = ((weights @ distances) * weights).sum(1)
        pairs = weights.sum(1).square() - weights.square().sum(1)
        out[int(cls)] = torch.where(pairs > 0, pair_sum / pairs.clamp_min(1.0), torch.full_like(pairs, float("nan")))
    return out


def gradient_magnitude(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Return each image's mean gradient magnitude sqrt(dx^2 + dy^2) from forward differences, as (N,).

    Intensities are in [0, 1]; the mean runs over channels and the (H-1) x (W-1) pixels where
    both differences exist.
    """
    x = to_intensity(images, levels)
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.square() + dy.square()).sqrt().flatten(1).mean(1)


def nearest_distance(
    queries: torch.Tensor,
    reference: torch.Tensor,
    levels: int,
    exclude_index: torch.Tensor | None = None,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Return the pixel L2 distance from each query image to its nearest reference image, as (N,).

    exclude_index (N,), when given, names for each query a reference row to skip (its own
    copy, for a query set drawn from the reference set); -1 skips nothing.
    """
    ref = to_intensity(reference, levels).flatten(1).to(device, torch.float64)
    out = []
    for start in range(0, len(queries), batch_size):
        q = to_intensity(queries[start : start + batch_size], levels).flatten(1).to(device, torch.float64)
        distances = torch.cdist(q, ref)  # (b, M)
        if exclude_index is not None:
            skip = exclude_index[start : start + batch_size].to(device)
            rows = torch.nonzero(skip >= 0).flatten()
            distances[rows, skip[rows]] = float("inf")
        out.append(distances.min(dim=1).values.float().cpu())
    return torch.cat(out) if out else torch.zeros(0)
