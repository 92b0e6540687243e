"""Claim verdicts on hand-made metric tables: holds, fails, inconclusive and not measured."""

from __future__ import annotations

import pytest

from genladder.metrics.definitions import METRICS, Estimate
from genladder.report.claims import (
    Verdict,
    claim_diffusion,
    claim_greedy,
    claim_patches,
    claim_regression,
    claim_spread,
    combine,
    compare,
    evaluate_claims,
)

NAN = (float("nan"), float("nan"), float("nan"))


def row(settings: dict, nfe: int | None = None, **metrics: tuple[float, float, float]) -> dict:
    """A metrics row as the evaluate stage writes it; metrics not given are NaN."""
    values = {key: Estimate(*metrics.get(key, NAN)).to_dict() for key in METRICS}
    return {"settings": settings, "nfe": nfe, "metrics": values}


def ar(order: str, group: int, nfe: int, fd: tuple, greedy: bool = False, temperature: float | None = 1.0, **metrics) -> dict:
    settings = {"variant": "ar", "method": "ar", "order": order, "group": group, "greedy": greedy,
                "temperature": None if greedy else temperature}
    return row(settings, nfe, frechet_distance=fd, **metrics)


def diffusion(method: str, steps: int, fd: tuple) -> dict:
    return row({"variant": "diffusion", "method": method, "steps": steps, "guidance": 0.0}, steps, frechet_distance=fd)


REGRESSION = {"variant": "regression", "method": "regression"}
REAL = {"real_train": row({"source": "training images"}, sharpness=(1.0, 0.98, 1.02))}


@pytest.mark.parametrize(
    "left, right, relation, expected",
    [
        ((1, 0, 2), (5, 4, 6), "<", Verdict.holds),
        ((1, 0, 2), (5, 4, 6), ">", Verdict.fails),
        ((5, 4, 6), (1, 0, 2), ">", Verdict.holds),
        ((1, 0, 4.5), (5, 4, 6), "<", Verdict.inconclusive),
        ((1, 0, 4), (5, 4, 6), "<", Verdict.inconclusive),  # touching bounds overlap
        (NAN, (5, 4, 6), "<", Verdict.inconclusive),
    ],
)
def test_compare_intervals(left, right, relation, expected):
    assert compare(Estimate(*left), Estimate(*right), relation) is expected


def test_combine_rules():
    assert combine([]) is Verdict.not_measured
    assert combine([Verdict.holds, Verdict.holds]) is Verdict.holds
    assert combine([Verdict.holds, Verdict.inconclusive]) is Verdict.inconclusive
    assert combine([Verdict.holds, Verdict.inconclusive, Verdict.fails]) is Verdict.fails


# ---------------------------------------------------------------------------
# Claim 1
# ---------------------------------------------------------------------------


def test_regression_holds():
    rows = {"mean": row(REGRESSION, 1, diversity=(0, 0, 0), duplicate_share=(1, 1, 1), sharpness=(0.6, 0.6, 0.6))}
    result = claim_regression(rows, REAL)
    assert result.verdict is Verdict.holds
    assert [c.outcome for c in result.comparisons] == [Verdict.holds] * 3


def test_regression_fails_when_diverse():
    rows = {"mean": row(REGRESSION, 1, diversity=(0.8, 0.7, 0.9), duplicate_share=(0, 0, 0), sharpness=(0.6, 0.6, 0.6))}
    assert claim_regression(rows, REAL).verdict is Verdict.fails


def test_regression_inconclusive_when_sharpness_overlaps_real():
    rows = {"mean": row(REGRESSION, 1, diversity=(0, 0, 0), duplicate_share=(1, 1, 1), sharpness=(0.97, 0.95, 0.99))}
    assert claim_regression(rows, REAL).verdict is Verdict.inconclusive


def test_regression_without_reference_uses_real_sharpness_bound():
    rows = {"mean": row(REGRESSION, 1, diversity=(0, 0, 0), duplicate_share=(1, 1, 1), sharpness=(0.6, 0.5, 0.7))}
    result = claim_regression(rows, {})
    assert result.verdict is Verdict.holds
    assert result.comparisons[-1].right_name == "real images"


def test_regression_not_measured_without_sampler():
    rows = {"raster": ar("raster", 1, 256, (1, 0.9, 1.1))}
    result = claim_regression(rows, REAL)
    assert result.verdict is Verdict.not_measured
    assert "regression" in result.note


# ---------------------------------------------------------------------------
# Claim 2
# ---------------------------------------------------------------------------


def greedy_pair(greedy_div, sampled_div, greedy_dup, sampled_dup, temperature=1.0):
    return {
        "argmax": ar("raster", 1, 256, (9, 8, 10), greedy=True, diversity=greedy_div, duplicate_share=greedy_dup),
        "sampled": ar("raster", 1, 256, (1, 0.9, 1.1), temperature=temperature, diversity=sampled_div, duplicate_share=sampled_dup),
    }


def test_greedy_holds():
    rows = greedy_pair((0, 0, 0), (0.9, 0.85, 0.95), (1, 1, 1), (0, 0, 0.01))
    result = claim_greedy(rows)
    assert result.verdict is Verdict.holds
    assert {c.left_name for c in result.comparisons} == {"argmax"}


def test_greedy_fails_when_argmax_is_diverse():
    rows = greedy_pair((0.95, 0.9, 1.0), (0.5, 0.45, 0.55), (0, 0, 0), (0, 0, 0))
    assert claim_greedy(rows).verdict is Verdict.fails


def test_greedy_inconclusive_when_diversity_overlaps():
    rows = greedy_pair((0.3, 0.1, 0.5), (0.4, 0.2, 0.6), (0.95, 0.92, 0.98), (0.0, 0.0, 0.01))
    assert claim_greedy(rows).verdict is Verdict.inconclusive


def test_greedy_prefers_temperature_one():
    rows = greedy_pair((0, 0, 0), (0.9, 0.85, 0.95), (1, 1, 1), (0, 0, 0))
    rows["a_cold"] = ar("raster", 1, 256, (2, 1.9, 2.1), temperature=0.5, diversity=(0.1, 0.05, 0.15), duplicate_share=(0, 0, 0))
    result = claim_greedy(rows)
    assert result.comparisons[1].right_name == "sampled"


def test_greedy_not_measured_without_sampled_raster():
    rows = {"argmax": ar("raster", 1, 256, (9, 8, 10), greedy=True), "patchy": ar("patch", 2, 64, (2, 1, 3))}
    assert claim_greedy(rows).verdict is Verdict.not_measured


# ---------------------------------------------------------------------------
# Claim 3
# ---------------------------------------------------------------------------


def test_patches_hold_when_distance_grows():
    rows = {
        "r1": ar("raster", 1, 256, (1, 0.9, 1.1)),
        "p2": ar("patch", 2, 64, (3, 2.8, 3.2)),
        "p4": ar("patch", 4, 16, (10, 9, 11)),
    }
    result = claim_patches(rows)
    assert result.verdict is Verdict.holds
    deciding = result.comparisons[result.deciding[0]]
    assert (deciding.left_name, deciding.right_name) == ("p4", "r1")
    assert "n = 1, 2, 4" in result.note


def test_patches_fail_when_one_step_improves():
    rows = {
        "r1": ar("raster", 1, 256, (1, 0.9, 1.1)),
        "p2": ar("patch", 2, 64, (12, 11, 13)),
        "p4": ar("patch", 4, 16, (5, 4.5, 5.5)),
    }
    assert claim_patches(rows).verdict is Verdict.fails


def test_patches_inconclusive_when_extremes_overlap():
    rows = {"r1": ar("raster", 1, 256, (1, 0.5, 1.5)), "p2": ar("patch", 2, 64, (1.2, 0.7, 1.7))}
    assert claim_patches(rows).verdict is Verdict.inconclusive


def test_patches_ignore_greedy_and_other_temperatures():
    rows = {
        "r1": ar("raster", 1, 256, (1, 0.9, 1.1)),
        "p2_greedy": ar("patch", 2, 64, (0.1, 0.05, 0.2), greedy=True),
        "p2_cold": ar("patch", 2, 64, (0.1, 0.05, 0.2), temperature=0.7),
    }
    assert claim_patches(rows).verdict is Verdict.not_measured


# ---------------------------------------------------------------------------
# Claim 4
# ---------------------------------------------------------------------------


def test_spread_holds_at_largest_shared_n():
    rows = {
        "p2": ar("patch", 2, 64, (2, 1.8, 2.2)), "s2": ar("spread", 2, 64, (2.1, 1.9, 2.3)),
        "p4": ar("patch", 4, 16, (10, 9, 11)), "s4": ar("spread", 4, 16, (4, 3.5, 4.5)),
        "s8": ar("spread", 8, 4, (20, 19, 21)),  # no patch8: not compared
    }
    result = claim_spread(rows)
    assert result.verdict is Verdict.holds
    assert len(result.comparisons) == 2
    assert result.comparisons[result.deciding[0]].left_name == "s4"


def test_spread_fails_when_patch_is_better():
    rows = {"p4": ar("patch", 4, 16, (4, 3.5, 4.5)), "s4": ar("spread", 4, 16, (10, 9, 11))}
    assert claim_spread(rows).verdict is Verdict.fails


def test_spread_inconclusive_when_intervals_overlap():
    rows = {"p4": ar("patch", 4, 16, (5, 4, 6)), "s4": ar("spread", 4, 16, (4.5, 3.5, 5.5))}
    assert claim_spread(rows).verdict is Verdict.inconclusive


def test_spread_not_measured_without_pairs():
    rows = {"p4": ar("patch", 4, 16, (5, 4, 6)), "s2": ar("spread", 2, 64, (4.5, 3.5, 5.5))}
    assert claim_spread(rows).verdict is Verdict.not_measured


# ---------------------------------------------------------------------------
# Claim 5
# ---------------------------------------------------------------------------


def test_diffusion_holds_against_best_ar_at_larger_nfe():
    rows = {
        "d10": diffusion("ddim", 10, (2, 1.8, 2.2)),
        "d50": diffusion("ddim", 50, (1, 0.9, 1.1)),
        "r1": ar("raster", 1, 256, (3, 2.8, 3.2)),
        "rand16": ar("random", 16, 16, (2.5, 2.3, 2.7)),
        "fast": ar("spread", 8, 4, (0.5, 0.4, 0.6)),  # fewer NFE than any diffusion sampler: never compared
    }
    result = claim_diffusion(rows)
    assert result.verdict is Verdict.holds
    deciding = result.comparisons[result.deciding[0]]
    assert (deciding.left_name, deciding.right_name) == ("d50", "r1")
    assert [c.right_name for c in result.comparisons] == ["rand16", "r1"]


def test_diffusion_fails_when_ar_is_better():
    rows = {"d10": diffusion("ddpm", 10, (5, 4.5, 5.5)), "r1": ar("raster", 1, 256, (1, 0.9, 1.1))}
    assert claim_diffusion(rows).verdict is Verdict.fails


def test_diffusion_inconclusive_when_intervals_overlap():
    rows = {"d10": diffusion("ddim", 10, (1, 0.8, 1.2)), "r1": ar("raster", 1, 256, (1.1, 0.9, 1.3))}
    assert claim_diffusion(rows).verdict is Verdict.inconclusive


@pytest.mark.parametrize(
    "rows",
    [
        {"d10": diffusion("ddim", 10, (1, 0.8, 1.2))},
        {"r1": ar("raster", 1, 256, (1, 0.9, 1.1))},
        {"d500": diffusion("ddpm", 500, (1, 0.8, 1.2)), "r1": ar("raster", 1, 256, (2, 1.9, 2.1))},
    ],
)
def test_diffusion_not_measured(rows):
    assert claim_diffusion(rows).verdict is Verdict.not_measured


def test_all_claims_not_measured_on_empty_table():
    results = evaluate_claims({}, {})
    assert [r.number for r in results] == [1, 2, 3, 4, 5]
    assert all(r.verdict is Verdict.not_measured for r in results)
    assert all(r.note for r in results)
