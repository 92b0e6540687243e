"""Pixel orders for autoregression, shared by training masks and by the decoder.

An order splits the D = H*W pixel positions of an image into S groups of equal size G,
generated one group per step (S network evaluations). Pixel positions are flat indices
p = row * W + col. All channels of a pixel belong to the same group.

| family | group | steps S |
| --- | --- | --- |
| raster k | k consecutive pixels in row-major order | D / k |
| random k | k pixels of a random permutation | D / k |
| patch n | an n x n block of adjacent pixels, blocks in row-major order | D / n^2 |
| spread n | n^2 pixels on a lattice with stride (H/n, W/n), offsets in row-major order | D / n^2 |
"""

from __future__ import annotations

import torch

from genladder.config import OrderFamily


class OrderError(ValueError):
    """A group size that does not fit the image."""


def group_pixels(family: OrderFamily, size: int) -> int:
    """Return the number of pixels generated per step: k for raster/random, n*n for patch/spread."""
    family = OrderFamily(family)
    return size * size if family in (OrderFamily.patch, OrderFamily.spread) else size


def check_fits(family: OrderFamily, size: int, height: int, width: int) -> None:
    """Raise OrderError unless `size` splits an height x width image into whole groups."""
    family = OrderFamily(family)
    if family in (OrderFamily.patch, OrderFamily.spread):
        if height % size or width % size or size >= max(height, width):
            raise OrderError(
                f"{family.value} group n={size} must divide the image sides {height}x{width} "
                "and be smaller than them"
            )
    elif (height * width) % size:
        raise OrderError(f"{family.value} group k={size} must divide the {height * width} pixels")


def groups(
    family: OrderFamily,
    size: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return the order as a LongTensor (S, G) of flat pixel indices, one row per step.

    `generator` only matters for the random family.
    """
    family = OrderFamily(family)
    check_fits(family, size, height, width)
    pixels = height * width
    if family is OrderFamily.raster:
        return torch.arange(pixels).view(pixels // size, size)
    if family is OrderFamily.random:
        return torch.randperm(pixels, generator=generator).view(pixels // size, size)

    rows = torch.arange(height).view(height, 1)
    cols = torch.arange(width).view(1, width)
    index = rows * width + cols  # (H, W) flat indices
    n = size
    if family is OrderFamily.patch:
        # (H/n, n, W/n, n) -> (H/n, W/n, n, n): block (bi, bj) holds its n x n pixels.
        blocks = index.view(height // n, n, width // n, n).permute(0, 2, 1, 3)
        return blocks.reshape(-1, n * n)
    # spread: pixel (a + i*sh, b + j*sw) for lattice offset (a, b) and i, j in 0..n-1.
    sh, sw = height // n, width // n
    lattice = index.view(n, sh, n, sw).permute(1, 3, 0, 2)  # (sh, sw, n, n)
    return lattice.reshape(-1, n * n)


def known_mask(order: torch.Tensor, step: int, height: int, width: int) -> torch.Tensor:
    """Return the BoolTensor (H, W) of pixels fixed before `step` (the union of groups[:step])."""
    mask = torch.zeros(height * width, dtype=torch.bool)
    mask[order[:step].reshape(-1)] = True
    return mask.view(height, width)
