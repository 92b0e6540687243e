"""Diffusion sampling with diffusers' DDPMScheduler and DDIMScheduler.

The schedulers are built from the model's own ``alphas_cumprod`` (passed as trained betas),
so training and sampling share one noise schedule. Both run S steps respaced from the
model's T with diffusers' "trailing" spacing: the first step starts at t = T - 1, where
x_T is almost pure noise, and the last one ends at alpha_bar = 1. The default "leading"
spacing would start at (S - 1) * (T // S), well below T - 1 when S is small.

- ddpm: ancestral sampling, Ho et al. 2020, eq. 6-7 (posterior mean from the predicted x_0)
  with sigma_t^2 the posterior variance beta~_t or beta_t (their eq. 11 with sigma_t^2 = beta_t).
- ddim: Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 with sigma_t from
  eq. 16 scaled by eta; eta = 0 is deterministic given x_T.

The predicted x_0 is clipped to [-1, 1] at every step. Classifier-free guidance (Ho and
Salimans 2022) combines the two predictions as (1 + w) * cond - w * uncond, so w = 0
samples the conditional model alone; the unconditional prediction uses the label index
num_classes ("no label").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from genladder.config import Prediction, SamplerMethod
from genladder.sampling.pictures import PAD_VALUE, FrameTrace, side_by_side, unit_picture

DIFFUSERS_PREDICTION = {Prediction.eps: "epsilon", Prediction.v: "v_prediction"}
DIFFUSERS_VARIANCE = {"posterior": "fixed_small", "beta": "fixed_large"}
TIMESTEP_SPACING = "trailing"

if TYPE_CHECKING:
    from diffusers import DDIMScheduler, DDPMScheduler


def betas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """Return beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} (with alpha_bar_{-1} = 1), in float64."""
    abar = alphas_cumprod.detach().to("cpu", torch.float64)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return (1.0 - abar / previous).numpy()


def build_scheduler(
    model: nn.Module, method: SamplerMethod, steps: int | None, variance: str = "posterior"
) -> DDPMScheduler | DDIMScheduler:
    """Build the diffusers scheduler for `method` from the model's schedule, with S steps set.

    steps: the respaced number of steps S; None means all T steps. Raises ValueError when S
    exceeds T, or when S does not divide T for ddim, because DDIMScheduler (diffusers 0.42)
    steps from t to t - T // S whatever the spacing.
    """
    method = SamplerMethod(method)
    timesteps = int(model.timesteps)
    alphas_cumprod = model.alphas_cumprod
    if alphas_cumprod.shape != (timesteps,):
        raise ValueError(
            f"model.alphas_cumprod has shape {tuple(alphas_cumprod.shape)}, expected ({timesteps},)"
        )
    steps = timesteps if steps is None else int(steps)
    if not 1 <= steps <= timesteps:
        raise ValueError(f"invalid steps {steps}: the model has {timesteps} timesteps, use 1..{timesteps}")

    # Imported here: diffusers loads torch._dynamo (about 1.5 s), which only
    # diffusion sample stages need.
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(
        num_train_timesteps=timesteps,
        trained_betas=betas_from_alphas_cumprod(alphas_cumprod),
        prediction_type=DIFFUSERS_PREDICTION[Prediction(model.prediction)],
        clip_sample=True,
        clip_sample_range=1.0,
        timestep_spacing=TIMESTEP_SPACING,
    )
    if method is SamplerMethod.ddim:
        if timesteps % steps:
            raise ValueError(
                f"invalid ddim steps {steps}: it does not divide the model's {timesteps} timesteps; use a divisor"
            )
        scheduler = DDIMScheduler(**common, set_alpha_to_one=True)
    elif method is SamplerMethod.ddpm:
        if variance not in DIFFUSERS_VARIANCE:
            raise ValueError(f"invalid variance {variance!r}; allowed: {sorted(DIFFUSERS_VARIANCE)}")
        scheduler = DDPMScheduler(**common, variance_type=DIFFUSERS_VARIANCE[variance])
    else:
        raise ValueError(f"method {method.value!r} is not a diffusion sampler; use ddpm or ddim")
    scheduler.set_timesteps(steps)
    return scheduler


def guided_prediction(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    guidance: float,
    num_classes: int,
) -> torch.Tensor:
    """Return the model's prediction (B, C, H, W) of eps or v, with classifier-free guidance w.

    With w > 0 the conditional and unconditional inputs run as one batch of 2B, two network
    evaluations per image. Guidance combines v predictions the same way as eps ones, since at
    a fixed x_t each is an affine function of the other.
    """
    if guidance == 0.0:
        return model(x, t, labels).float()
    no_label = torch.full_like(labels, num_classes)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, no_label])).float()
    conditional, unconditional = both.chunk(2)
    return (1.0 + guidance) * conditional - guidance * unconditional


def denoise(
    model: nn.Module,
    labels: torch.Tensor,
    scheduler: DDPMScheduler | DDIMScheduler,
    *,
    shape: tuple[int, int, int],
    eta: float,
    guidance: float,
    num_classes: int,
    generator: torch.Generator,
    trace: FrameTrace | None = None,
    progress=None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the reverse process from x_T ~ N(0, I) and return x_0 as floats (B, C, H, W) in [-1, 1].

    model: a DiffusionModel, ``model(x_t, t, y) -> eps or v (B, C, H, W)`` with t long (B,).
    shape: (C, H, W) of one image. eta is used by DDIM only.
    noise: x_T to start from; by default drawn from the CPU `generator`, so a seed gives the
    same start on every device.
    progress: an object with ``update(1)`` (a tqdm bar), called after every step.
    """
    device = labels.device
    batch = labels.shape[0]
    if noise is None:
        noise = torch.randn((batch, *shape), generator=generator, dtype=torch.float32)
    x = noise.to(device)
    x0 = torch.full_like(x, -1.0 + 2.0 * PAD_VALUE)  # grey, shown before the first prediction
    if trace is not None:
        trace.record(0, lambda i: side_by_side(unit_picture(x[i]), unit_picture(x0[i])))

    timesteps = scheduler.timesteps.tolist()
    from diffusers import DDIMScheduler

    ddim = isinstance(scheduler, DDIMScheduler)
    for step, t in enumerate(timesteps):
        t_batch = torch.full((batch,), t, dtype=torch.long, device=device)
        prediction = guided_prediction(model, x, t_batch, labels, guidance, num_classes)

        if ddim:
            # use_clipped_model_output recomputes eps from the clipped x_0, so the direction
            # term of eq. 12 agrees with the x_0 that the step uses.
            out = scheduler.step(prediction, t, x, eta=eta, use_clipped_model_output=True, generator=generator)
        else:
            out = scheduler.step(prediction, t, x, generator=generator)
        x0 = out.pred_original_sample

        # The last step ends at alpha_bar = 1, where the posterior mean is the clipped x_0.
        # Taking it directly skips the noise that DDPMScheduler would add with beta_t
        # variance when the respaced chain does not end at t = 0.
        x = x0 if step == len(timesteps) - 1 else out.prev_sample

        if trace is not None:
            trace.record(step + 1, lambda i: side_by_side(unit_picture(x[i]), unit_picture(x0[i])))
        if progress is not None:
            progress.update(1)
    return x
