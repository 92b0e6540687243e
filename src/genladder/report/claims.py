"""Verdicts on the five claims, decided from metric rows with 95% intervals.

Every claim is decided by comparisons between two intervals, or between an interval and a
fixed bound. A comparison holds when the intervals are disjoint in the claimed direction,
fails when they are disjoint in the other direction, and is inconclusive when they overlap.
A claim whose samplers are missing is "not measured".

Samplers are chosen by their settings (method, order, group, greedy, temperature), never by
name, so any set of samplers in params.yaml works. Comparisons between ar decoding orders
(claims 3 and 4) use sampled, not greedy, decoding at temperature 1, which draws from the
model's own distribution. When two samplers have the same settings, the first by name is used.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from genladder.metrics.definitions import Estimate

# Claim 1 and 2 bounds: a sampler has collapsed when its within-class diversity is below 10%
# of the real images' and more than 90% of its samples have an identical twin.
COLLAPSED_DIVERSITY = 0.1
COLLAPSED_DUPLICATES = 0.9
REAL_SHARPNESS = 1.0  # sharpness is relative to the test split
MODEL_TEMPERATURE = 1.0

Row = dict[str, Any]


class Verdict(str, enum.Enum):
    holds = "holds"
    fails = "fails"
    inconclusive = "inconclusive"
    not_measured = "not measured"


@dataclass(frozen=True)
class Comparison:
    """One piece of evidence: `left` against `right` (another row's estimate or a fixed bound)."""

    metric: str
    relation: str  # "<" or ">": what the claim expects of left relative to right
    left_name: str
    left: Estimate
    right_name: str
    right: Estimate
    outcome: Verdict

    def text(self) -> str:
        return f"{self.metric}: {self.left_name} {self.relation} {self.right_name}"


@dataclass
class ClaimResult:
    """The verdict on one claim and the comparisons behind it; `deciding` indexes the comparisons that decide it."""

    number: int
    title: str
    statement: str
    verdict: Verdict
    comparisons: list[Comparison] = field(default_factory=list)
    deciding: list[int] = field(default_factory=list)
    note: str = ""


CLAIMS = {
    1: ("Regression to the mean", "A label-to-image regression gives one blurry image per class, the same every time."),
    2: ("Greedy autoregression collapses", "Argmax decoding repeats one image per label; sampling restores diversity."),
    3: ("Adjacent pixels together degrade", "Generating n x n patches per step lowers quality as n grows."),
    4: ("Spread-out pixels can be generated together", "At equal NFE, pixels spread on a lattice beat adjacent patches."),
    5: ("Diffusion reaches the best quality per NFE", "Diffusion beats the best ar sampler that uses as many or more NFE."),
}


# ---------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------


def estimate(row: Row, metric: str) -> Estimate:
    return Estimate.from_dict(row["metrics"][metric])


def compare(left: Estimate, right: Estimate, relation: str) -> Verdict:
    """Return holds when the intervals are disjoint in the direction `relation` ("<" or ">"), fails when disjoint the other way."""
    if relation not in ("<", ">"):
        raise ValueError(f"relation must be '<' or '>', got {relation!r}")
    bounds = (left.low, left.high, right.low, right.high)
    if not all(math.isfinite(b) for b in bounds):
        return Verdict.inconclusive
    below = left.high < right.low
    above = left.low > right.high
    if not below and not above:
        return Verdict.inconclusive
    return Verdict.holds if (below if relation == "<" else above) else Verdict.fails


def _between(metric: str, relation: str, left_name: str, left: Row, right_name: str, right: Row) -> Comparison:
    a, b = estimate(left, metric), estimate(right, metric)
    return Comparison(metric, relation, left_name, a, right_name, b, compare(a, b, relation))


def _against_bound(metric: str, relation: str, name: str, row: Row, bound_name: str, bound: float) -> Comparison:
    a = estimate(row, metric)
    b = Estimate.exact(bound)
    return Comparison(metric, relation, name, a, bound_name, b, compare(a, b, relation))


def combine(outcomes: list[Verdict]) -> Verdict:
    """Return fails if any fails, holds if all hold, else inconclusive; not measured for none."""
    if not outcomes:
        return Verdict.not_measured
    if Verdict.fails in outcomes:
        return Verdict.fails
    if all(o is Verdict.holds for o in outcomes):
        return Verdict.holds
    return Verdict.inconclusive


# ---------------------------------------------------------------------------
# Selection by settings
# ---------------------------------------------------------------------------


def _settings(row: Row) -> dict[str, Any]:
    return row.get("settings", {})


def _is_method(row: Row, *methods: str) -> bool:
    return _settings(row).get("method") in methods


def _is_sampled_ar(row: Row, order: str | None = None) -> bool:
    """True for an ar sampler at the model's temperature, without greedy decoding."""
    s = _settings(row)
    if s.get("method") != "ar" or s.get("greedy"):
        return False
    temperature = s.get("temperature")
    if temperature is None or not math.isclose(float(temperature), MODEL_TEMPERATURE):
        return False
    return order is None or s.get("order") == order


def _first(rows: dict[str, Row], keep: Callable[[Row], bool], key: Callable[[str, Row], Any] | None = None) -> str | None:
    names = sorted(name for name, row in rows.items() if keep(row))
    if key is not None:
        names = sorted(names, key=lambda n: key(n, rows[n]))
    return names[0] if names else None


def _fd_value(row: Row) -> float:
    value = estimate(row, "frechet_distance").value
    return value if math.isfinite(value) else math.inf


def _group_series(rows: dict[str, Row], order: str) -> dict[int, str]:
    """Return {n: sampler} for sampled ar samplers of one order, the first by name per n."""
    series: dict[int, str] = {}
    for name in sorted(rows):
        row = rows[name]
        if _is_sampled_ar(row, order):
            series.setdefault(int(_settings(row)["group"]), name)
    return series


def _raster_single(rows: dict[str, Row]) -> str | None:
    return _first(rows, lambda r: _is_sampled_ar(r, "raster") and int(_settings(r).get("group", 0)) == 1)


# ---------------------------------------------------------------------------
# The five claims
# ---------------------------------------------------------------------------


def _not_measured(number: int, note: str) -> ClaimResult:
    title, statement = CLAIMS[number]
    return ClaimResult(number, title, statement, Verdict.not_measured, note=note)


def claim_regression(rows: dict[str, Row], references: dict[str, Row]) -> ClaimResult:
    name = _first(rows, lambda r: _is_method(r, "regression"))
    if name is None:
        return _not_measured(1, "no sampler with method regression")
    row = rows[name]
    comparisons = [
        _against_bound("diversity", "<", name, row, "collapse bound", COLLAPSED_DIVERSITY),
        _against_bound("duplicate_share", ">", name, row, "collapse bound", COLLAPSED_DUPLICATES),
    ]
    real = references.get("real_train")
    if real is not None:
        comparisons.append(_between("sharpness", "<", name, row, "real_train", real))
    else:
        comparisons.append(_against_bound("sharpness", "<", name, row, "real images", REAL_SHARPNESS))
    title, statement = CLAIMS[1]
    verdict = combine([c.outcome for c in comparisons])
    return ClaimResult(1, title, statement, verdict, comparisons, list(range(len(comparisons))))


def claim_greedy(rows: dict[str, Row]) -> ClaimResult:
    def raster_single(row: Row) -> bool:
        s = _settings(row)
        return s.get("method") == "ar" and s.get("order") == "raster" and int(s.get("group", 0)) == 1

    greedy = _first(rows, lambda r: raster_single(r) and bool(_settings(r).get("greedy")))
    sampled = _first(
        rows,
        lambda r: raster_single(r) and not _settings(r).get("greedy"),
        key=lambda n, r: (abs(float(_settings(r).get("temperature") or 0.0) - MODEL_TEMPERATURE), n),
    )
    if greedy is None or sampled is None:
        missing = "greedy" if greedy is None else "sampled (greedy: false)"
        return _not_measured(2, f"no {missing} ar sampler with raster order and group 1")
    g, s = rows[greedy], rows[sampled]
    comparisons = [
        _against_bound("duplicate_share", ">", greedy, g, "collapse bound", COLLAPSED_DUPLICATES),
        _between("diversity", "<", greedy, g, sampled, s),
        _between("duplicate_share", ">", greedy, g, sampled, s),
    ]
    title, statement = CLAIMS[2]
    verdict = combine([c.outcome for c in comparisons])
    return ClaimResult(2, title, statement, verdict, comparisons, list(range(len(comparisons))))


def claim_patches(rows: dict[str, Row]) -> ClaimResult:
    series = _group_series(rows, "patch")
    raster = _raster_single(rows)
    if raster is not None:
        series.setdefault(1, raster)  # one pixel per step is the 1 x 1 patch
    if len(series) < 2:
        return _not_measured(3, "fewer than two sampled ar samplers among patch orders and raster order with group 1")
    sizes = sorted(series)
    comparisons = []
    for small, large in zip(sizes, sizes[1:]):
        comparisons.append(
            _between("frechet_distance", ">", series[large], rows[series[large]], series[small], rows[series[small]])
        )
    first, last = series[sizes[0]], series[sizes[-1]]
    comparisons.append(_between("frechet_distance", ">", last, rows[last], first, rows[first]))
    deciding = len(comparisons) - 1
    steps = [c.outcome for c in comparisons[:-1]]
    # The extremes decide, unless one step to the next size significantly lowers the distance.
    verdict = Verdict.fails if Verdict.fails in steps else comparisons[deciding].outcome
    title, statement = CLAIMS[3]
    note = f"n = {', '.join(map(str, sizes))}" + (f"; n = 1 is {raster}" if sizes[0] == 1 and raster else "")
    return ClaimResult(3, title, statement, verdict, comparisons, [deciding], note)


def claim_spread(rows: dict[str, Row]) -> ClaimResult:
    patch, spread = _group_series(rows, "patch"), _group_series(rows, "spread")
    shared = sorted(set(patch) & set(spread))
    if not shared:
        return _not_measured(4, "no group size n with both a sampled patch and a sampled spread ar sampler")
    comparisons = [_between("frechet_distance", "<", spread[n], rows[spread[n]], patch[n], rows[patch[n]]) for n in shared]
    deciding = len(comparisons) - 1  # the largest n, where adjacent pixels depend on each other most
    others = [c.outcome for c in comparisons[:-1]]
    verdict = Verdict.fails if Verdict.fails in others else comparisons[deciding].outcome
    title, statement = CLAIMS[4]
    return ClaimResult(4, title, statement, verdict, comparisons, [deciding], f"n = {', '.join(map(str, shared))}")


def claim_diffusion(rows: dict[str, Row]) -> ClaimResult:
    diffusion = {n: r for n, r in rows.items() if _is_method(r, "ddpm", "ddim") and r.get("nfe") is not None}
    ar = {n: r for n, r in rows.items() if _is_method(r, "ar") and r.get("nfe") is not None}
    if not diffusion or not ar:
        return _not_measured(5, "needs at least one diffusion (ddpm or ddim) and one ar sampler with NFE")

    def best_ar_at_least(nfe: int) -> str | None:
        return _first(ar, lambda r: int(r["nfe"]) >= nfe, key=lambda n, r: (_fd_value(r), n))

    pairs = [(d, best_ar_at_least(int(r["nfe"]))) for d, r in sorted(diffusion.items(), key=lambda kv: (int(kv[1]["nfe"]), kv[0]))]
    pairs = [(d, a) for d, a in pairs if a is not None]
    if not pairs:
        return _not_measured(5, "every ar sampler uses fewer NFE than every diffusion sampler")
    comparisons = [_between("frechet_distance", "<", d, diffusion[d], a, ar[a]) for d, a in pairs]
    # The diffusion sampler with the lowest distance decides, against the best ar sampler at >= its NFE.
    deciding = min(range(len(pairs)), key=lambda i: (_fd_value(diffusion[pairs[i][0]]), pairs[i][0]))
    title, statement = CLAIMS[5]
    nfe_note = ", ".join(f"{d} (NFE {diffusion[d]['nfe']}) vs {a} (NFE {ar[a]['nfe']})" for d, a in pairs)
    return ClaimResult(5, title, statement, comparisons[deciding].outcome, comparisons, [deciding], nfe_note)


def evaluate_claims(rows: dict[str, Row], references: dict[str, Row]) -> list[ClaimResult]:
    """Return the five claims' results from per-sampler rows and reference rows (metrics JSON dicts)."""
    return [
        claim_regression(rows, references),
        claim_greedy(rows),
        claim_patches(rows),
        claim_spread(rows),
        claim_diffusion(rows),
    ]
