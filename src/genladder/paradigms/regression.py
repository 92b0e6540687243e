"""Regression: a class label mapped straight to an image, trained with squared error.

The input carries no information (zeros, and the conditioning scalar is 0), so the
network is a function of the label alone. The MSE optimum is then the per-pixel mean
image of the class, the blurry average that the first claim of the pipeline measures.
"""

from __future__ import annotations

import torch

from genladder.backbone import Backbone
from genladder.config import Paradigm
from genladder.data import to_unit
from genladder.paradigms.base import Draws, ParadigmModel


class RegressionModel(ParadigmModel):
    """Label -> image in [-1, 1] space; ``forward(y)`` returns (B, C, H, W) floats."""

    paradigm = Paradigm.regression
    input_names = ("y",)

    def __init__(self, backbone_kwargs: dict, channels: int, image_size: int, levels: int, num_classes: int):
        backbone = Backbone(channels, channels, image_size, num_classes, **backbone_kwargs)
        super().__init__(backbone, channels, image_size, levels, num_classes)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        batch = y.shape[0]
        zeros = torch.zeros(batch, self.channels, self.image_size, self.image_size, device=y.device)
        scalar = torch.zeros(batch, device=y.device)
        return self.backbone(zeros, scalar, y)

    def example_inputs(self, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
        return (torch.arange(batch_size) % (self.num_classes + 1),)

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, draws: Draws) -> torch.Tensor:
        target = to_unit(images, self.levels)
        prediction = self(labels).float()
        return (prediction - target).square().mean(dim=(1, 2, 3))
