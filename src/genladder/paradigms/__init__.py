"""The three paradigms, each a thin module around the shared backbone.

| paradigm | forward | output | loss |
| --- | --- | --- | --- |
| regression | ``(y)`` | image in [-1, 1], (B, C, H, W) | squared error |
| ar | ``(x, known, y)`` | logits, (B, C, L, H, W) | order-agnostic NLL bound, bits/dim |
| diffusion | ``(x_t, t, y)`` | eps or v, (B, C, H, W) | simple DDPM loss |

Labels are (B,) int64; ``y == num_classes`` means "no label".
"""

from genladder.config import Paradigm
from genladder.paradigms.ar import ARModel
from genladder.paradigms.base import Draws, ParadigmModel
from genladder.paradigms.diffusion import DiffusionModel
from genladder.paradigms.regression import RegressionModel

PARADIGM_CLASSES: dict[Paradigm, type[ParadigmModel]] = {
    Paradigm.regression: RegressionModel,
    Paradigm.ar: ARModel,
    Paradigm.diffusion: DiffusionModel,
}

__all__ = ["ARModel", "DiffusionModel", "Draws", "PARADIGM_CLASSES", "ParadigmModel", "RegressionModel"]
