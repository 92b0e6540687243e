"""Denoising diffusion: DDPM training with eps or v prediction and a linear or cosine schedule.

Forward process (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", eq. 4):
``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` with ``abar_t = prod_{i<=t} (1 - beta_i)``.
Steps are indexed t = 0..T-1, so ``alphas_cumprod[0]`` is the least noisy level.

Loss: the "simple" objective of Ho et al. 2020, eq. 14, ``|| target - model(x_t, t) ||^2``
averaged over pixels, where the target is the noise eps, or v = sqrt(abar) eps -
sqrt(1 - abar) x_0 (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
Diffusion Models"). Images live in [-1, 1].
"""

from __future__ import annotations

import math

import torch

from genladder.backbone import Backbone
from genladder.config import Paradigm, Prediction, Schedule
from genladder.data import to_unit
from genladder.paradigms.base import Draws, ParadigmModel


def linear_betas(timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Return the (T,) float64 betas of Ho et al. 2020, 1e-4 to 0.02 at T = 1000.

    For other T both ends are scaled by 1000 / T, as in Nichol & Dhariwal 2021, so that
    the total noise added stays about the same. Below T = 21 the scaled end passes 1, so
    betas are clipped at `max_beta`.
    """
    scale = 1000.0 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    return betas.clamp(max=max_beta)


def cosine_betas(timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Return the (T,) float64 betas of the cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    ``abar(t) = f(t) / f(0)`` with ``f(t) = cos(((t / T + offset) / (1 + offset)) * pi / 2)^2``,
    and ``beta_t = min(1 - abar(t) / abar(t - 1), max_beta)``; the clip avoids a singular last step.
    """
    grid = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((grid + offset) / (1.0 + offset) * math.pi / 2.0) ** 2
    betas = 1.0 - f[1:] / f[:-1]
    return betas.clamp(max=max_beta)


SCHEDULES = {Schedule.linear: linear_betas, Schedule.cosine: cosine_betas}


class DiffusionModel(ParadigmModel):
    """DDPM denoiser; ``forward(x_t, t, y)`` returns the eps or v prediction, (B, C, H, W).

    Attributes:
        timesteps: T, the number of noise levels.
        prediction: "eps" or "v".
        schedule: "linear" or "cosine".
        betas, alphas_cumprod: (T,) float64 buffers.
    """

    paradigm = Paradigm.diffusion
    input_names = ("x_t", "t", "y")

    def __init__(
        self,
        backbone_kwargs: dict,
        channels: int,
        image_size: int,
        levels: int,
        num_classes: int,
        timesteps: int,
        schedule: Schedule | str,
        prediction: Prediction | str,
    ):
        backbone = Backbone(channels, channels, image_size, num_classes, **backbone_kwargs)
        super().__init__(backbone, channels, image_size, levels, num_classes)
        self.timesteps = int(timesteps)
        self.schedule = Schedule(schedule).value
        self.prediction = Prediction(prediction).value
        betas = SCHEDULES[Schedule(schedule)](self.timesteps)
        self.register_buffer("betas", betas)
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict eps or v from noisy images x_t (B, C, H, W), steps t (B,) in 0..T-1 and labels y (B,)."""
        return self.backbone(x_t, t.float() / self.timesteps, y)

    def example_inputs(self, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
        x_t = torch.zeros(batch_size, self.channels, self.image_size, self.image_size)
        t = torch.arange(batch_size) % self.timesteps
        return x_t, t, torch.arange(batch_size) % (self.num_classes + 1)

    def _coefficients(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Return sqrt(abar_t) and sqrt(1 - abar_t), each (B, 1, 1, 1), computed in float64."""
        abar = self.alphas_cumprod[t.to(self.alphas_cumprod.device)]
        signal = abar.sqrt().to(dtype)[:, None, None, None]
        noise = (1.0 - abar).sqrt().to(dtype)[:, None, None, None]
        return signal, noise

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) as sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        signal, sigma = self._coefficients(t, x0.dtype)
        return signal * x0 + sigma * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Return what the network learns to output: the noise, or v."""
        if self.prediction == Prediction.eps.value:
            return noise
        signal, sigma = self._coefficients(t, x0.dtype)
        return signal * noise - sigma * x0

    def predict_x0_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert a network output at (x_t, t) into the predicted clean image x_0 and noise eps."""
        signal, sigma = self._coefficients(t, x_t.dtype)
        output = output.to(x_t.dtype)
        if self.prediction == Prediction.eps.value:
            eps = output
            x0 = (x_t - sigma * eps) / signal
        else:
            x0 = signal * x_t - sigma * output
            eps = sigma * x_t + signal * output
        return x0, eps

    def draw(self, batch_size: int, generator: torch.Generator) -> Draws:
        """Draw a uniform step t in 0..T-1 and standard normal noise per example."""
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        t = torch.randint(self.timesteps, (batch_size,), generator=generator)
        noise = torch.randn(shape, generator=generator)
        return {"t": t, "noise": noise}

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Return the simple DDPM loss of each example (mean squared error over pixels), (B,)."""
        x0 = to_unit(images, self.levels)
        t, noise = draws["t"], draws["noise"]
        x_t = self.q_sample(x0, t, noise)
        output = self(x_t, t, labels).float()
        return (output - self.target(x0, t, noise)).square().mean(dim=(1, 2, 3))
