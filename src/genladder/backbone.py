"""The one network shared by every paradigm: a small class-conditional conv U-Net.

Every variant builds this class with the same width and depth; only ``in_channels`` and
``out_channels`` differ by paradigm. The network is conditioned on two things, summed into
one embedding that every residual block adds to its features:

- a per-example scalar in [0, 1] (diffusion time t/T, the fraction of known pixels for ar,
  a constant 0 for regression), through a sinusoidal embedding and a two-layer MLP;
- a class label, through an embedding table with ``num_classes + 1`` rows, where the last
  row (index ``num_classes``) means "no label" for classifier-free guidance.

Resolution: each level but the last halves the side with a stride-2 convolution while the
side is even, and keeps it otherwise, so 28 goes 28 -> 14 -> 7 and 7 stays 7.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# Sinusoidal embedding of the conditioning scalar: s in [0, 1] is scaled by this factor
# first, so that s = t/T for T = 1000 reproduces the usual embedding of the integer step t.
SCALAR_SCALE = 1000.0


def norm_groups(channels: int) -> int:
    """Return the GroupNorm group count: at most 32 groups, each with at least 4 channels."""
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 4:
            return groups
    return 1


def sinusoidal_embedding(scalar: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Embed a (B,) float tensor as (B, dim) sines and cosines of geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=scalar.device, dtype=torch.float32) / half)
    args = scalar.float()[:, None] * SCALAR_SCALE * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding added as a per-channel bias in between."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(norm_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # Zero init makes each block start as the identity, which steadies early training.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour doubling without a convolution: the next residual block mixes pixels.

    A 3x3 convolution here would run at the higher resolution on the wider channels and
    cost about a sixth of the network's multiply-adds at 16x16.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class Backbone(nn.Module):
    """Class-conditional conv U-Net mapping (B, in_channels, H, W) to (B, out_channels, H, W).

    Args:
        in_channels: input channels, set by the paradigm.
        out_channels: output channels, set by the paradigm.
        image_size: side H = W of the square images; fixes where the U-Net downsamples.
        num_classes: number of real classes; the label ``num_classes`` means "no label".
        width: channels of the first level.
        channel_mult: channels of level i are ``width * channel_mult[i]``.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        dropout: dropout inside residual blocks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int,
        num_classes: int,
        width: int = 32,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if not channel_mult:
            raise ValueError("channel_mult must list at least one level")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.image_size = image_size
        self.num_classes = num_classes
        emb_dim = 4 * width

        self.scalar_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, width * channel_mult[0], 3, padding=1)

        # 1. Down path: residual blocks per level, then a stride-2 conv while the side is even.
        self.down = nn.ModuleList()
        skip_channels = [width * channel_mult[0]]
        channels = width * channel_mult[0]
        side = image_size
        self.downsampled: list[bool] = []
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(channels, width * mult, emb_dim, dropout))
                channels = width * mult
                skip_channels.append(channels)
            if level < len(channel_mult) - 1:
                halve = side % 2 == 0 and side >= 2
                self.downsampled.append(halve)
                self.down.append(Downsample(channels) if halve else nn.Identity())
                side = side // 2 if halve else side
                skip_channels.append(channels)

        # 2. Middle at the lowest resolution.
        self.middle = nn.ModuleList(
            [ResBlock(channels, channels, emb_dim, dropout), ResBlock(channels, channels, emb_dim, dropout)]
        )

        # 3. Up path: each block takes one skip connection; upsample where the down path halved.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(channels + skip_channels.pop(), width * mult, emb_dim, dropout))
                channels = width * mult
            if level > 0:
                self.up.append(Upsample() if self.downsampled[level - 1] else nn.Identity())

        self.norm_out = nn.GroupNorm(norm_groups(channels), channels)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)
        # Zero init: every paradigm starts from a constant output (zero image, uniform logits).
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.width = width

    def forward(self, x: torch.Tensor, scalar: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Map x (B, in_channels, H, W), scalar (B,) in [0, 1] and labels (B,) to (B, out_channels, H, W)."""
        emb = self.scalar_mlp(sinusoidal_embedding(scalar, self.width)) + self.label_emb(labels)

        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
            skips.append(h)
        for block in self.middle:
            h = block(h, emb)
        for block in self.up:
            if isinstance(block, ResBlock):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))
