"""Diffusion schedules and the forward process q(x_t | x_0), against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from genladder.config import BackboneConfig, VariantConfig
from genladder.models import build_model
from genladder.paradigms.diffusion import DiffusionModel, cosine_betas, linear_betas

SCHEDULES = ["linear", "cosine"]


def diffusion(schedule="cosine", prediction="eps", timesteps=100) -> DiffusionModel:
    variant = VariantConfig(paradigm="diffusion", timesteps=timesteps, schedule=schedule, prediction=prediction)
    data = {"channels": 1, "image_size": 8, "levels": 16, "num_classes": 10}
    return build_model(variant, BackboneConfig(width=8, channel_mult=[1, 2]), data, seed=0)


def test_linear_betas_golden():
    betas = linear_betas(1000)
    assert betas.dtype == torch.float64
    assert math.isclose(float(betas[0]), 1e-4)
    assert math.isclose(float(betas[-1]), 0.02)
    assert math.isclose(float(betas[499] - betas[498]), (0.02 - 1e-4) / 999, rel_tol=1e-9)
    # Ho et al. 2020 report abar_T close to 4e-5 at T = 1000.
    assert math.isclose(float(torch.prod(1 - betas)), 4.0358e-5, rel_tol=1e-3)


def test_linear_betas_scale_with_steps():
    betas = linear_betas(250)
    assert math.isclose(float(betas[0]), 4e-4)
    assert math.isclose(float(betas[-1]), 0.08)
    short = linear_betas(10)
    assert math.isclose(float(short[0]), 0.01)
    assert float(short.max()) == 0.999


@pytest.mark.parametrize("timesteps", [10, 100, 1000])
def test_cosine_alphas_cumprod_closed_form(timesteps):
    betas = cosine_betas(timesteps)
    abar = torch.cumprod(1 - betas, dim=0)

    def f(t: float) -> float:
        return math.cos((t / timesteps + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (1, timesteps // 2, timesteps - 1):
        # abar at 0-based index t - 1 is f(t) / f(0) wherever beta was not clipped at 0.999.
        assert math.isclose(float(abar[t - 1]), f(t) / f(0), rel_tol=1e-9, abs_tol=1e-12)
    assert float(betas.max()) <= 0.999
    assert math.isclose(float(betas[-1]), 0.999)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("timesteps", [10, 500])
def test_alphas_cumprod_buffer(schedule, timesteps):
    model = diffusion(schedule, timesteps=timesteps)
    abar = model.alphas_cumprod
    assert abar.shape == (timesteps,)
    assert abar.dtype == torch.float64
    assert torch.all(abar[1:] < abar[:-1])
    assert 0.97 < float(abar[0]) < 1.0
    assert float(abar[-1]) < 0.01
    assert "alphas_cumprod" in dict(model.named_buffers())
    torch.testing.assert_close(abar, torch.cumprod(1 - model.betas, dim=0))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("step", [0, 30, 99])
def test_q_sample_mean_and_variance(schedule, step):
    model = diffusion(schedule)
    draws = 20_000
    generator = torch.Generator().manual_seed(step)
    x0 = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    noise = torch.randn(draws, 1, 8, 8, generator=generator)
    t = torch.full((draws,), step)
    x_t = model.q_sample(x0.expand(draws, -1, -1, -1), t, noise).double()

    abar = float(model.alphas_cumprod[step])
    mean_tolerance = 5 * math.sqrt((1 - abar) / draws) + 1e-6
    variance_tolerance = 5 * (1 - abar) * math.sqrt(2 / draws) + 1e-9
    assert torch.all((x_t.mean(0) - math.sqrt(abar) * x0[0].double()).abs() < mean_tolerance)
    assert torch.all((x_t.var(0) - (1 - abar)).abs() < variance_tolerance)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_predict_x0_eps_inverts_target(prediction):
    model = diffusion("linear", prediction)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 1, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(5, 1, 8, 8, generator=generator)
    t = torch.tensor([0, 10, 50, 90, 99])
    x_t = model.q_sample(x0, t, noise)
    x0_hat, eps_hat = model.predict_x0_eps(x_t, t, model.target(x0, t, noise))
    torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-4, atol=1e-4)


def test_v_target_closed_form():
    model = diffusion("cosine", "v")
    x0, noise = torch.full((1, 1, 8, 8), 0.5), torch.full((1, 1, 8, 8), -1.0)
    t = torch.tensor([40])
    abar = float(model.alphas_cumprod[40])
    expected = math.sqrt(abar) * -1.0 - math.sqrt(1 - abar) * 0.5
    torch.testing.assert_close(model.target(x0, t, noise), torch.full((1, 1, 8, 8), expected))


def test_draw_covers_steps_and_is_standard_normal():
    model = diffusion(timesteps=10)
    draws = model.draw(5000, torch.Generator().manual_seed(0))
    assert set(draws["t"].tolist()) == set(range(10))
    assert draws["noise"].shape == (5000, 1, 8, 8)
    assert abs(float(draws["noise"].mean())) < 0.01
    assert abs(float(draws["noise"].std()) - 1) < 0.01


def test_forward_sees_step():
    model = diffusion()
    with torch.no_grad():
        for param in model.parameters():
            if torch.count_nonzero(param) == 0:
                param.normal_(0.0, 0.1)
    x_t = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    out = model(x_t, torch.tensor([1, 90]), torch.tensor([2, 2]))
    assert not torch.allclose(out[0], out[1])
