"""Every per-set metric of one image set against the held-out test split, with 95% intervals.

The real test split is fixed, and only the scored set is resampled (stratified by class). The
intervals therefore describe the sampling error of the generated set, which is what separates
two samplers scored against the same test split.
"""

from __future__ import annotations

import logging

import torch

from genladder.config import EvaluateConfig
from genladder.evaluator import Evaluator, predict
from genladder.metrics.bootstrap import (
    bootstrap_mean,
    percentile_interval,
    single_thread,
    stratified_counts,
)
from genladder.metrics.features import EvaluatorFeatures
from genladder.metrics.frechet import FeatureDistances, frechet_replicates, kid_replicates
from genladder.metrics.definitions import MEMORIZATION_QUANTILE, Estimate
from genladder.metrics.image_stats import (
    duplicate_indicator,
    gradient_magnitude,
    nearest_distance,
    within_class_distance,
)
from genladder.metrics.manifold import precision_recall

log = logging.getLogger(__name__)


class MetricSuite:
    """Precomputed statistics of the real data, and `score` for one set of images.

    Args:
        evaluator: the trained classifier (eval mode) on `device`.
        train: (images, labels) of the training split, for memorization.
        test: (images, labels) of the test split, the reference of every other metric.
        levels: intensity levels L.
        cfg: bootstrap resamples, k of the k-NN manifolds, seed.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        train: tuple[torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor],
        levels: int,
        cfg: EvaluateConfig,
        device: torch.device | str = "cpu",
    ):
        self.evaluator = evaluator
        self.cfg = cfg
        self.levels = levels
        self.device = device
        self.train_images = train[0]
        test_images, test_labels = test
        self.test_features, test_logits = predict(evaluator, test_images)
        self.test_accuracy = float((test_logits.argmax(1) == test_labels).float().mean())
        self.distances = FeatureDistances(EvaluatorFeatures(evaluator), test_images, seed=cfg.seed)

        ones = torch.ones(1, len(test_labels), dtype=torch.long)
        self.real_within = {c: float(v[0]) for c, v in within_class_distance(self.test_features, test_labels, ones).items()}
        self.real_gradient = float(gradient_magnitude(test_images, levels).mean())
        test_to_train = nearest_distance(test_images, self.train_images, levels, device=device)
        self.memorization_threshold = float(torch.quantile(test_to_train.double(), MEMORIZATION_QUANTILE))
        log.info(
            "test split: %d images, evaluator accuracy %.4f, memorization threshold %.4f (pixel L2)",
            len(test_labels), self.test_accuracy, self.memorization_threshold,
        )

    def reference_values(self) -> dict[str, float]:
        """Return the real-data statistics the relative metrics divide by."""
        return {
            "evaluator_test_accuracy": self.test_accuracy,
            "memorization_threshold": self.memorization_threshold,
            "real_gradient_magnitude": self.real_gradient,
            "real_within_class_distance": sum(self.real_within.values()) / max(len(self.real_within), 1),
        }

    def score(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator,
        exclude_train_index: torch.Tensor | None = None,
    ) -> dict[str, Estimate]:
        """Return every metric of `images` (uint8 (N, C, H, W)) requested with `labels` (N,).

        exclude_train_index (N,) names each image's own row in the training split, for a
        reference set drawn from it (-1 where none), so that memorization skips that copy.
        """
        if len(images) < 2:
            raise ValueError(f"at least two images are needed to score a set, got {len(images)}")
        cfg = self.cfg
        features, logits = predict(self.evaluator, images)
        counts = stratified_counts(labels, cfg.bootstrap, generator)
        out: dict[str, Estimate] = {}

        # 1. Distribution distances through torchmetrics, then their bootstrap replicates.
        fd, kid = self.distances(images)
        with single_thread():
            fd_replicates = frechet_replicates(self.test_features, features, counts)
            kid_reps = kid_replicates(self.test_features, features, counts)
        out["frechet_distance"] = percentile_interval(fd, fd_replicates, centered=True, lower=0.0)
        out["kid"] = percentile_interval(kid, kid_reps, centered=True)

        # 2. k-NN manifolds.
        with single_thread():
            out["precision"], out["recall"] = precision_recall(self.test_features, features, cfg.knn_k, counts)

        # 3. Per-sample indicators and ratios.
        out["class_consistency"] = bootstrap_mean((logits.argmax(1) == labels.cpu()).double(), counts)
        out["diversity"] = self._diversity(features, labels, counts)
        out["duplicate_share"] = bootstrap_mean(duplicate_indicator(images, labels).double(), counts)
        out["sharpness"] = bootstrap_mean(gradient_magnitude(images, self.levels).double() / self.real_gradient, counts)
        nearest = nearest_distance(images, self.train_images, self.levels, exclude_train_index, device=self.device)
        out["memorization"] = bootstrap_mean((nearest <= self.memorization_threshold).double(), counts)
        return out

    def _diversity(self, features: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> Estimate:
        # Row 0 is the full set, rows 1.. the replicates; the ratio is averaged over classes.
        ones = torch.ones(1, counts.shape[1], dtype=counts.dtype)
        per_class = within_class_distance(features, labels, torch.cat([ones, counts]))
        ratios = [per_class[c] / self.real_within[c] for c in per_class if self.real_within.get(c, 0.0) > 0]
        if not ratios:
            return Estimate(float("nan"), float("nan"), float("nan"))
        mean_ratio = torch.stack(ratios).nanmean(dim=0)
        return percentile_interval(float(mean_ratio[0]), mean_ratio[1:])
