"""Autoregressive decoding: orders, known masks, greedy and temperature sampling, on fixture models."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from genladder.config import OrderFamily, ParamsError, validate_params
from genladder.orders import known_mask
from genladder.sampling.ar import decode, draw_levels, image_orders

REPO = Path(__file__).resolve().parents[1]
LEVELS = 8
SIDE = 8
CLASSES = 3
MARGIN = 1000.0  # logit gap far above the largest Gumbel noise (about 17 in float32)

ORDERS = [
    (OrderFamily.raster, 1),
    (OrderFamily.raster, 4),
    (OrderFamily.patch, 2),
    (OrderFamily.patch, 4),
    (OrderFamily.spread, 2),
    (OrderFamily.spread, 4),
    (OrderFamily.random, 1),
    (OrderFamily.random, 4),
    (OrderFamily.random, 16),
]
ORDER_IDS = [f"{family.value}{group}" for family, group in ORDERS]
MODES = [(True, 1.0), (False, 0.5), (False, 1.0), (False, 3.0)]  # (greedy, temperature)
MODE_IDS = ["greedy", "t0.5", "t1", "t3"]


class TargetModel(nn.Module):
    """An ARModel whose logits select one fixed image per class.

    Unknown pixels get all probability on the target level. Known pixels get it on a wrong
    level, so a decoder that redraws a fixed pixel produces a wrong image. Every call checks
    that the known pixels hold their targets and stores the known mask.
    """

    def __init__(self, targets: torch.Tensor):
        super().__init__()
        self.levels = LEVELS
        self.register_buffer("targets", targets)  # long (classes + 1, C, H, W)
        self.masks: list[torch.Tensor] = []

    def forward(self, x, known, y):
        target = self.targets[y]
        fixed = known.expand_as(target)
        assert known.dtype == torch.bool
        assert known.shape[1] == 1
        assert torch.equal(x[fixed], target[fixed]), "a known pixel does not hold the value fixed for it"
        self.masks.append(known[:, 0].clone())
        peak = torch.where(fixed, (target + 1) % LEVELS, target)
        logits = torch.full((*target.shape[:2], LEVELS, *target.shape[2:]), -MARGIN)
        return logits.scatter_(2, peak.unsqueeze(2), 0.0)


class CoupledModel(nn.Module):
    """An ARModel with smooth logits that depend on the class, the position and the known values."""

    def __init__(self, channels: int = 1, seed: int = 0):
        super().__init__()
        self.levels = LEVELS
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("base", torch.randn(CLASSES + 1, channels, LEVELS, SIDE, SIDE, generator=generator))
        self.register_buffer("slope", torch.linspace(-1.0, 1.0, LEVELS).view(1, 1, LEVELS, 1, 1))

    def forward(self, x, known, y):
        mask = known.float()
        mean_known = (x.float() * mask).sum((2, 3)) / mask.sum((2, 3)).clamp(min=1.0)  # (B, C)
        return self.base[y] + 0.5 * mean_known[:, :, None, None, None] * self.slope


def random_targets(channels: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, LEVELS, (CLASSES + 1, channels, SIDE, SIDE), generator=generator)


def class_labels(per_class: int) -> torch.Tensor:
    return torch.arange(CLASSES).repeat_interleave(per_class)


def run_decode(model, labels, family, group, greedy=False, temperature=1.0, seed=0, channels=1):
    return decode(
        model,
        labels,
        height=SIDE,
        width=SIDE,
        channels=channels,
        family=family,
        group=group,
        greedy=greedy,
        temperature=temperature,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("greedy, temperature", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("family, group", ORDERS, ids=ORDER_IDS)
def test_target_image_reproduced_by_every_order(family, group, greedy, temperature):
    targets = random_targets(channels=1)
    model = TargetModel(targets)
    labels = class_labels(per_class=2)

    images = run_decode(model, labels, family, group, greedy, temperature)

    assert images.dtype == torch.uint8
    assert images.shape == (len(labels), 1, SIDE, SIDE)
    assert torch.equal(images.long(), targets[labels])


@pytest.mark.parametrize("family, group", [(OrderFamily.raster, 2), (OrderFamily.spread, 2), (OrderFamily.random, 8)])
def test_target_reproduced_with_three_channels(family, group):
    targets = random_targets(channels=3, seed=5)
    labels = class_labels(per_class=2)
    images = run_decode(TargetModel(targets), labels, family, group, temperature=2.0, channels=3)
    assert torch.equal(images.long(), targets[labels])


@pytest.mark.parametrize("family, group", ORDERS, ids=ORDER_IDS)
def test_nfe_equals_number_of_groups(family, group):
    model = TargetModel(random_targets(channels=1))
    run_decode(model, class_labels(per_class=1), family, group)
    pixels_per_step = group * group if family in (OrderFamily.patch, OrderFamily.spread) else group
    assert len(model.masks) == SIDE * SIDE // pixels_per_step


@pytest.mark.parametrize("family, group", ORDERS, ids=ORDER_IDS)
def test_known_mask_matches_orders_module(family, group):
    model = TargetModel(random_targets(channels=1))
    labels = class_labels(per_class=2)
    run_decode(model, labels, family, group, seed=11)

    # decode draws the orders first from its generator, so the same seed gives the same orders.
    expected_orders = image_orders(family, group, len(labels), SIDE, SIDE, torch.Generator().manual_seed(11))
    for step, mask in enumerate(model.masks):
        for image in range(len(labels)):
            expected = known_mask(expected_orders[image], step, SIDE, SIDE)
            assert torch.equal(mask[image], expected), f"image {image}, step {step}"


def test_random_order_differs_per_image():
    orders = image_orders(OrderFamily.random, 4, 5, SIDE, SIDE, torch.Generator().manual_seed(0))
    assert orders.shape == (5, SIDE * SIDE // 4, 4)
    firsts = {tuple(order[0].tolist()) for order in orders}
    assert len(firsts) == 5


# Fixed orders only: with a random order per image, greedy samples differ through the order.
@pytest.mark.parametrize("family, group", [(OrderFamily.raster, 1), (OrderFamily.patch, 2), (OrderFamily.spread, 2)])
def test_greedy_identical_within_class(family, group):
    model = CoupledModel()
    labels = class_labels(per_class=4)
    images = run_decode(model, labels, family, group, greedy=True, seed=0)
    again = run_decode(model, labels, family, group, greedy=True, seed=1, temperature=0.1)

    for cls in range(CLASSES):
        members = images[labels == cls]
        assert (members == members[0]).all(), f"class {cls} has different greedy samples"
    assert torch.equal(images, again), "greedy decoding depends on the seed or the temperature"
    assert not torch.equal(images[labels == 0][0], images[labels == 1][0])


@pytest.mark.parametrize("family, group", [(OrderFamily.raster, 1), (OrderFamily.patch, 2), (OrderFamily.random, 4)])
def test_temperature_sampling_varies_within_class(family, group):
    model = CoupledModel()
    labels = class_labels(per_class=4)
    images = run_decode(model, labels, family, group, temperature=1.0, seed=0)
    for cls in range(CLASSES):
        members = images[labels == cls].flatten(1)
        distinct = {tuple(row.tolist()) for row in members}
        assert len(distinct) == len(members), f"class {cls} repeats a sample at temperature 1"


def test_temperature_sampling_follows_seed():
    model = CoupledModel(channels=2)
    labels = class_labels(per_class=2)
    first = run_decode(model, labels, OrderFamily.random, 4, seed=7, channels=2)
    again = run_decode(model, labels, OrderFamily.random, 4, seed=7, channels=2)
    other = run_decode(model, labels, OrderFamily.random, 4, seed=8, channels=2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_draws_follow_tempered_softmax(temperature):
    probabilities = torch.tensor([0.4, 0.3, 0.2, 0.1])
    draws = 200_000
    logits = probabilities.log().view(1, 4, 1).expand(1, 4, draws)
    values = draw_levels(logits, greedy=False, temperature=temperature, generator=torch.Generator().manual_seed(0))

    assert values.shape == (1, draws)
    frequencies = torch.bincount(values.flatten(), minlength=4).double() / draws
    expected = torch.softmax(probabilities.log().double() / temperature, dim=0)
    tolerance = 5 * (expected * (1 - expected) / draws).sqrt()  # five standard errors
    assert ((frequencies - expected).abs() <= tolerance).all(), f"{frequencies} vs {expected}"


def test_greedy_draw_is_argmax():
    logits = torch.randn(3, 2, 6, 10, generator=torch.Generator().manual_seed(0))
    values = draw_levels(logits, greedy=True, temperature=1.0, generator=torch.Generator())
    assert torch.equal(values, logits.argmax(dim=2))


DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize(
    "sampler, expected",
    [
        ({"order": "patch", "group": 3}, ["samplers.bad.group is 3", "divide the image side 16", "[1, 2, 4, 8]"]),
        ({"order": "spread", "group": 16}, ["samplers.bad.group is 16", "smaller than it"]),
        ({"order": "raster", "group": 5}, ["samplers.bad.group is 5", "does not divide the 256 pixels"]),
        ({"order": "random", "group": 96}, ["samplers.bad.group is 96", "does not divide the 256 pixels"]),
        ({"order": "zigzag", "group": 1}, ["samplers.bad.order", "'zigzag'", "raster", "spread"]),
        ({"temperature": 0.0}, ["samplers.bad.temperature", "greater than 0"]),
    ],
)
def test_params_reject_ar_sampler(sampler, expected):
    raw = copy.deepcopy(DEFAULTS)
    raw["samplers"]["bad"] = {"variant": "ar", "method": "ar", **sampler}
    with pytest.raises(ParamsError) as caught:
        validate_params(raw)
    for part in expected:
        assert part in str(caught.value)
