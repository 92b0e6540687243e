"""Sampling from the regression model: one forward pass per label, no randomness."""

from __future__ import annotations

import torch
from torch import nn

from genladder.sampling.pictures import FrameTrace, unit_picture


def predict(
    model: nn.Module, labels: torch.Tensor, trace: FrameTrace | None = None, progress=None
) -> torch.Tensor:
    """Return the model's image for every label as floats (B, C, H, W) in [-1, 1] space.

    model: a RegressionModel, ``model(y) -> (B, C, H, W)``. The output is not clipped here;
    rounding to the data's levels clamps it.
    """
    images = model(labels).float()
    if trace is not None:
        trace.record(1, lambda i: unit_picture(images[i]))
    if progress is not None:
        progress.update(1)
    return images
