"""Exact negative log-likelihood of the any-order autoregressive model, in bits per dimension.

For an order that splits the D pixels into S groups, the model's likelihood of an image is
the product over steps s of p(pixels of group s | pixels of groups < s, label), each pixel of
a group predicted independently of the others in its group. With one pixel per group (k = 1)
this is the exact autoregressive likelihood of that order. Bits per dimension divide the
negative log2-likelihood by D * C. The likelihood is conditional on the true label.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from genladder.config import OrderFamily
from genladder.orders import groups


def image_orders(
    family: OrderFamily, size: int, count: int, height: int, width: int, generator: torch.Generator
) -> torch.Tensor:
    """Return one order per image as (count, S, G); random orders draw one permutation per image."""
    family = OrderFamily(family)
    if family is OrderFamily.random:
        return torch.stack([groups(family, size, height, width, generator) for _ in range(count)])
    order = groups(family, size, height, width)
    return order.unsqueeze(0).expand(count, *order.shape)


@torch.inference_mode()
def bits_per_dim(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    orders: torch.Tensor,
    batch_size: int = 256,
    desc: str = "nll",
) -> torch.Tensor:
    """Return the bits per dimension of each image under the given orders, as float64 (N,).

    Args:
        model: ARModel contract: forward(x (B, C, H, W) levels, known (B, 1, H, W) bool,
            y (B,) long) -> logits (B, C, L, H, W).
        images: uint8 levels (N, C, H, W).
        labels: int64 (N,).
        orders: flat pixel indices (N, S, G), one order per image (see `image_orders`).
    """
    num, channels, height, width = images.shape
    pixels = height * width
    steps, group = orders.shape[1:]
    device = next(model.parameters()).device
    total = torch.zeros(num, dtype=torch.float64)

    batches = range(0, num, batch_size)
    progress = tqdm(total=len(batches) * steps, desc=desc, unit="step", leave=False)
    for start in batches:
        x = images[start : start + batch_size].to(device).long()
        y = labels[start : start + batch_size].to(device).long()
        order = orders[start : start + batch_size].to(device)  # (B, S, G)
        b = len(x)

        # rank[b, p] is the step at which pixel p of image b is generated.
        rank = torch.empty(b, pixels, dtype=torch.long, device=device)
        step_of_slot = torch.arange(steps, device=device).repeat_interleave(group).expand(b, -1)
        rank.scatter_(1, order.reshape(b, -1), step_of_slot)

        flat_x = x.reshape(b, channels, pixels)
        nll = torch.zeros(b, dtype=torch.float64, device=device)
        for step in range(steps):
            known = (rank < step).view(b, 1, height, width)
            logits = model(x, known, y)  # (B, C, L, H, W)
            levels = logits.shape[2]
            # Only the pixels of this step's group: (B, C, L, D) -> (B, C, L, G).
            target = order[:, step, :].view(b, 1, 1, group).expand(b, channels, levels, group)
            group_logits = logits.reshape(b, channels, levels, pixels).gather(3, target)
            log_probs = torch.log_softmax(group_logits.double(), dim=2)
            true_levels = flat_x.gather(2, target[:, :, 0, :])  # (B, C, G)
            nll -= log_probs.gather(2, true_levels.unsqueeze(2)).sum(dim=(1, 2, 3))
            progress.update(1)
        total[start : start + b] = nll.cpu()
    progress.close()
    return total / (pixels * channels * math.log(2.0))
