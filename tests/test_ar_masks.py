"""Training masks of the ar paradigm, and its loss against brute force and the exact order average."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from genladder.config import BackboneConfig, OrderFamily, VariantConfig
from genladder.models import build_model
from genladder.orders import group_pixels, groups, known_mask
from genladder.paradigms.ar import ARModel, order_options

SIDE = 8
FIXED = [(OrderFamily.raster, 1), (OrderFamily.raster, 4), (OrderFamily.raster, 16),
         (OrderFamily.patch, 2), (OrderFamily.patch, 4), (OrderFamily.spread, 2), (OrderFamily.spread, 4)]


def ar_model(side=SIDE, channels=1, levels=16, width=8, **variant) -> ARModel:
    variant = {"paradigm": "ar", "group_sizes": [1, 4, 16], "patch_sizes": [2, 4], **variant}
    data = {"channels": channels, "image_size": side, "levels": levels, "num_classes": 10}
    backbone = BackboneConfig(width=width, channel_mult=[1, 2], num_res_blocks=1)
    return build_model(VariantConfig(**variant), backbone, data, seed=0)


def randomize_output_layer(model: ARModel) -> None:
    with torch.no_grad():
        for param in model.parameters():
            if torch.count_nonzero(param) == 0:
                param.normal_(0.0, 0.2)


@pytest.mark.parametrize("family,size", FIXED)
def test_fixed_order_masks_match_known_mask(family, size):
    model = ar_model()
    draws = model.draw(200, torch.Generator().manual_seed(0), options=[(family, size)])
    order = groups(family, size, SIDE, SIDE)
    steps = order.shape[0]
    for known, step in zip(draws["known"], draws["step"].tolist(), strict=True):
        assert 0 <= step < steps
        assert torch.equal(known[0], known_mask(order, step, SIDE, SIDE))
    if steps <= 16:
        assert set(draws["step"].tolist()) == set(range(steps))


@pytest.mark.parametrize("size", [1, 4, 16])
def test_random_order_masks(size):
    model = ar_model()
    draws = model.draw(2000, torch.Generator().manual_seed(1), options=[(OrderFamily.random, size)])
    known, step = draws["known"], draws["step"]
    assert torch.equal(known.sum(dim=(1, 2, 3)), step * size)
    # Every pixel is equally likely to be known: its rate is close to E[s * size] / D.
    rate = known.float().mean(dim=0)[0]
    expected = (step.float() * size).mean() / SIDE**2
    assert torch.all((rate - expected).abs() < 0.06)


def test_random_mask_replays_generator():
    model = ar_model()
    generator = torch.Generator().manual_seed(5)
    draws = model.draw(3, generator, options=[(OrderFamily.random, 4)])
    replay = torch.Generator().manual_seed(5)
    torch.randint(1, (3,), generator=replay)
    torch.rand(3, generator=replay, dtype=torch.float64)
    for i in range(3):
        order = groups(OrderFamily.random, 4, SIDE, SIDE, generator=replay)
        assert torch.equal(draws["known"][i, 0], known_mask(order, int(draws["step"][i]), SIDE, SIDE))


def test_steps_uniform_per_order():
    model = ar_model()
    draws = model.draw(8000, torch.Generator().manual_seed(2), options=[(OrderFamily.patch, 4)])
    counts = torch.bincount(draws["step"], minlength=4).float()
    assert counts.shape == (4,)
    assert torch.all((counts / 8000 - 0.25).abs() < 0.03)


def test_mixture_has_equal_weights():
    model = ar_model()
    assert model.options == [
        (OrderFamily.random, 1), (OrderFamily.random, 4), (OrderFamily.random, 16),
        (OrderFamily.raster, 1), (OrderFamily.raster, 4), (OrderFamily.raster, 16),
        (OrderFamily.patch, 2), (OrderFamily.patch, 4), (OrderFamily.spread, 2), (OrderFamily.spread, 4),
    ]
    draws = model.draw(10_000, torch.Generator().manual_seed(3))
    share = torch.bincount(draws["option"], minlength=10).float() / 10_000
    assert torch.all((share - 0.1).abs() < 0.02)


def test_mixture_draws_match_their_option():
    model = ar_model()
    draws = model.draw(300, torch.Generator().manual_seed(4))
    for known, option, step in zip(draws["known"], draws["option"].tolist(), draws["step"].tolist(), strict=True):
        family, size = model.options[option]
        assert known.sum() == step * group_pixels(family, size)
        if family is not OrderFamily.random:
            assert torch.equal(known[0], known_mask(groups(family, size, SIDE, SIDE), step, SIDE, SIDE))


def test_raster_only_variant():
    model = ar_model(orders=["raster"], group_sizes=[1])
    assert model.options == [(OrderFamily.raster, 1)]


def test_order_options_skip_repeats():
    options = order_options([OrderFamily.spread, OrderFamily.spread], [1], [2, 2])
    assert options == [(OrderFamily.spread, 2)]


def test_unknown_pixel_values_are_ignored():
    model = ar_model(channels=3)
    randomize_output_layer(model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(16, (2, 3, SIDE, SIDE), generator=generator, dtype=torch.uint8)
    known = torch.rand(2, 1, SIDE, SIDE, generator=generator) < 0.4
    other = torch.where(known, x, torch.randint_like(x, 16))
    labels = torch.tensor([1, 10])
    torch.testing.assert_close(model(x, known, labels), model(other, known, labels))


@torch.no_grad()
def test_loss_equals_brute_force():
    model = ar_model(side=4, channels=2, levels=5, group_sizes=[1], patch_sizes=[2])
    randomize_output_layer(model)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(5, (2, 2, 4, 4), generator=generator, dtype=torch.uint8)
    labels = torch.tensor([3, 10])
    known = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    known[0, 0, 0, :] = True  # first row known: 12 unknown pixels, 24 entries
    known[1, 0, 1:, 1:] = True  # 9 known: 7 unknown pixels, 14 entries
    loss = model.training_loss(images, labels, {"known": known})

    logits = model(images, known, labels)
    for b in range(2):
        total, count = 0.0, 0
        for c, h, w in itertools.product(range(2), range(4), range(4)):
            if known[b, 0, h, w]:
                continue
            log_probs = F.log_softmax(logits[b, c, :, h, w].double(), dim=0)
            total -= float(log_probs[int(images[b, c, h, w])])
            count += 1
        assert count == (24 if b == 0 else 14)
        assert math.isclose(float(loss[b]), total / count / math.log(2), rel_tol=1e-5)


@torch.no_grad()
def test_loss_averages_to_exact_order_likelihood():
    # On a 2x2 image the average over all 24 orders of the exact decoding NLL,
    # sum_s -log p(x_next | x_prefix), equals the average over orders and steps of the
    # weighted loss: the order-agnostic estimator is unbiased.
    model = ar_model(side=2, levels=3, orders=["random"], group_sizes=[1])
    randomize_output_layer(model)
    images = torch.tensor([[[[0, 2], [1, 1]]]], dtype=torch.uint8)
    labels = torch.tensor([4])
    pixels = 4
    exact, estimate = 0.0, 0.0
    permutations = list(itertools.permutations(range(pixels)))
    for permutation in permutations:
        order = torch.tensor(permutation).view(pixels, 1)
        for step in range(pixels):
            known = known_mask(order, step, 2, 2).view(1, 1, 2, 2)
            logits = model(images, known, labels)[0, 0]  # (L, 2, 2)
            row, col = divmod(permutation[step], 2)
            exact -= float(F.log_softmax(logits[:, row, col].double(), dim=0)[int(images[0, 0, row, col])])
            estimate += float(model.training_loss(images, labels, {"known": known})[0]) * math.log(2)
    exact_bpd = exact / len(permutations) / pixels / math.log(2)
    estimate_bpd = estimate / len(permutations) / pixels / math.log(2)
    assert math.isclose(exact_bpd, estimate_bpd, rel_tol=1e-5)


def test_validation_reports_nll_bound():
    model = ar_model()
    images = torch.randint(16, (4, 1, SIDE, SIDE), dtype=torch.uint8)
    figures = model.validation_losses(images, torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0))
    assert set(figures) == {"val_loss", "val_nll_bpd"}
    torch.testing.assert_close(figures["val_nll_bpd"], torch.full((4,), 4.0))
