"""Pixel orders: every family covers each pixel once, with the stated group sizes and steps."""

from __future__ import annotations

import itertools

import pytest
import torch

from genladder.config import OrderFamily
from genladder.orders import OrderError, check_fits, group_pixels, groups, known_mask

# (family, size, H, W): valid splits, square and not.
VALID = [
    (OrderFamily.raster, 1, 4, 4),
    (OrderFamily.raster, 4, 4, 4),
    (OrderFamily.raster, 8, 16, 16),
    (OrderFamily.raster, 3, 3, 5),
    (OrderFamily.random, 1, 4, 4),
    (OrderFamily.random, 16, 16, 16),
    (OrderFamily.random, 5, 5, 4),
    (OrderFamily.patch, 2, 4, 4),
    (OrderFamily.patch, 4, 16, 16),
    (OrderFamily.patch, 8, 16, 16),
    (OrderFamily.patch, 2, 4, 6),
    (OrderFamily.patch, 2, 8, 6),
    (OrderFamily.spread, 2, 4, 4),
    (OrderFamily.spread, 4, 16, 16),
    (OrderFamily.spread, 8, 16, 16),
    (OrderFamily.spread, 2, 6, 4),
    (OrderFamily.spread, 7, 28, 28),
]

# (family, size, H, W, part of the message): splits that must be rejected.
INVALID = [
    (OrderFamily.raster, 5, 4, 4, "must divide the 16 pixels"),
    (OrderFamily.random, 3, 4, 4, "must divide the 16 pixels"),
    (OrderFamily.random, 7, 16, 16, "must divide the 256 pixels"),
    (OrderFamily.patch, 3, 16, 16, "must divide the image sides 16x16"),
    (OrderFamily.patch, 16, 16, 16, "smaller than them"),
    (OrderFamily.patch, 4, 6, 4, "must divide the image sides 6x4"),
    (OrderFamily.spread, 3, 4, 6, "must divide the image sides 4x6"),
    (OrderFamily.spread, 5, 5, 5, "smaller than them"),
    (OrderFamily.spread, 2, 5, 4, "must divide the image sides 5x4"),
]


def case_id(case) -> str:
    family, size, height, width = case[:4]
    return f"{family.value}{size}-{height}x{width}"


def coordinates(group: torch.Tensor, width: int) -> torch.Tensor:
    """Return (G, 2) row and column of flat pixel indices."""
    return torch.stack([group // width, group % width], dim=1)


@pytest.mark.parametrize("case", VALID, ids=case_id)
def test_groups_cover_each_pixel_once(case):
    family, size, height, width = case
    order = groups(family, size, height, width, torch.Generator().manual_seed(0))
    pixels = height * width
    size_per_step = group_pixels(family, size)
    assert order.dtype == torch.long
    assert order.shape == (pixels // size_per_step, size_per_step)
    assert torch.equal(order.flatten().sort().values, torch.arange(pixels))


@pytest.mark.parametrize("case", INVALID, ids=case_id)
def test_groups_reject_sizes_that_do_not_fit(case):
    family, size, height, width, message = case
    with pytest.raises(OrderError, match=message):
        groups(family, size, height, width)
    with pytest.raises(OrderError, match=message):
        check_fits(family, size, height, width)


@pytest.mark.parametrize(
    "family, size, expected_steps",
    [
        (OrderFamily.raster, 1, 256),
        (OrderFamily.random, 4, 64),
        (OrderFamily.random, 64, 4),
        (OrderFamily.patch, 2, 64),
        (OrderFamily.patch, 8, 4),
        (OrderFamily.spread, 4, 16),
    ],
)
def test_steps_match_nfe_table(family, size, expected_steps):
    # NFE for D = 256 pixels: D/k for raster and random, D/n^2 for patch and spread.
    assert groups(family, size, 16, 16, torch.Generator().manual_seed(0)).shape[0] == expected_steps


def test_raster_groups_are_consecutive():
    order = groups(OrderFamily.raster, 4, 4, 8)
    assert torch.equal(order, torch.arange(32).view(8, 4))


@pytest.mark.parametrize("n, height, width", [(2, 4, 4), (4, 16, 16), (2, 4, 6), (3, 6, 9)])
def test_patch_groups_are_adjacent_blocks(n, height, width):
    order = groups(OrderFamily.patch, n, height, width)
    for step, group in enumerate(order):
        rc = coordinates(group, width)
        rows, cols = rc[:, 0], rc[:, 1]
        block_row, block_col = divmod(step, width // n)  # blocks in row-major order
        assert sorted(set(rows.tolist())) == list(range(block_row * n, block_row * n + n))
        assert sorted(set(cols.tolist())) == list(range(block_col * n, block_col * n + n))


@pytest.mark.parametrize("n, height, width", [(2, 4, 4), (4, 16, 16), (8, 16, 16), (2, 6, 4), (7, 28, 28)])
def test_spread_groups_keep_stride_apart(n, height, width):
    stride_rows, stride_cols = height // n, width // n
    order = groups(OrderFamily.spread, n, height, width)
    for group in order:
        rc = coordinates(group, width).float()
        distances = torch.cdist(rc, rc) + torch.eye(len(rc)) * 1e9
        assert distances.min() >= min(stride_rows, stride_cols)
        for i, j in itertools.combinations(range(len(rc)), 2):
            row_gap = abs(rc[i, 0] - rc[j, 0])
            col_gap = abs(rc[i, 1] - rc[j, 1])
            assert row_gap >= stride_rows or col_gap >= stride_cols


@pytest.mark.parametrize("n, height, width", [(2, 4, 4), (4, 16, 16), (2, 6, 4)])
def test_spread_group_has_one_pixel_per_tile(n, height, width):
    # The image splits into n x n tiles of (H/n) x (W/n) pixels; each group visits every tile once.
    stride_rows, stride_cols = height // n, width // n
    for group in groups(OrderFamily.spread, n, height, width):
        rc = coordinates(group, width)
        tiles = (rc[:, 0] // stride_rows) * n + rc[:, 1] // stride_cols
        assert sorted(tiles.tolist()) == list(range(n * n))


def test_random_order_follows_generator():
    first = groups(OrderFamily.random, 4, 8, 8, torch.Generator().manual_seed(3))
    again = groups(OrderFamily.random, 4, 8, 8, torch.Generator().manual_seed(3))
    other = groups(OrderFamily.random, 4, 8, 8, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("case", VALID, ids=case_id)
def test_known_mask_grows_one_group_per_step(case):
    family, size, height, width = case
    order = groups(family, size, height, width, torch.Generator().manual_seed(1))
    steps, size_per_step = order.shape
    previous = known_mask(order, 0, height, width)
    assert previous.shape == (height, width)
    assert not previous.any()
    for step in range(1, steps + 1):
        mask = known_mask(order, step, height, width)
        assert int(mask.sum()) == step * size_per_step
        assert bool((mask | previous).eq(mask).all()), "a known pixel became unknown"
        added = (mask & ~previous).flatten().nonzero().flatten()
        assert torch.equal(added.sort().values, order[step - 1].sort().values)
        previous = mask
    assert previous.all()
