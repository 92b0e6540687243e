"""Evaluate every sampler of params.yaml, the reference rows and the ar model's NLL.

Outputs (all under the repository root):

- ``metrics/samplers/SAMPLER.json``: every metric of one sampler with its 95% interval,
  its settings, NFE and seconds per image;
- ``metrics/reference/{real_train,class_means}.json``: the same metrics for real training
  images (the floor) and for the per-class mean images (what regression to the mean gives);
- ``metrics/nll.json``: bits per dimension of each ar variant under raster and random orders;
- ``metrics/summary.json``: the key figures of every row without intervals, plus the real-data
  context (evaluator accuracy, memorization threshold, parameter counts), for ``dvc metrics show``;
- ``plots/quality_vs_nfe.tsv`` (sampler, family, nfe, frechet_distance, precision) and
  ``plots/quality_vs_nfe.png``.

Per-sampler and reference files live in subfolders, so a sampler may take any name.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genladder.config import OrderFamily, Paradigm, Params, SamplerConfig, SamplerMethod
from genladder.data import load_split
from genladder.evaluator import load_evaluator
from genladder.metrics.bootstrap import bootstrap_mean, row_generator, stratified_counts
from genladder.metrics.definitions import METRICS, Estimate
from genladder.metrics.nll import bits_per_dim, image_orders
from genladder.metrics.suite import MetricSuite
from genladder.runtime import DataError, write_json, write_text

log = logging.getLogger(__name__)

REAL_TRAIN = "real_train"
CLASS_MEANS = "class_means"
NLL_ORDERS = (OrderFamily.raster, OrderFamily.random)
SUMMARY_METRICS = ("frechet_distance", "precision", "recall", "class_consistency", "diversity", "duplicate_share")
TSV_COLUMNS = ("sampler", "family", "nfe", "frechet_distance", "precision")


@dataclass
class Results:
    """Everything the evaluate stage writes, as plain data."""

    samplers: dict[str, dict[str, Any]] = field(default_factory=dict)
    references: dict[str, dict[str, Any]] = field(default_factory=dict)
    nll: dict[str, dict[str, Any]] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def sampler_settings(sampler: SamplerConfig) -> dict[str, Any]:
    """Return the settings that define a sampler's method, without the fields its method ignores."""
    settings: dict[str, Any] = {"variant": sampler.variant, "method": sampler.method.value}
    if sampler.method is SamplerMethod.ar:
        settings.update(
            order=sampler.order.value, group=sampler.group, greedy=sampler.greedy,
            temperature=None if sampler.greedy else sampler.temperature,
        )
    elif sampler.method in (SamplerMethod.ddpm, SamplerMethod.ddim):
        settings.update(steps=sampler.steps, guidance=sampler.guidance)
        if sampler.method is SamplerMethod.ddim:
            settings["eta"] = sampler.eta
        else:
            settings["variance"] = sampler.variance
    return settings


def sampler_family(settings: dict[str, Any]) -> str:
    """Name the series a sampler belongs to in quality-vs-NFE plots, e.g. "ar patch" or "ddim"."""
    method = settings["method"]
    if method == SamplerMethod.ar.value:
        family = f"ar {settings['order']}"
        if settings.get("greedy"):
            return family + " greedy"
        temperature = settings.get("temperature")
        return family if temperature in (None, 1.0) else f"{family} T={temperature:g}"
    if method in (SamplerMethod.ddpm.value, SamplerMethod.ddim.value):
        family = method
        if method == SamplerMethod.ddim.value and settings.get("eta"):
            family += f" eta={settings['eta']:g}"
        if settings.get("guidance"):
            family += f" w={settings['guidance']:g}"
        return family
    return method


def load_samples(root: Path, name: str, meta: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Load samples/NAME/samples.npz and info.json; raises DataError naming the sampler and the command."""
    folder = root / "samples" / name
    hint = f"run `dvc repro sample@{name}`"
    npz, info_path = folder / "samples.npz", folder / "info.json"
    if not npz.is_file() or not info_path.is_file():
        missing = npz if not npz.is_file() else info_path
        raise DataError(f"samples of sampler {name!r} not found: {missing}; {hint}")
    try:
        with np.load(npz) as arrays:
            images, labels = torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]).long()
        info = json.loads(info_path.read_text())
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read the samples of sampler {name!r} in {folder} ({exc}); {hint} -f") from None

    expected = (int(meta["channels"]), int(meta["image_size"]), int(meta["image_size"]))
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise DataError(
            f"samples of sampler {name!r} have dtype {images.dtype} and shape {tuple(images.shape)}, but the "
            f"prepared data is uint8 (N, {', '.join(map(str, expected))}); {hint} -f"
        )
    if len(labels) != len(images) or (len(images) and int(images.max()) >= int(meta["levels"])):
        raise DataError(f"samples of sampler {name!r} do not match {meta['levels']} levels and their labels; {hint} -f")
    return images, labels, info


def real_train_subset(labels: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Return indices of up to per_class training images of every class, drawn without replacement."""
    chosen = []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def class_mean_images(
    images: torch.Tensor, labels: torch.Tensor, levels: int, per_class: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return per_class copies of each class's mean training image, rounded to the nearest level."""
    out_images, out_labels = [], []
    for cls in torch.unique(labels):
        mean = images[labels == cls].double().mean(0).round().clamp(0, levels - 1).to(torch.uint8)
        out_images.append(mean.unsqueeze(0).expand(per_class, *mean.shape))
        out_labels.append(torch.full((per_class,), int(cls), dtype=torch.long))
    return torch.cat(out_images), torch.cat(out_labels)


def nll_variants(params: Params) -> list[str]:
    """Return the ar variants that at least one sampler decodes with, in params order."""
    used = {s.variant for s in params.samplers.values()}
    return [name for name, v in params.variants.items() if v.paradigm is Paradigm.ar and name in used]


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def _row(name: str, kind: str, metrics: dict[str, Estimate], **extra: Any) -> dict[str, Any]:
    row = {"name": name, "kind": kind, **extra}
    row["metrics"] = {key: metrics[key].to_dict() for key in METRICS}
    return row


def _check_evaluator_data(checkpoint: dict[str, Any], meta: dict[str, Any]) -> None:
    trained_on = checkpoint.get("data", {})
    for key in ("image_size", "channels", "levels", "num_classes"):
        if trained_on.get(key) != meta.get(key):
            raise DataError(
                f"the evaluator was trained on data with {key}={trained_on.get(key)}, but the prepared data has "
                f"{key}={meta.get(key)}; run `dvc repro train_evaluator`"
            )


def evaluate_all(params: Params, root: Path, device: torch.device) -> Results:
    """Score every sampler of params.yaml, the two reference rows and the ar NLL; write nothing."""
    cfg = params.evaluate
    train_images, train_labels, meta = load_split("train", root)
    test_images, test_labels, _ = load_split("test", root)
    levels = int(meta["levels"])
    evaluator, checkpoint = load_evaluator(root / "models" / "evaluator" / "model.pt", device)
    _check_evaluator_data(checkpoint, meta)

    # 1. Read every sampler's output first, so a missing one fails before any work.
    samples = {name: load_samples(root, name, meta) for name in params.samplers}
    variants = nll_variants(params)
    for variant in variants:
        path = root / "models" / variant / "model.pt"
        if not path.is_file():
            raise DataError(f"trained model not found: {path}; run `dvc repro train@{variant}`")

    results = Results()
    suite = MetricSuite(evaluator, (train_images, train_labels), (test_images, test_labels), levels, cfg, device)
    # 2. Samplers.
    for name, (images, labels, info) in samples.items():
        t0 = time.perf_counter()
        settings = sampler_settings(params.samplers[name])
        metrics = suite.score(images, labels, row_generator(cfg.seed, name))
        results.samplers[name] = _row(
            name, "sampler", metrics,
            family=sampler_family(settings),
            settings=settings,
            num_samples=len(images),
            nfe=info.get("nfe"),
            seconds_per_image=info.get("seconds_per_image"),
            images_per_second=info.get("images_per_second"),
        )
        log.info(
            "%s: Fréchet distance %.3f [%.3f, %.3f], precision %.3f, recall %.3f (%.1f s)",
            name, metrics["frechet_distance"].value, metrics["frechet_distance"].low,
            metrics["frechet_distance"].high, metrics["precision"].value, metrics["recall"].value,
            time.perf_counter() - t0,
        )

    # 3. Reference rows, with as many images per class as a sampler draws.
    per_class = params.sampling.per_class
    generator = row_generator(cfg.seed, REAL_TRAIN)
    subset = real_train_subset(train_labels, per_class, generator)
    metrics = suite.score(train_images[subset], train_labels[subset], generator, exclude_train_index=subset)
    results.references[REAL_TRAIN] = _row(
        REAL_TRAIN, "reference", metrics, family="real", settings={"source": "training images"},
        num_samples=len(subset), nfe=None, seconds_per_image=None, images_per_second=None,
    )
    mean_images, mean_labels = class_mean_images(train_images, train_labels, levels, per_class)
    metrics = suite.score(mean_images, mean_labels, row_generator(cfg.seed, CLASS_MEANS))
    results.references[CLASS_MEANS] = _row(
        CLASS_MEANS, "reference", metrics, family="class means", settings={"source": "per-class mean of training images"},
        num_samples=len(mean_images), nfe=None, seconds_per_image=None, images_per_second=None,
    )

    # 4. Exact NLL of each ar variant on a seeded subset of the test split.
    if variants:
        results.nll = nll_results(
            variants, root, test_images, test_labels, cfg.nll_images, cfg.seed, cfg.bootstrap, device
        )

    results.context = {
        **suite.reference_values(),
        "test_images": len(test_images),
        "train_images": len(train_images),
        "bootstrap": cfg.bootstrap,
        "knn_k": cfg.knn_k,
        "param_count": _param_counts(params, root),
    }
    return results


def nll_results(
    variants: list[str],
    root: Path,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    count: int,
    seed: int,
    resamples: int,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """Return bits per dimension with intervals per ar variant and order (one pixel per step)."""
    from genladder.models import load_model  # noqa: PLC0415 - only needed when an ar variant is sampled

    picked = torch.randperm(len(test_images), generator=torch.Generator().manual_seed(seed))[:count]
    images, labels = test_images[picked], test_labels[picked]
    height, width = images.shape[2:]
    out: dict[str, dict[str, Any]] = {}
    for variant in variants:
        model, _ = load_model(root / "models" / variant / "model.pt", device)
        row: dict[str, Any] = {"images": len(images), "pixels_per_step": 1}
        for family in NLL_ORDERS:
            orders = image_orders(family, 1, len(images), height, width, torch.Generator().manual_seed(seed))
            bpd = bits_per_dim(model, images, labels, orders, desc=f"nll {variant} {family.value}")
            labels_all_one_class = torch.zeros(len(bpd), dtype=torch.long)
            generator = row_generator(seed, f"nll:{variant}:{family.value}")
            estimate = bootstrap_mean(bpd, stratified_counts(labels_all_one_class, resamples, generator))
            row[family.value] = estimate.to_dict()
            log.info("NLL of %s, %s order: %.4f bits/dim [%.4f, %.4f]", variant, family.value, *_triple(estimate))
        out[variant] = row
    return out


def _triple(estimate: Estimate) -> tuple[float, float, float]:
    return estimate.value, estimate.low, estimate.high


def _param_counts(params: Params, root: Path) -> dict[str, int]:
    """Return each variant's parameter count from models/VARIANT/metrics.json, where present."""
    counts = {}
    for variant in params.variants:
        path = root / "models" / variant / "metrics.json"
        try:
            counts[variant] = int(json.loads(path.read_text())["param_count"])
        except (OSError, KeyError, ValueError, TypeError):
            log.warning("no param_count in %s; the report omits variant %s from the parameter table", path, variant)
    return counts


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


def summary(results: Results) -> dict[str, Any]:
    """Return the compact table of key figures: one value per metric and row, no intervals."""

    def compact(row: dict[str, Any]) -> dict[str, Any]:
        out = {key: row["metrics"][key]["value"] for key in SUMMARY_METRICS}
        out["nfe"] = row.get("nfe")
        return out

    data: dict[str, Any] = {
        "samplers": {name: compact(row) for name, row in results.samplers.items()},
        "reference": {name: compact(row) for name, row in results.references.items()},
        "context": results.context,
    }
    if results.nll:
        data["nll_bits_per_dim"] = {
            variant: {family.value: row[family.value]["value"] for family in NLL_ORDERS} for variant, row in results.nll.items()
        }
    return data


def quality_rows(results: Results) -> list[dict[str, Any]]:
    """Return one row per sampler with an NFE, sorted by family then NFE, for the quality-vs-NFE plot."""
    rows = []
    for name, row in results.samplers.items():
        if row.get("nfe") is None:
            continue
        fd, precision = row["metrics"]["frechet_distance"], row["metrics"]["precision"]
        rows.append(
            {
                "sampler": name, "family": row["family"], "nfe": int(row["nfe"]),
                "frechet_distance": fd["value"], "frechet_distance_low": fd["low"], "frechet_distance_high": fd["high"],
                "precision": precision["value"], "precision_low": precision["low"], "precision_high": precision["high"],
            }
        )
    return sorted(rows, key=lambda r: (r["family"], r["nfe"], r["sampler"]))


def _tsv_value(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_outputs(results: Results, root: Path) -> dict[str, Path]:
    """Write every metrics file and the TSV series atomically; return the paths by role."""
    metrics_dir, plots_dir = root / "metrics", root / "plots"
    for sub, rows in (("samplers", results.samplers), ("reference", results.references)):
        folder = metrics_dir / sub
        for name, row in rows.items():
            write_json(folder / f"{name}.json", row)
        # Files of samplers removed from params.yaml would otherwise linger when run outside DVC.
        for stale in folder.glob("*.json"):
            if stale.stem not in rows:
                stale.unlink()
    write_json(metrics_dir / "nll.json", results.nll)
    write_json(metrics_dir / "summary.json", summary(results))

    lines = ["\t".join(TSV_COLUMNS)]
    lines += ["\t".join(_tsv_value(row[c]) for c in TSV_COLUMNS) for row in quality_rows(results)]
    write_text(plots_dir / "quality_vs_nfe.tsv", "\n".join(lines) + "\n")
    return {"metrics": metrics_dir, "tsv": plots_dir / "quality_vs_nfe.tsv", "png": plots_dir / "quality_vs_nfe.png"}
