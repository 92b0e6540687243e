"""Bootstrap resampling behind every 95% interval.

Samples are resampled within each requested class (a stratified bootstrap), because every
sampler draws the same number of samples per class by design. A replicate is stored as a row
of counts, and a weighted statistic counts each original sample `count` times. The pairwise
estimators in this package use the counts to skip pairs of copies of the same sample, because
a naive resample would count such pairs as exact duplicates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from genladder.metrics.definitions import LEVEL, Estimate



@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch CPU ops on one thread inside the block, restoring the previous count after.

    Bootstrap loops run hundreds of small ops (128 x 128 eigenvalues, cumulative sums over
    1,000 x 64 counts). Measured on a 2-core machine shared with other jobs, each such op took
    20 to 40 times longer with two intra-op threads than with one, because the threads wait
    for each other.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def row_generator(seed: int, row: str) -> torch.Generator:
    """Return a generator seeded from evaluate.seed and a row name (a sampler, a reference, an NLL order).

    Each row draws from its own stream, so its intervals do not change when rows are added
    or removed. SHA-256 keeps the seed stable across processes, unlike Python's hash().
    """
    digest = hashlib.sha256(f"{seed}:{row}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def stratified_counts(labels: torch.Tensor, resamples: int, generator: torch.Generator) -> torch.Tensor:
    """Draw bootstrap replicates as counts (R, N): each class's n_c samples are drawn n_c times with replacement."""
    labels = labels.cpu()
    counts = torch.zeros(resamples, len(labels), dtype=torch.long)
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        draws = torch.randint(0, len(members), (resamples, len(members)), generator=generator)
        counts.scatter_add_(1, members[draws], torch.ones_like(draws))
    return counts


def percentile_interval(
    value: float,
    replicates: torch.Tensor,
    level: float = LEVEL,
    centered: bool = False,
    lower: float | None = None,
) -> Estimate:
    """Return `value` with the (1 - level) / 2 and (1 + level) / 2 quantiles of the finite replicates.

    centered=True first shifts the replicates by value - mean(replicates), removing the
    bootstrap estimate of bias. Set-level statistics need it. A resample contains about 63%
    distinct samples, so its Fréchet distance, KID and recall are biased against the full set,
    and the plain quantiles can exclude the point estimate. `lower` clips the interval to a
    statistic's lower bound (0 for a distance).
    """
    replicates = replicates.double().flatten()
    replicates = replicates[torch.isfinite(replicates)]
    if len(replicates) == 0 or not math.isfinite(value):
        return Estimate(float(value), math.nan, math.nan)
    if centered:
        replicates = replicates + (value - replicates.mean())
    tail = (1.0 - level) / 2.0
    low, high = torch.quantile(replicates, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    if lower is not None:
        low, high = max(low, lower), max(high, lower)
    return Estimate(float(value), low, high)


def weighted_mean(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Return the mean of `values` (N,) under each row of counts (R, N), as (R,)."""
    counts = counts.to(torch.float64)
    return counts @ values.double() / counts.sum(1)


def bootstrap_mean(values: torch.Tensor, counts: torch.Tensor) -> Estimate:
    """Return the mean of per-sample values (N,) with its interval over the replicates (R, N)."""
    values = values.double().cpu()
    return percentile_interval(float(values.mean()), weighted_mean(values, counts))
