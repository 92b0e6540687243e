"""Fréchet distance and kernel distance (KID) between feature distributions.

The point estimates go through torchmetrics (1.9): FrechetInceptionDistance and
KernelInceptionDistance with a custom feature module. The bootstrap replicates reuse the
features already extracted, weighted by each replicate's counts, so a replicate needs no new
forward pass. KID replicates use torchmetrics' `poly_kernel`. Fréchet replicates use a
symmetric form of the formula in torchmetrics' `_compute_fid`, and the tests compare the two.

- Fréchet distance (Heusel et al. 2017): d^2 = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)).
- KID (Bińkowski et al. 2018): the unbiased estimate of MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / F + 1)^3.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance, poly_kernel

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


class FeatureDistances:
    """Fréchet distance and KID of image sets against one fixed real set, through torchmetrics.

    Args:
        feature: module mapping a batch of images to features (B, F), with `num_features`.
        real: the real images, fed through `feature` once and kept.
        batch_size: images per `update` call.
        seed: seeds the random KID subsets, so repeated calls give the same value.
        kid_subsets, kid_subset_size: KID's subsets, each of at most kid_subset_size samples from both sets.
    """

    def __init__(
        self,
        feature: nn.Module,
        real: torch.Tensor,
        batch_size: int = 1000,
        seed: int = 0,
        kid_subsets: int = KID_SUBSETS,
        kid_subset_size: int = KID_SUBSET_SIZE,
    ):
        with warnings.catch_warnings():
            # KID warns that it keeps every feature in memory; these sets hold a few thousand.
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self.fid = FrechetInceptionDistance(feature=feature, reset_real_features=False)
            self.kid = KernelInceptionDistance(
                feature=feature, reset_real_features=False, subsets=kid_subsets, subset_size=kid_subset_size
            )
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.batch_size = batch_size
        self.seed = seed
        self.num_real = len(real)
        for start in range(0, len(real), batch_size):
            batch = real[start : start + batch_size]
            self.fid.update(batch, real=True)
            self.kid.update(batch, real=True)

    def __call__(self, images: torch.Tensor) -> tuple[float, float]:
        """Return (Fréchet distance, KID) of `images` against the real set."""
        self.fid.reset()
        self.kid.reset()
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            self.fid.update(batch, real=False)
            self.kid.update(batch, real=False)
        fd = float(self.fid.compute())
        # KID averages the unbiased MMD^2 over random subsets of equal size from both sets. When
        # the subset is all of both sets every subset gives the same value, so one suffices.
        self.kid.subset_size = min(self.kid_subset_size, self.num_real, len(images))
        self.kid.subsets = 1 if self.kid.subset_size == self.num_real == len(images) else self.kid_subsets
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            kid_mean, _ = self.kid.compute()
        return fd, float(kid_mean)


def _weighted_moments(features: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return mean (F,) and unbiased covariance (F, F) of features (N, F) where row i occurs weights[i] times."""
    n = weights.sum()
    mean = weights @ features / n
    centered = features - mean
    cov = (centered * weights[:, None]).T @ centered / (n - 1)
    return mean, cov


def frechet_from_moments(mu_r: torch.Tensor, sqrt_cov_r: torch.Tensor, cov_r_trace: torch.Tensor, mu_g: torch.Tensor, cov_g: torch.Tensor) -> torch.Tensor:
    """Return the Fréchet distance with Tr (S_r S_g)^(1/2) taken as Tr (S_r^(1/2) S_g S_r^(1/2))^(1/2).

    The two traces are equal because S_r S_g is similar to the symmetric S_r^(1/2) S_g S_r^(1/2),
    whose eigenvalues a symmetric solver finds several times faster than `_compute_fid`'s
    general one. The result equals `_compute_fid` up to rounding (the tests check it).
    """
    middle = sqrt_cov_r @ cov_g @ sqrt_cov_r
    eigenvalues = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0.0)
    return (mu_r - mu_g).square().sum() + cov_r_trace + cov_g.trace() - 2.0 * eigenvalues.sqrt().sum()


def matrix_sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Return the symmetric square root of a positive semi-definite matrix (negative eigenvalues clipped)."""
    eigenvalues, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * eigenvalues.clamp_min(0.0).sqrt()) @ vectors.T


def frechet_replicates(real: torch.Tensor, fake: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Return the Fréchet distance of `fake` (N, F) under each row of counts (R, N) against `real`, as (R,)."""
    real, fake = real.double(), fake.double()
    mu_r, cov_r = _weighted_moments(real, torch.ones(len(real), dtype=torch.float64, device=real.device))
    sqrt_cov_r, cov_r_trace = matrix_sqrt_psd(cov_r), cov_r.trace()
    out = []
    for row in counts.to(fake.device, torch.float64):
        mu_g, cov_g = _weighted_moments(fake, row)
        out.append(frechet_from_moments(mu_r, sqrt_cov_r, cov_r_trace, mu_g, cov_g))
    return torch.stack(out).cpu() if out else torch.zeros(0, dtype=torch.float64)


def kid_replicates(real: torch.Tensor, fake: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Return the unbiased MMD^2 of `fake` (N, F) under each row of counts (R, N) against `real`, as (R,).

    Every pair of distinct original samples counts c_a * c_b times, and copies of one sample
    are never paired with each other, which keeps the estimate unbiased under resampling.
    """
    real, fake = real.double(), fake.double()
    k_rr = poly_kernel(real, real)
    k_ff = poly_kernel(fake, fake)
    k_rf = poly_kernel(real, fake)
    m = len(real)
    real_term = (k_rr.sum() - k_rr.diagonal().sum()) / (m * (m - 1))
    cross_by_fake = k_rf.mean(0)  # (N,): mean kernel value of each fake sample against the real set
    diag_ff = k_ff.diagonal()
    weights = counts.to(fake.device, torch.float64)  # (R, N)
    n = weights.sum(1)
    pair_sum = ((weights @ k_ff) * weights).sum(1) - (weights.square() * diag_ff).sum(1)
    pairs = n.square() - weights.square().sum(1)
    fake_term = pair_sum / pairs
    cross_term = weights @ cross_by_fake / n
    return (real_term + fake_term - 2.0 * cross_term).cpu()
