"""Matplotlib figures of the evaluation: quality against network evaluations (NFE)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed

import matplotlib.pyplot as plt  # noqa: E402

from genladder.runtime import atomic_path  # noqa: E402


def _error_bars(rows: list[dict[str, Any]], key: str) -> list[list[float]]:
    """Return matplotlib's [[below], [above]] distances from each value to its interval bounds."""
    below, above = [], []
    for row in rows:
        value, low, high = row[key], row.get(f"{key}_low"), row.get(f"{key}_high")
        # max(0, ...): a percentile interval may miss its point estimate, and matplotlib rejects negative bars.
        below.append(max(0.0, value - low) if low is not None and math.isfinite(low) else 0.0)
        above.append(max(0.0, high - value) if high is not None and math.isfinite(high) else 0.0)
    return [below, above]


def plot_quality_vs_nfe(rows: list[dict[str, Any]], path: str | Path, floor: float | None = None) -> None:
    """Draw Fréchet distance and precision against NFE (log scale), one line per sampler family.

    rows: dicts with sampler, family, nfe, frechet_distance and precision, optionally with
    *_low / *_high interval bounds drawn as error bars. floor: the Fréchet distance of real
    training images, drawn as a dashed line.
    """
    rows = [r for r in rows if r.get("frechet_distance") is not None and r.get("precision") is not None]
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_family[row["family"]].append(row)

    fig, (ax_fd, ax_precision) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for family, series in sorted(by_family.items()):
        series = sorted(series, key=lambda r: r["nfe"])
        nfe = [r["nfe"] for r in series]
        line = ax_fd.errorbar(
            nfe, [r["frechet_distance"] for r in series], yerr=_error_bars(series, "frechet_distance"),
            marker="o", capsize=3, label=family,
        )
        ax_precision.errorbar(
            nfe, [r["precision"] for r in series], yerr=_error_bars(series, "precision"),
            marker="o", capsize=3, color=line.lines[0].get_color(), label=family,
        )
    if floor is not None and math.isfinite(floor):
        ax_fd.axhline(floor, color="gray", linestyle="--", linewidth=1, label="real training images")
    for ax, ylabel in ((ax_fd, "Fréchet distance (evaluator features), lower is better"), (ax_precision, "precision, higher is better")):
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per image (NFE)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    values = [r["frechet_distance"] for r in rows if r["frechet_distance"] is not None]
    if floor is not None and math.isfinite(floor):
        values.append(floor)
    # Distances often span several decades (real images near 0.1, collapsed samplers near 100).
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax_fd.set_yscale("log")
    ax_precision.set_ylim(0.0, 1.05)
    if by_family:
        ax_fd.legend(fontsize=8)
    fig.suptitle("Sample quality against NFE, 95% bootstrap intervals")

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
