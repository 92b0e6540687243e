"""The evaluator as a feature extractor for torchmetrics, and batched feature extraction."""

from __future__ import annotations

import torch
from torch import nn

from genladder.evaluator import Evaluator


class EvaluatorFeatures(nn.Module):
    """Map uint8 level images (B, C, H, W) to evaluator features (B, F) as float64.

    torchmetrics' FrechetInceptionDistance and KernelInceptionDistance accept this module as
    `feature`: it takes the images as given (no resizing, no [0, 255] rescaling), exposes
    `num_features`, and stays in eval mode even when the metric is switched to training mode.
    Features come back on the device of the input images, where the metric keeps its state.
    """

    def __init__(self, evaluator: Evaluator, batch_size: int = 512):
        super().__init__()
        self.evaluator = evaluator.eval()
        self.num_features = evaluator.num_features
        self.batch_size = batch_size

    def train(self, mode: bool = True) -> EvaluatorFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            x = self.evaluator.encode(images[start : start + self.batch_size])
            chunks.append(self.evaluator.features(x).to(images.device, torch.float64))
        if not chunks:
            return torch.zeros(0, self.num_features, dtype=torch.float64, device=images.device)
        return torch.cat(chunks)
