"""Base class of the paradigms: random draws, a per-example loss and validation figures for the trainer.

All randomness of a training step (diffusion noise and times, ar masks) comes from
:meth:`ParadigmModel.draw`, called with a CPU ``torch.Generator`` for the whole global
batch. The trainer seeds that generator from (seed, step) and slices the draws across
ranks, so a run is a function of the seed alone and the same whatever the number of
processes. Draws are made on the CPU and moved to the model's device afterwards.
"""

from __future__ import annotations

import torch
from torch import nn

from genladder.backbone import Backbone
from genladder.config import Paradigm

Draws = dict[str, torch.Tensor]


class ParadigmModel(nn.Module):
    """A paradigm wrapping the shared :class:`Backbone`; subclasses fix its input and output layers.

    Attributes:
        paradigm: which paradigm the subclass implements.
        channels, image_size, levels, num_classes: the data the model was built for.
        no_label: the label index meaning "no label" (equal to ``num_classes``).
    """

    paradigm: Paradigm
    input_names: tuple[str, ...]  # positional arguments of forward, in order

    def __init__(self, backbone: Backbone, channels: int, image_size: int, levels: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.channels = channels
        self.image_size = image_size
        self.levels = levels
        self.num_classes = num_classes

    @property
    def no_label(self) -> int:
        return self.num_classes

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def example_inputs(self, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
        """Return valid positional inputs of ``forward`` for `batch_size` examples, on the CPU.

        They are the input example logged with the model in MLflow.
        """
        raise NotImplementedError

    def draw(self, batch_size: int, generator: torch.Generator) -> Draws:
        """Draw the random inputs of :meth:`training_loss` for `batch_size` examples, on the CPU."""
        return {}

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Return the loss of each example, shape (B,), from uint8 levels (B, C, H, W) and labels (B,)."""
        raise NotImplementedError

    def validation_losses(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Return per-example validation figures, each of shape (B,), keyed by metric name."""
        draws = {k: v.to(images.device) for k, v in self.draw(images.shape[0], generator).items()}
        return {"val_loss": self.training_loss(images, labels, draws)}
