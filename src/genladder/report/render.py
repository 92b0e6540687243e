"""Build the report (report/report.md and report/index.html) from the evaluate stage's outputs.

Reads metrics/samplers/*.json, metrics/reference/*.json, metrics/nll.json,
metrics/summary.json, plots/quality_vs_nfe.png and each sampler's grid.png and process.gif,
which are copied under report/assets so the folder is self-contained.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genladder.metrics.definitions import METRICS, Estimate
from genladder.report.claims import ClaimResult, Comparison, evaluate_claims
from genladder.report.document import Block, Figure, FigureRow, Heading, Paragraph, Table, to_html, to_markdown
from genladder.runtime import DataError

log = logging.getLogger(__name__)

TITLE = "genladder: why diffusion generates images better than autoregression"
TABLE_METRICS = tuple(METRICS)


@dataclass
class Evaluation:
    """The evaluate stage's outputs, read back from disk."""

    samplers: dict[str, dict[str, Any]]
    references: dict[str, dict[str, Any]]
    nll: dict[str, Any]
    summary: dict[str, Any]
    claims: list[ClaimResult] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"evaluation output not found: {path}; run `dvc repro evaluate`") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc}); run `dvc repro -f evaluate`") from None


def load_evaluation(root: Path, order: list[str] | None = None) -> Evaluation:
    """Read every metrics file; samplers follow `order` (params.yaml order) first, then by name."""
    metrics = root / "metrics"
    summary = _read_json(metrics / "summary.json")
    samplers = {p.stem: _read_json(p) for p in sorted((metrics / "samplers").glob("*.json"))}
    references = {p.stem: _read_json(p) for p in sorted((metrics / "reference").glob("*.json"))}
    nll_path = metrics / "nll.json"
    nll = _read_json(nll_path) if nll_path.is_file() else {}
    if order:
        ranked = {name: i for i, name in enumerate(order)}
        samplers = dict(sorted(samplers.items(), key=lambda kv: (ranked.get(kv[0], len(ranked)), kv[0])))
    evaluation = Evaluation(samplers, references, nll, summary)
    evaluation.claims = evaluate_claims(samplers, references)
    return evaluation


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------


def _number(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    magnitude = abs(x)
    if magnitude != 0 and (magnitude >= 1e4 or magnitude < 1e-3):
        return f"{x:.2e}"
    return f"{x:.3f}" if magnitude < 10 else f"{x:.1f}"


def format_estimate(e: Estimate) -> str:
    """Format as 'value [low, high]'; an exact value (low == high == value) drops the interval."""
    if not math.isfinite(e.value):
        return "n/a"
    if not (math.isfinite(e.low) and math.isfinite(e.high)):
        return _number(e.value)
    if e.low == e.high == e.value:
        return f"{_number(e.value)} [exact]"
    return f"{_number(e.value)} [{_number(e.low)}, {_number(e.high)}]"


def _optional(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _settings_text(settings: dict[str, Any]) -> str:
    skip = {"variant", "method"}
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k not in skip and v is not None)


def _better(higher_is_better: bool | None, real_value: float | None) -> str:
    if higher_is_better is True:
        return "higher"
    if higher_is_better is False:
        return "lower"
    return f"closer to {real_value:g} (real images)" if real_value is not None else "-"


def _comparison_text(c: Comparison) -> str:
    return f"{c.left_name} {format_estimate(c.left)} {c.relation} {c.right_name} {format_estimate(c.right)}"


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def claims_section(claims: list[ClaimResult]) -> list[Block]:
    blocks: list[Block] = [
        Heading("Claims"),
        Paragraph(
            "Each claim is decided by comparing 95% bootstrap intervals: it holds when the intervals are "
            "disjoint in the claimed direction, fails when they are disjoint the other way, and is "
            "inconclusive when they overlap. A claim whose samplers are missing is not measured."
        ),
    ]
    rows = []
    for claim in claims:
        deciding = [claim.comparisons[i] for i in claim.deciding]
        rows.append(
            [
                str(claim.number),
                f"{claim.title}: {claim.statement}",
                "; ".join(c.text() for c in deciding) or claim.note,
                "; ".join(_comparison_text(c) for c in deciding) or "-",
                claim.verdict.value,
            ]
        )
    blocks.append(Table(["#", "claim", "deciding comparison", "values", "verdict"], rows))

    for claim in claims:
        blocks.append(Heading(f"Claim {claim.number}: {claim.title}", level=3))
        text = f"{claim.statement} Verdict: {claim.verdict.value}."
        if claim.note:
            text += f" ({claim.note})"
        blocks.append(Paragraph(text))
        if claim.comparisons:
            rows = [
                [
                    "yes" if i in claim.deciding else "",
                    METRICS[c.metric].label if c.metric in METRICS else c.metric,
                    f"{c.left_name} {c.relation} {c.right_name}",
                    format_estimate(c.left),
                    format_estimate(c.right),
                    c.outcome.value,
                ]
                for i, c in enumerate(claim.comparisons)
            ]
            blocks.append(Table(["deciding", "metric", "expected", "left", "right", "outcome"], rows))
    return blocks


def metrics_section(evaluation: Evaluation) -> list[Block]:
    headers = ["row", "family", "settings", "NFE", "s/image"] + [METRICS[m].label for m in TABLE_METRICS]
    rows = []
    for group in (evaluation.samplers, evaluation.references):
        for name, row in group.items():
            cells = [
                name,
                row.get("family", ""),
                _settings_text(row.get("settings", {})),
                _optional(row.get("nfe")),
                _optional(row.get("seconds_per_image")),
            ]
            cells += [format_estimate(Estimate.from_dict(row["metrics"][m])) for m in TABLE_METRICS]
            rows.append(cells)
    context = evaluation.summary.get("context", {})
    intro = (
        f"All metrics against the {context.get('test_images', '?')} held-out test images, in the feature "
        f"space of the evaluator classifier (test accuracy {_optional(context.get('evaluator_test_accuracy'))}); "
        f"95% intervals from {context.get('bootstrap', '?')} bootstrap resamples of each row's images, "
        f"drawn within each class. Reference rows: real_train (training images, the floor of each metric) "
        f"and class_means (each class's mean training image, repeated)."
    )
    definitions = Table(
        ["metric", "definition", "better"],
        [
            [info.label, info.description, _better(info.higher_is_better, info.real_value)]
            for info in METRICS.values()
        ],
    )
    return [Heading("Metrics"), Paragraph(intro), Table(headers, rows), Heading("Definitions", level=3), definitions]


def nll_section(nll: dict[str, Any]) -> list[Block]:
    if not nll:
        return [Heading("Likelihood"), Paragraph("No ar variant was sampled, so no NLL was measured.")]
    rows = []
    for variant, row in nll.items():
        rows.append(
            [
                variant,
                str(row.get("images", "?")),
                format_estimate(Estimate.from_dict(row["raster"])),
                format_estimate(Estimate.from_dict(row["random"])),
            ]
        )
    text = (
        "Exact negative log-likelihood of each ar variant in bits per dimension, one pixel per step, "
        "conditional on the true label; random order draws one seeded permutation per image."
    )
    return [Heading("Likelihood"), Paragraph(text), Table(["variant", "test images", "raster order", "random order"], rows)]


def params_section(summary: dict[str, Any]) -> list[Block]:
    counts = summary.get("context", {}).get("param_count", {})
    if not counts:
        return []
    rows = [[variant, f"{count:,}"] for variant, count in counts.items()]
    return [
        Heading("Model size"),
        Paragraph("Every variant uses the same backbone; only the input and output layers differ by paradigm."),
        Table(["variant", "parameters"], rows),
    ]


# ---------------------------------------------------------------------------
# Assets and writing
# ---------------------------------------------------------------------------


def copy_assets(root: Path, evaluation: Evaluation, out: Path) -> tuple[list[FigureRow], Figure | None]:
    """Copy grids, animations and the quality plot under out/assets; return the figure rows to show."""
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    grids, animations = [], []
    for name in evaluation.samplers:
        for source, kind, target in (("grid.png", "grid", grids), ("process.gif", "generation", animations)):
            path = root / "samples" / name / source
            if not path.is_file():
                log.warning("%s of sampler %s not found at %s; the report leaves it out", kind, name, path)
                continue
            dest = assets / f"{name}_{source}"
            shutil.copyfile(path, dest)
            target.append(Figure(f"assets/{dest.name}", f"{name} ({kind})"))
    plot = None
    plot_path = root / "plots" / "quality_vs_nfe.png"
    if plot_path.is_file():
        shutil.copyfile(plot_path, assets / plot_path.name)
        plot = Figure(f"assets/{plot_path.name}", "quality against NFE")
    else:
        log.warning("quality plot not found at %s; the report leaves it out", plot_path)
    return [FigureRow(grids), FigureRow(animations)], plot


def build_blocks(evaluation: Evaluation, figures: list[FigureRow], plot: Figure | None) -> list[Block]:
    blocks: list[Block] = [
        Paragraph(
            "Each paradigm (regression, any-order pixel autoregression, diffusion) trains the same backbone on "
            "the same data; each sampler draws the same number of images for every class. This report is "
            "generated by `dvc repro report`; every number below comes from the metrics/ folder."
        )
    ]
    blocks += claims_section(evaluation.claims)
    blocks += metrics_section(evaluation)
    if plot is not None:
        blocks += [Heading("Quality against network evaluations"), FigureRow([plot])]
    blocks += nll_section(evaluation.nll)
    blocks += params_section(evaluation.summary)
    grids, animations = figures
    blocks += [Heading("Samples"), Paragraph("One row per class, as the sample stage draws them."), grids]
    blocks += [Heading("Generation process"), Paragraph("Intermediate states of a few samples per sampler."), animations]
    return blocks


def write_report(root: Path, out: Path, evaluation: Evaluation) -> dict[str, Path]:
    """Build the report in a temporary folder beside `out`, then move it into place.

    The swap replaces the whole folder, so assets of samplers no longer evaluated do not linger.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        figures, plot = copy_assets(root, evaluation, staging)
        blocks = build_blocks(evaluation, figures, plot)
        (staging / "report.md").write_text(to_markdown(TITLE, blocks))
        (staging / "index.html").write_text(to_html(TITLE, blocks))
        os.chmod(staging, 0o755)  # mkdtemp creates the folder with mode 0700
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"folder": out, "markdown": out / "report.md", "html": out / "index.html"}
