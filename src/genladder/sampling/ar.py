"""Decoding of the any-order autoregressive model, one group of pixels per network evaluation.

The order comes from :func:`genladder.orders.groups`, the function that also draws the
training masks, so every decoding order meets masks the model was trained on. Step s runs
the network once on the pixels known so far, exactly ``orders.known_mask(order, s, H, W)``,
and then fixes the s-th group. Each pixel and channel of the group is drawn independently
from its categorical distribution over the L levels, or set to the argmax when greedy.
"""

from __future__ import annotations

import torch
from torch import nn

from genladder.config import OrderFamily
from genladder.orders import groups
from genladder.sampling.pictures import FrameTrace, partial_picture


def image_orders(
    family: OrderFamily, size: int, batch: int, height: int, width: int, generator: torch.Generator
) -> torch.Tensor:
    """Return one order per image as a LongTensor (B, S, G) of flat pixel indices.

    The random family draws a separate permutation for every image from `generator`;
    the other families give every image the same order.
    """
    family = OrderFamily(family)
    if family is OrderFamily.random:
        return torch.stack([groups(family, size, height, width, generator) for _ in range(batch)])
    return groups(family, size, height, width).unsqueeze(0).expand(batch, -1, -1)


def draw_levels(
    logits: torch.Tensor, greedy: bool, temperature: float, generator: torch.Generator
) -> torch.Tensor:
    """Pick one level per entry from logits (..., L, G) over dimension -2; returns (..., G) long.

    Sampling uses the Gumbel-max trick: argmax(logits / tau + g) with g drawn i.i.d. from
    Gumbel(0, 1) is an exact draw from softmax(logits / tau). The uniform noise comes from the
    CPU generator, so a seed gives the same draws on every device.
    """
    if greedy:
        return logits.argmax(dim=-2)
    uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float32)
    # Clamping away from 0 keeps -log(-log(u)) finite; the bias is below 1e-37 per draw.
    uniform = uniform.clamp_(min=torch.finfo(torch.float32).tiny).to(logits.device)
    gumbel = -torch.log(-torch.log(uniform))
    return (logits.float() / temperature + gumbel).argmax(dim=-2)


def decode(
    model: nn.Module,
    labels: torch.Tensor,
    *,
    height: int,
    width: int,
    channels: int,
    family: OrderFamily,
    group: int,
    greedy: bool,
    temperature: float,
    generator: torch.Generator,
    trace: FrameTrace | None = None,
    progress=None,
) -> torch.Tensor:
    """Generate one image per label and return levels as uint8 (B, C, H, W).

    model: an ARModel, ``model(x, known, y) -> logits (B, C, L, H, W)``.
    labels: long (B,) on the model's device; the class index num_classes means "no label".
    family, group: the order and its size (k pixels for raster and random, n for n x n
    patch and spread groups). The number of network evaluations is the number of groups.
    progress: an object with ``update(1)`` (a tqdm bar), called after every step.
    """
    device = labels.device
    batch = labels.shape[0]
    pixels = height * width
    order = image_orders(family, group, batch, height, width, generator).to(device)  # (B, S, G)
    steps, size = order.shape[1], order.shape[2]
    levels = model.levels

    x = torch.zeros(batch, channels, height, width, dtype=torch.long, device=device)
    known = torch.zeros(batch, pixels, dtype=torch.bool, device=device)
    flat = x.view(batch, channels, pixels)  # shares memory with x
    if trace is not None:
        trace.record(0, lambda i: partial_picture(x[i], known[i].view(-1, height, width), levels))

    for step in range(steps):
        # 1. One network evaluation on the known pixels: logits (B, C, L, H, W).
        logits = model(x, known.view(batch, 1, height, width), labels)

        # 2. The logits of this step's group: (B, C, L, D) -> (B, C, L, G).
        index = order[:, step]  # (B, G)
        picked = logits.reshape(batch, channels, levels, pixels).gather(
            3, index.view(batch, 1, 1, size).expand(batch, channels, levels, size)
        )

        # 3. Draw every pixel and channel of the group independently and fix them.
        values = draw_levels(picked, greedy, temperature, generator)  # (B, C, G)
        flat.scatter_(2, index.view(batch, 1, size).expand(batch, channels, size), values)
        known.scatter_(1, index, True)

        if trace is not None:
            trace.record(step + 1, lambda i: partial_picture(x[i], known[i].view(-1, height, width), levels))
        if progress is not None:
            progress.update(1)

    if not bool(known.all()):
        raise RuntimeError("the order left pixels ungenerated; every order must cover each pixel once")
    return x.to(torch.uint8)
