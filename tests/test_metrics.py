"""Metrics: closed forms, golden cases and the bootstrap estimators behind every interval."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torchmetrics.image.fid import _compute_fid
from torchmetrics.image.kid import KernelInceptionDistance

from genladder.config import EvaluateConfig, EvaluatorConfig, OrderFamily, validate_params
from genladder.data import save_split
from genladder.evaluator import Evaluator, TrainResult, save_evaluator
from genladder.metrics.bootstrap import bootstrap_mean, percentile_interval, stratified_counts
from genladder.metrics.definitions import Estimate
from genladder.metrics.features import EvaluatorFeatures
from genladder.metrics.frechet import FeatureDistances, frechet_replicates, kid_replicates
from genladder.metrics.image_stats import duplicate_indicator, gradient_magnitude, nearest_distance, within_class_distance
from genladder.metrics.manifold import _sorted_neighbours, _weighted_radii, knn_radii, precision_recall
from genladder.metrics.nll import bits_per_dim, image_orders
from genladder.metrics.run import class_mean_images, evaluate_all, real_train_subset, sampler_family
from genladder.metrics.suite import MetricSuite
from genladder.orders import groups

REPO = Path(__file__).resolve().parents[1]


class IdentityFeatures(nn.Module):
    """Feature extractor for vectors: the 'images' are already features (B, F)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def digits_levels() -> tuple[torch.Tensor, torch.Tensor]:
    """Return sklearn's 8x8 digits as uint8 levels 0..16 (N, 1, 8, 8) and labels."""
    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.uint8)).unsqueeze(1)
    return images, torch.from_numpy(data.target).long()


def random_evaluator(levels: int = 17, width: int = 8) -> Evaluator:
    torch.manual_seed(0)
    return Evaluator(channels=1, num_classes=10, levels=levels, width=width).eval()


# ---------------------------------------------------------------------------
# Fréchet distance and KID
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mu_shift, sigma_a, sigma_b",
    [(0.0, 1.0, 1.0), (1.0, 1.0, 1.0), (0.5, 1.0, 2.0), (2.0, 0.5, 1.5)],
)
def test_frechet_matches_gaussian_closed_form(mu_shift, sigma_a, sigma_b):
    generator = torch.Generator().manual_seed(0)
    dims, n = 4, 40_000
    sa = torch.tensor([sigma_a, 2 * sigma_a, sigma_a, 0.5 * sigma_a], dtype=torch.float64)
    sb = torch.tensor([sigma_b, 2 * sigma_b, sigma_b, 0.5 * sigma_b], dtype=torch.float64)
    mean_b = torch.full((dims,), mu_shift, dtype=torch.float64)
    a = torch.randn(n, dims, generator=generator, dtype=torch.float64) * sa
    b = torch.randn(n, dims, generator=generator, dtype=torch.float64) * sb + mean_b
    # Diagonal covariances: d^2 = |mu_a - mu_b|^2 + sum (s_a - s_b)^2.
    expected = float(mean_b.square().sum() + (sa - sb).square().sum())

    fd, _ = FeatureDistances(IdentityFeatures(dims), a, kid_subsets=1, kid_subset_size=100)(b)

    assert fd == pytest.approx(expected, abs=0.05 + 0.02 * expected)


def test_frechet_of_identical_sets_is_zero():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(500, 6, generator=generator, dtype=torch.float64)
    fd, kid = FeatureDistances(IdentityFeatures(6), a)(a.clone())
    assert abs(fd) < 1e-6
    # The unbiased MMD^2 of a set against itself is negative: only the cross term keeps k(x, x).
    k = (a @ a.T / 6 + 1) ** 3
    diagonal, off_diagonal = k.diagonal().sum(), k.sum() - k.diagonal().sum()
    expected = 2 * off_diagonal / (500 * 499) - 2 * (off_diagonal + diagonal) / 500**2
    assert kid == pytest.approx(float(expected), rel=1e-9)


def test_frechet_replicates_match_torchmetrics():
    generator = torch.Generator().manual_seed(2)
    real = torch.randn(300, 8, generator=generator, dtype=torch.float64)
    fake = torch.randn(200, 8, generator=generator, dtype=torch.float64) @ torch.randn(8, 8, generator=generator, dtype=torch.float64) + 0.3
    fd, _ = FeatureDistances(IdentityFeatures(8), real, kid_subsets=1)(fake)

    full = frechet_replicates(real, fake, torch.ones(1, 200, dtype=torch.long))
    assert float(full[0]) == pytest.approx(fd, rel=1e-8)

    # One resample: the symmetric form equals torchmetrics' formula on the duplicated rows.
    counts = stratified_counts(torch.zeros(200, dtype=torch.long), 1, generator)
    expanded = fake.repeat_interleave(counts[0], dim=0)
    expected = _compute_fid(real.mean(0), torch.cov(real.T), expanded.mean(0), torch.cov(expanded.T))
    assert float(frechet_replicates(real, fake, counts)[0]) == pytest.approx(float(expected), rel=1e-8)


def test_kid_replicates_match_torchmetrics_full_set():
    generator = torch.Generator().manual_seed(3)
    real = torch.randn(120, 5, generator=generator, dtype=torch.float64)
    fake = torch.randn(120, 5, generator=generator, dtype=torch.float64) * 1.3 + 0.2
    metric = KernelInceptionDistance(feature=IdentityFeatures(5), subsets=1, subset_size=120)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected, _ = metric.compute()

    ours = kid_replicates(real, fake, torch.ones(1, 120, dtype=torch.long))

    assert float(ours[0]) == pytest.approx(float(expected), rel=1e-8)


def test_kid_replicates_skip_copy_pairs():
    generator = torch.Generator().manual_seed(4)
    real = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    fake = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    counts = torch.tensor([[2, 0, 1, 3, 0, 0]])
    expanded = fake.repeat_interleave(counts[0], dim=0)
    owner = torch.arange(6).repeat_interleave(counts[0])

    # Brute force: mean kernel over ordered pairs of rows with different original samples.
    k = (expanded @ expanded.T / 3 + 1) ** 3
    distinct = owner[:, None] != owner[None, :]
    fake_term = k[distinct].mean()
    k_rr = (real @ real.T / 3 + 1) ** 3
    real_term = (k_rr.sum() - k_rr.diagonal().sum()) / (50 * 49)
    cross = ((real @ expanded.T / 3 + 1) ** 3).mean()
    expected = real_term + fake_term - 2 * cross

    assert float(kid_replicates(real, fake, counts)[0]) == pytest.approx(float(expected), rel=1e-10)


def test_real_floor_below_shuffled_pixels():
    images, labels = digits_levels()
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)
    half_a, half_b = order[: len(order) // 2], order[len(order) // 2 :]
    shuffled = images[half_b].flatten(1)
    shuffled = torch.stack([row[torch.randperm(64, generator=generator)] for row in shuffled]).view(-1, 1, 8, 8)

    distances = FeatureDistances(EvaluatorFeatures(random_evaluator()), images[half_a], kid_subsets=5)
    real_fd, real_kid = distances(images[half_b])
    shuffled_fd, shuffled_kid = distances(shuffled)

    assert real_fd < shuffled_fd
    assert real_kid < shuffled_kid
    assert real_fd < 0.2 * shuffled_fd


def test_evaluator_features_stay_in_eval_mode():
    features = EvaluatorFeatures(random_evaluator())
    metric_holder = nn.ModuleList([features])
    metric_holder.train()
    assert not features.evaluator.training
    out = features(torch.zeros(3, 1, 8, 8, dtype=torch.uint8))
    assert out.shape == (3, features.num_features)
    assert out.dtype == torch.float64


# ---------------------------------------------------------------------------
# Precision and recall
# ---------------------------------------------------------------------------


def test_precision_recall_identical_sets_are_one():
    generator = torch.Generator().manual_seed(5)
    points = torch.randn(200, 4, generator=generator)
    counts = stratified_counts(torch.zeros(200, dtype=torch.long), 20, generator)
    precision, recall = precision_recall(points, points.clone(), 3, counts)
    assert precision.value == 1.0
    assert recall.value == 1.0
    assert precision.low == 1.0


def test_precision_recall_far_sets_are_zero():
    generator = torch.Generator().manual_seed(6)
    real = torch.randn(100, 4, generator=generator)
    fake = torch.randn(100, 4, generator=generator) + 100.0
    counts = stratified_counts(torch.zeros(100, dtype=torch.long), 20, generator)
    precision, recall = precision_recall(real, fake, 3, counts)
    assert precision.value == 0.0
    assert recall.value == 0.0
    assert precision.high == 0.0
    assert recall.high == 0.0


def test_precision_recall_golden_one_dimension():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [10.0]])
    # k = 1: every real radius is 1, so only 0.5 is inside; both fake radii are 9.5, covering every real point.
    precision, recall = precision_recall(real, fake, 1, torch.zeros(0, 2, dtype=torch.long))
    assert precision.value == 0.5
    assert recall.value == 1.0
    assert knn_radii(real, 1).tolist() == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_weighted_radii_match_expanded_set(k):
    generator = torch.Generator().manual_seed(k)
    points = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    counts = stratified_counts(torch.zeros(40, dtype=torch.long), 5, generator)
    values, index = _sorted_neighbours(points)
    for row in counts:
        radii = _weighted_radii(values, index, row, k, window=4)  # a small window exercises the fallback
        distances = torch.cdist(points, points)
        for a in range(40):
            others = torch.cat([distances[a, b].repeat(int(row[b])) for b in range(40) if b != a])
            assert float(radii[a]) == pytest.approx(float(others.sort().values[k - 1]))


# ---------------------------------------------------------------------------
# Per-sample statistics
# ---------------------------------------------------------------------------


def test_duplicates_and_diversity_of_identical_samples():
    image = torch.randint(0, 16, (1, 1, 6, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images = image.repeat(30, 1, 1, 1)
    labels = torch.zeros(30, dtype=torch.long)
    features = torch.randn(1, 5).repeat(30, 1)

    assert duplicate_indicator(images, labels).all()
    distance = within_class_distance(features, labels, torch.ones(1, 30, dtype=torch.long))
    assert float(distance[0][0]) == 0.0


def test_duplicates_count_only_within_a_label():
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    images[3] = 1
    labels = torch.tensor([0, 1, 1, 1])
    # Image 0 has no twin with label 0; images 1 and 2 are twins; image 3 differs.
    assert duplicate_indicator(images, labels).tolist() == [False, True, True, False]


def test_within_class_distance_skips_copy_pairs():
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    counts = torch.tensor([[2, 0, 1, 1, 0, 3, 1, 0]])
    out = within_class_distance(features, labels, counts)
    for cls in (0, 1):
        members = torch.nonzero(labels == cls).flatten()
        owner = members.repeat_interleave(counts[0, members])
        rows = features[owner]
        d = torch.cdist(rows, rows)
        distinct = owner[:, None] != owner[None, :]
        assert float(out[cls][0]) == pytest.approx(float(d[distinct].mean()))


def test_gradient_magnitude_closed_forms():
    levels = 5
    ramp = torch.arange(5, dtype=torch.uint8).repeat(5, 1).view(1, 1, 5, 5)  # columns 0..4
    flat = torch.full((1, 1, 5, 5), 3, dtype=torch.uint8)
    values = gradient_magnitude(torch.cat([ramp, flat]), levels)
    assert values.tolist() == pytest.approx([0.25, 0.0])
    # Levels i + j on 9 levels: both differences are 1/8 everywhere, so the magnitude is sqrt(2) / 8.
    diagonal = (torch.arange(5).view(5, 1) + torch.arange(5).view(1, 5)).to(torch.uint8).view(1, 1, 5, 5)
    assert float(gradient_magnitude(diagonal, 9)[0]) == pytest.approx(math.sqrt(2) / 8)


def test_nearest_distance_excludes_own_copy():
    reference = torch.tensor([[[[0, 0]]], [[[3, 0]]], [[[3, 3]]]], dtype=torch.uint8)
    queries = reference[:2].clone()
    plain = nearest_distance(queries, reference, levels=4)
    excluded = nearest_distance(queries, reference, levels=4, exclude_index=torch.tensor([0, 1]))
    assert plain.tolist() == [0.0, 0.0]
    assert excluded.tolist() == pytest.approx([1.0, 1.0])


# ---------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------


def test_stratified_counts_keep_class_sizes():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 7)
    counts = stratified_counts(labels, 50, torch.Generator().manual_seed(0))
    for cls, size in ((0, 5), (1, 3), (2, 7)):
        assert (counts[:, labels == cls].sum(1) == size).all()


def test_intervals_of_constant_and_mean():
    constant = bootstrap_mean(torch.full((20,), 0.5), stratified_counts(torch.zeros(20, dtype=torch.long), 30, torch.Generator()))
    assert (constant.value, constant.low, constant.high) == (0.5, 0.5, 0.5)
    centered = percentile_interval(1.0, torch.tensor([2.0, 2.5, 3.0, 3.5]), centered=True)
    assert centered.low <= 1.0 <= centered.high
    clipped = percentile_interval(0.1, torch.tensor([-1.0, 0.0, 0.2]), lower=0.0)
    assert clipped.low == 0.0


def test_estimate_json_round_trip_maps_nan_to_none():
    data = Estimate(1.5, math.nan, 2.0).to_dict()
    assert data == {"value": 1.5, "low": None, "high": 2.0}
    back = Estimate.from_dict(data)
    assert back.value == 1.5
    assert math.isnan(back.low)


# ---------------------------------------------------------------------------
# NLL
# ---------------------------------------------------------------------------


class CountingAR(nn.Module):
    """ARModel stand-in: logit `beta` on level (number of known pixels mod L), 0 on the others."""

    def __init__(self, levels: int, beta: float):
        super().__init__()
        self.levels = levels
        self.beta = beta
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, x, known, y):
        batch, channels, height, width = x.shape
        count = known.flatten(1).sum(1) % self.levels  # (B,)
        logits = torch.zeros(batch, channels, self.levels, height, width)
        logits[torch.arange(batch), :, count] = self.beta
        return logits


def _bits_hit(levels: int, beta: float) -> float:
    return -math.log2(math.exp(beta) / (math.exp(beta) + levels - 1))


def _bits_miss(levels: int, beta: float) -> float:
    return -math.log2(1.0 / (math.exp(beta) + levels - 1))


@pytest.mark.parametrize(
    "family, size",
    [
        (OrderFamily.raster, 1), (OrderFamily.raster, 2), (OrderFamily.raster, 4),
        (OrderFamily.random, 1), (OrderFamily.random, 4),
        (OrderFamily.patch, 2), (OrderFamily.spread, 2),
    ],
)
def test_nll_closed_form_all_hits(family, size):
    levels, beta, side, count = 4, 2.0, 4, 6
    orders = image_orders(family, size, count, side, side, torch.Generator().manual_seed(0))
    group = orders.shape[2]
    # Pixel p of image b contains (known pixels when p is generated) mod L = (G * step) mod L.
    rank = torch.empty(count, side * side, dtype=torch.long)
    steps = torch.arange(orders.shape[1]).repeat_interleave(group).expand(count, -1)
    rank.scatter_(1, orders.reshape(count, -1), steps)
    images = ((group * rank) % levels).view(count, 1, side, side).to(torch.uint8)
    labels = torch.zeros(count, dtype=torch.long)

    bpd = bits_per_dim(CountingAR(levels, beta), images, labels, orders, batch_size=4)

    assert bpd.tolist() == pytest.approx([_bits_hit(levels, beta)] * count, rel=1e-9)


def test_nll_of_blank_images_in_raster_order():
    levels, beta, side = 4, 1.5, 4
    images = torch.zeros(3, 2, side, side, dtype=torch.uint8)  # two channels, one step per pixel
    orders = image_orders(OrderFamily.raster, 1, 3, side, side, torch.Generator())
    bpd = bits_per_dim(CountingAR(levels, beta), images, torch.zeros(3, dtype=torch.long), orders)
    # Level 0 is predicted at steps 0, 4, 8, 12: one step in four.
    expected = (_bits_hit(levels, beta) + 3 * _bits_miss(levels, beta)) / 4
    assert bpd.tolist() == pytest.approx([expected] * 3, rel=1e-9)


def test_random_orders_seeded_per_image():
    a = image_orders(OrderFamily.random, 1, 3, 4, 4, torch.Generator().manual_seed(9))
    b = image_orders(OrderFamily.random, 1, 3, 4, 4, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    raster = image_orders(OrderFamily.raster, 1, 2, 4, 4, torch.Generator())
    assert torch.equal(raster[0], groups(OrderFamily.raster, 1, 4, 4))


# ---------------------------------------------------------------------------
# Suite and stage helpers
# ---------------------------------------------------------------------------


def test_suite_on_copies_of_one_training_image():
    images, labels = digits_levels()
    train = (images[:1000], labels[:1000])
    test = (images[1000:1400], labels[1000:1400])
    suite = MetricSuite(random_evaluator(), train, test, 17, EvaluateConfig(bootstrap=20, knn_k=3))
    copies = images[:1].repeat(40, 1, 1, 1)
    requested = labels[:1].repeat(40)

    metrics = suite.score(copies, requested, torch.Generator().manual_seed(0))

    assert metrics["diversity"].value == 0.0
    assert metrics["duplicate_share"].value == 1.0
    assert metrics["memorization"].value == 1.0
    assert metrics["recall"].value < 0.05
    assert set(metrics) == {
        "frechet_distance", "kid", "precision", "recall", "class_consistency",
        "diversity", "duplicate_share", "sharpness", "memorization",
    }


def test_suite_real_images_score_near_the_floor():
    images, labels = digits_levels()
    train = (images[:1000], labels[:1000])
    test = (images[1000:1400], labels[1000:1400])
    suite = MetricSuite(random_evaluator(), train, test, 17, EvaluateConfig(bootstrap=20, knn_k=3))
    held_out = images[1400:1797]

    metrics = suite.score(held_out, labels[1400:1797], torch.Generator().manual_seed(0))

    assert metrics["duplicate_share"].value == 0.0
    assert 0.8 < metrics["diversity"].value < 1.25
    assert 0.85 < metrics["sharpness"].value < 1.15
    assert metrics["memorization"].value < 0.2
    assert metrics["frechet_distance"].low <= metrics["frechet_distance"].value <= metrics["frechet_distance"].high


def test_class_means_and_real_subset():
    images, labels = digits_levels()
    means, mean_labels = class_mean_images(images, labels, 17, per_class=3)
    assert means.shape == (30, 1, 8, 8)
    assert (mean_labels.bincount() == 3).all()
    expected = images[labels == 4].double().mean(0).round().to(torch.uint8)
    assert torch.equal(means[mean_labels == 4][0], expected)
    subset = real_train_subset(labels, 5, torch.Generator().manual_seed(0))
    assert (labels[subset].bincount() == 5).all()


@pytest.mark.parametrize(
    "settings, family",
    [
        ({"method": "regression"}, "regression"),
        ({"method": "ar", "order": "patch", "group": 2, "greedy": False, "temperature": 1.0}, "ar patch"),
        ({"method": "ar", "order": "raster", "group": 1, "greedy": True, "temperature": None}, "ar raster greedy"),
        ({"method": "ar", "order": "random", "group": 4, "greedy": False, "temperature": 0.8}, "ar random T=0.8"),
        ({"method": "ddim", "steps": 10, "eta": 0.0, "guidance": 0.0}, "ddim"),
        ({"method": "ddim", "steps": 10, "eta": 1.0, "guidance": 2.0}, "ddim eta=1 w=2"),
        ({"method": "ddpm", "steps": None, "guidance": 0.0}, "ddpm"),
    ],
)
def test_sampler_family_names(settings, family):
    assert sampler_family(settings) == family


def write_digits_workspace(root: Path) -> dict:
    """Write digits as prepared data and an untrained evaluator under `root`, and return the meta dict."""
    images, labels = digits_levels()
    prepared = root / "data" / "prepared"
    for split, rows in (("train", slice(0, 1000)), ("val", slice(1000, 1200)), ("test", slice(1200, 1797))):
        save_split(prepared / f"{split}.npz", images[rows].numpy(), labels[rows].numpy())
    meta = {"source": "digits", "image_size": 8, "channels": 1, "levels": 17, "num_classes": 10, "class_names": list("0123456789")}
    (prepared / "meta.json").write_text(json.dumps(meta))
    result = TrainResult(model=random_evaluator(), metrics={})
    save_evaluator(root / "models" / "evaluator" / "model.pt", result, EvaluatorConfig(width=8), meta)
    return meta


def test_sampler_intervals_ignore_other_samplers(tmp_path):
    write_digits_workspace(tmp_path)
    images, labels = digits_levels()
    for name, rows in (("first", slice(1200, 1400)), ("second", slice(1400, 1600))):
        save_split(tmp_path / "samples" / name / "samples.npz", images[rows].numpy(), labels[rows].numpy())
        (tmp_path / "samples" / name / "info.json").write_text(json.dumps({"nfe": 1}))
    base = {
        "data": {"source": "digits", "image_size": 8, "levels": 17},
        "variants": {"diffusion": {"paradigm": "diffusion", "timesteps": 100}},
        "evaluate": {"bootstrap": 30},
    }

    def scores(samplers: list[str]) -> dict:
        spec = {name: {"variant": "diffusion", "method": "ddim", "steps": 10, "eta": 0.0} for name in samplers}
        params = validate_params({**base, "samplers": spec})
        return evaluate_all(params, tmp_path, torch.device("cpu")).samplers["first"]["metrics"]

    assert scores(["first"]) == scores(["second", "first"])


def test_evaluate_stage_names_missing_sampler(tmp_path, monkeypatch, caplog):
    write_digits_workspace(tmp_path)
    params = (
        "data: {source: digits, image_size: 8, levels: 17}\n"
        "variants: {ar: {paradigm: ar, group_sizes: [1], patch_sizes: [2]}}\n"
        "samplers: {raster_t1: {variant: ar, method: ar}}\n"
        "tracking: {enabled: false}\n"
    )
    (tmp_path / "params.yaml").write_text(params)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))

    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "stages" / "evaluate.py"), run_name="__main__")

    assert exit_info.value.code == 2
    assert "raster_t1" in caplog.text
    assert "dvc repro sample@raster_t1" in caplog.text
