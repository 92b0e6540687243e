"""Metric names, directions and the interval record, shared by the evaluate and report stages.

This module needs no torch, so the report stage starts without loading it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95
MEMORIZATION_QUANTILE = 0.05


@dataclass(frozen=True)
class Estimate:
    """A point estimate with the bounds of its percentile bootstrap interval."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        return {"value": finite_or_none(self.value), "low": finite_or_none(self.low), "high": finite_or_none(self.high)}

    @classmethod
    def from_dict(cls, data: dict) -> Estimate:
        return cls(*(math.nan if data.get(k) is None else float(data[k]) for k in ("value", "low", "high")))

    @classmethod
    def exact(cls, value: float) -> Estimate:
        """Return an estimate without sampling error, whose interval is the value itself."""
        return cls(float(value), float(value), float(value))


def finite_or_none(x: float) -> float | None:
    # JSON has no NaN or infinity; None keeps the files valid for DVC and browsers.
    return float(x) if math.isfinite(x) else None


@dataclass(frozen=True)
class MetricInfo:
    """Display label, direction and definition of one metric.

    higher_is_better is None for a ratio to real images, where closer to real_value is better.
    """

    label: str
    higher_is_better: bool | None
    real_value: float | None
    description: str


METRICS: dict[str, MetricInfo] = {
    "frechet_distance": MetricInfo("Fréchet distance", False, None, "Fréchet distance to the test split in evaluator features"),
    "kid": MetricInfo("KID", False, None, "kernel distance (unbiased MMD^2, cubic kernel) in evaluator features"),
    "precision": MetricInfo("precision", True, None, "share of samples inside the test split's k-NN manifold"),
    "recall": MetricInfo("recall", True, None, "share of test images inside the samples' k-NN manifold"),
    "class_consistency": MetricInfo("class consistency", True, None, "share of samples the evaluator assigns to the requested label"),
    "diversity": MetricInfo(
        "diversity", None, 1.0,
        "within-class mean pairwise L2 distance in evaluator features, relative to test images of the same class",
    ),
    "duplicate_share": MetricInfo("duplicates", False, None, "share of samples with an identical twin of the same label"),
    "sharpness": MetricInfo("sharpness", None, 1.0, "mean image-gradient magnitude relative to test images"),
    "memorization": MetricInfo(
        "memorization", False, None,
        f"share of samples closer (pixel L2) to a training image than the {MEMORIZATION_QUANTILE:.0%} "
        "quantile of test-to-train nearest distances",
    ),
}
