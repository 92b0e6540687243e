"""Any-order masked autoregression over pixels, trained on the masks every decoder meets.

Model. The input is the known pixels in [-1, 1] (zero where unknown) plus the known mask
as one more channel; the conditioning scalar is the fraction of known pixels. The output
is, for every pixel and channel, logits over the L intensity levels: (B, C, L, H, W).
Pixels generated in the same step are sampled independently from these per-pixel
distributions, and all channels of a pixel belong to the same step.

Training masks. Each example draws one (family, size) option with equal probability
from the pairs that ``variants.ar`` lists: ``(f, k)`` for f in {random, raster} and k in
``group_sizes``, ``(f, n)`` for f in {patch, spread} and n in ``patch_sizes``. It then
draws the order with :func:`genladder.orders.groups` (a fresh permutation for random),
and the number of finished steps s uniformly from 0..S-1 for that order, where S is its
number of steps. The known set is ``orders.known_mask(order, s)``, the same function the
ar decoder uses. For the defaults (4 random, 4 raster, 3 patch, 3 spread sizes) each
of the 14 options gets weight 1/14.

Loss. Cross-entropy over the levels on the unknown entries (pixel, channel), averaged
over them, in bits. With a random order this is the order-agnostic estimator of Hoogeboom
et al. 2022 ("Autoregressive Diffusion Models", ICLR), with G pixels per step. At step s
each unknown pixel is equally likely to be in the next group, so
``S * G / (D - s*G) * sum_unknown CE`` is an unbiased estimate of -log p(x) under
decoding with that order. Divided by the D*C dimensions, it is the plain mean over the
(D - s*G)*C unknown entries. Averaged over orders, it is an upper bound (by Jensen's
inequality) on the negative log-likelihood, in bits per dimension, of the model that
picks a random order and decodes with it.

NOTE: examples with a fixed order (raster, patch, spread) are trained with the same mean
over all unknown entries, so every decoder's next group gets signal. For them the value
is not an unbiased estimate of that order's NLL, because their next group is not a random
subset of the unknown pixels. The reported bound ``val_nll_bpd`` therefore uses random
orders with one pixel per step only.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from genladder.backbone import Backbone
from genladder.config import OrderFamily, Paradigm
from genladder.data import to_unit
from genladder.orders import check_fits, group_pixels, groups, known_mask
from genladder.paradigms.base import Draws, ParadigmModel

LN2 = math.log(2.0)

# The families whose group size comes from ``group_sizes`` (k pixels per step); the others
# take ``patch_sizes`` (n x n pixels per step).
SIZED_BY_GROUP = (OrderFamily.random, OrderFamily.raster)


def order_options(
    families: list[OrderFamily], group_sizes: list[int], patch_sizes: list[int]
) -> list[tuple[OrderFamily, int]]:
    """Return the (family, size) pairs of the training mixture, in a fixed order, without repeats."""
    options: list[tuple[OrderFamily, int]] = []
    for family in families:
        family = OrderFamily(family)
        sizes = group_sizes if family in SIZED_BY_GROUP else patch_sizes
        for size in sizes:
            if (family, size) not in options:
                options.append((family, size))
    return options


class ARModel(ParadigmModel):
    """Any-order pixel autoregression; ``forward(x, known, y)`` returns logits (B, C, L, H, W).

    Args:
        backbone_kwargs: width and depth of the shared :class:`Backbone`.
        channels, image_size, levels, num_classes: the data shape.
        orders, group_sizes, patch_sizes: the training mixture of orders (see the module docstring).
    """

    paradigm = Paradigm.ar
    input_names = ("x", "known", "y")

    def __init__(
        self,
        backbone_kwargs: dict,
        channels: int,
        image_size: int,
        levels: int,
        num_classes: int,
        orders: list[OrderFamily],
        group_sizes: list[int],
        patch_sizes: list[int],
    ):
        backbone = Backbone(channels + 1, channels * levels, image_size, num_classes, **backbone_kwargs)
        super().__init__(backbone, channels, image_size, levels, num_classes)
        self.options = order_options(orders, group_sizes, patch_sizes)
        if not self.options:
            raise ValueError("the ar training mixture is empty; list at least one order family and size")
        for family, size in self.options:
            check_fits(family, size, image_size, image_size)
        # Known masks of every step of a fixed order, (S, H, W) bool per (family, size), built on first use.
        self._fixed_masks: dict[tuple[OrderFamily, int], torch.Tensor] = {}

    # -- model ----------------------------------------------------------------------

    def forward(self, x: torch.Tensor, known: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Map levels x (B, C, H, W), known (B, 1, H, W) bool and labels y (B,) to logits (B, C, L, H, W)."""
        known_float = known.to(device=x.device, dtype=torch.float32)
        values = to_unit(x, self.levels) * known_float  # unknown pixels become 0, whatever x contains there
        inputs = torch.cat([values, known_float], dim=1)
        fraction_known = known_float.mean(dim=(1, 2, 3))
        out = self.backbone(inputs, fraction_known, y)
        batch, _, height, width = out.shape
        return out.view(batch, self.channels, self.levels, height, width)

    def example_inputs(self, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
        side = self.image_size
        x = torch.zeros(batch_size, self.channels, side, side, dtype=torch.uint8)
        known = torch.zeros(batch_size, 1, side, side, dtype=torch.bool)
        known[:, :, : side // 2] = True
        return x, known, torch.arange(batch_size) % (self.num_classes + 1)

    # -- training masks -------------------------------------------------------------

    def _fixed_order_masks(self, family: OrderFamily, size: int) -> torch.Tensor:
        key = (family, size)
        if key not in self._fixed_masks:
            side = self.image_size
            order = groups(family, size, side, side)
            steps = order.shape[0]
            self._fixed_masks[key] = torch.stack([known_mask(order, s, side, side) for s in range(steps)])
        return self._fixed_masks[key]

    def draw(
        self,
        batch_size: int,
        generator: torch.Generator,
        options: list[tuple[OrderFamily, int]] | None = None,
    ) -> Draws:
        """Draw an order option, an order and a step per example; returns CPU tensors.

        Returns ``known`` (B, 1, H, W) bool, ``option`` (B,) index into ``options`` and
        ``step`` (B,) the number of finished steps s. ``options`` defaults to the training
        mixture; pass ``[(OrderFamily.random, 1)]`` for the single-pixel NLL bound.
        """
        side = self.image_size
        if options is None:
            options = self.options
        options = [(OrderFamily(family), size) for family, size in options]
        for family, size in options:
            check_fits(family, size, side, side)

        # 1. Option and step, vectorized: s = floor(u * S) is uniform on 0..S-1.
        option = torch.randint(len(options), (batch_size,), generator=generator)
        uniform = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        steps = torch.tensor([self.image_size**2 // group_pixels(*options[o]) for o in option.tolist()])
        step = (uniform * steps).floor().long().clamp_max(steps - 1)

        # 2. Known masks: a fresh permutation per random example, cached masks for fixed orders.
        known = torch.empty(batch_size, 1, side, side, dtype=torch.bool)
        for i, (o, s) in enumerate(zip(option.tolist(), step.tolist(), strict=True)):
            family, size = options[o]
            if family is OrderFamily.random:
                order = groups(family, size, side, side, generator=generator)
                known[i, 0] = known_mask(order, s, side, side)
            else:
                known[i, 0] = self._fixed_order_masks(family, size)[s]
        return {"known": known, "option": option, "step": step}

    # -- losses ---------------------------------------------------------------------

    def entry_nll(self, images: torch.Tensor, labels: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Return the cross-entropy in nats of every entry, (B, C, H, W), from one forward pass."""
        logits = self(images, known, labels).float()  # (B, C, L, H, W)
        return F.cross_entropy(logits.transpose(1, 2), images.long(), reduction="none")

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Return the order-agnostic NLL bound of each example in bits per dimension, (B,)."""
        known = draws["known"]
        nll = self.entry_nll(images, labels, known)
        unknown = (~known).expand_as(nll).float()
        # Mean over the unknown entries; s <= S-1 leaves at least one group unknown.
        return (nll * unknown).sum(dim=(1, 2, 3)) / unknown.sum(dim=(1, 2, 3)) / LN2

    def validation_losses(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Return the mixture loss and the random-order, one-pixel-per-step NLL bound, in bits/dim."""
        batch = images.shape[0]
        mixture = self.draw(batch, generator)
        single = self.draw(batch, generator, options=[(OrderFamily.random, 1)])
        return {
            "val_loss": self.training_loss(images, labels, {"known": mixture["known"].to(images.device)}),
            "val_nll_bpd": self.training_loss(images, labels, {"known": single["known"].to(images.device)}),
        }
