"""Precision and recall with k-NN manifolds (Kynkäänniemi et al., NeurIPS 2019).

Each set's manifold is the union of balls around its points, the ball of point a having the
distance to a's k-th nearest other point as radius. Precision is the share of generated
points inside the real manifold, which measures whether the samples look real. Recall is the
share of real points inside the generated manifold, which measures whether the samples cover
the real variety. A point on a ball's boundary counts as inside.
"""

from __future__ import annotations

import torch

from genladder.metrics.bootstrap import percentile_interval
from genladder.metrics.definitions import Estimate


def _exact_cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # float64 differences without the matrix-product shortcut, so identical points are exactly 0 apart.
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Return the distance from each point (N, F) to its k-th nearest other point, as (N,)."""
    if len(features) <= k:
        raise ValueError(f"k-NN radii need more than k={k} points, got {len(features)}")
    distances = _exact_cdist(features, features)
    distances.fill_diagonal_(float("inf"))
    return distances.kthvalue(k, dim=1).values


def _sorted_neighbours(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return distances (N, N-1) to the other points in increasing order and their indices."""
    distances = _exact_cdist(features, features)
    distances.fill_diagonal_(float("inf"))
    values, index = distances.sort(dim=1)
    return values[:, :-1], index[:, :-1]  # the last column is the point itself (infinite)


def _weighted_radii(
    sorted_values: torch.Tensor, sorted_index: torch.Tensor, weights: torch.Tensor, k: int, window: int = 64
) -> torch.Tensor:
    """Return k-NN radii when point b occurs weights[b] times; copies of a point are not its neighbours.

    A point's k-th neighbour under resampling is almost always among its `window` nearest,
    so the cumulative counts are taken over that window first and over all neighbours only
    for the rows it does not settle.
    """

    def kth(values: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reached = weights[index].cumsum(dim=1) >= k
        position = reached.int().argmax(dim=1)  # first neighbour that completes k
        return values.gather(1, position[:, None]).squeeze(1), reached.any(dim=1)

    radii, settled = kth(sorted_values[:, :window], sorted_index[:, :window])
    if not settled.all():
        rows = torch.nonzero(~settled).flatten()
        rest, found = kth(sorted_values[rows], sorted_index[rows])
        radii[rows] = torch.where(found, rest, torch.full_like(rest, float("inf")))
    return radii


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int, counts: torch.Tensor) -> tuple[Estimate, Estimate]:
    """Return (precision, recall) of `fake` (N, F) against `real` (M, F), with intervals over counts (R, N).

    The real manifold stays fixed; each replicate rebuilds the generated manifold from its counts.
    """
    real, fake = real.double().cpu(), fake.double().cpu()
    real_radii = knn_radii(real, k)
    distances = _exact_cdist(fake, real)  # (N, M)
    inside_real = (distances <= real_radii[None, :]).any(dim=1).double()  # (N,)

    sorted_values, sorted_index = _sorted_neighbours(fake)

    def recall_for(weights: torch.Tensor) -> torch.Tensor:
        radii = _weighted_radii(sorted_values, sorted_index, weights, k)
        present = weights > 0
        covered = (distances <= radii[:, None]) & present[:, None]  # (N, M)
        return covered.any(dim=0).double().mean()

    ones = torch.ones(len(fake), dtype=torch.long)
    precision_value = float(inside_real.mean())
    recall_value = float(recall_for(ones))
    weights = counts.double()
    precision_reps = weights @ inside_real / weights.sum(1)
    recall_reps = torch.stack([recall_for(row) for row in counts]) if len(counts) else torch.zeros(0)
    precision = percentile_interval(precision_value, precision_reps)
    recall = percentile_interval(recall_value, recall_reps, centered=True, lower=0.0)
    return precision, Estimate(recall.value, recall.low, min(recall.high, 1.0))
