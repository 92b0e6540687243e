"""Diffusion samplers on fixture models whose optimal prediction is known in closed form.

For data x_0 ~ N(mu, s^2) per pixel and x_t = sqrt(a) x_0 + sqrt(1 - a) eps (a = alpha_bar_t),
x_t ~ N(sqrt(a) mu, v) with v = a s^2 + 1 - a, and the optimal predictors are
E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / v and E[x_0 | x_t] = mu + sqrt(a) s^2 (x_t - sqrt(a) mu) / v.
With them every sampler step is affine in x plus Gaussian noise, so the mean and variance of
its output follow exactly from a float64 recursion over the respaced steps.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDPMScheduler
from torch import nn

from genladder.config import ParamsError, Prediction, SamplerMethod, validate_params
from genladder.sampling.diffusion import build_scheduler, denoise, guided_prediction

REPO = Path(__file__).resolve().parents[1]
SHAPE = (1, 4, 4)
MU = torch.linspace(-0.2, 0.2, 16).view(SHAPE)
STD = torch.linspace(0.15, 0.25, 16).view(SHAPE)


def schedule(name: str, timesteps: int) -> torch.Tensor:
    """Return alpha_bar (T,) in float64: linear betas 1e-4..0.02 with both ends scaled by 1000 / T, or cosine."""
    if name == "linear":
        scale = 1000.0 / timesteps
        scheduler = DDPMScheduler(
            num_train_timesteps=timesteps, beta_schedule="linear", beta_start=scale * 1e-4, beta_end=scale * 0.02
        )
    else:
        scheduler = DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="squaredcos_cap_v2")
    return scheduler.alphas_cumprod.double()


class GaussianModel(nn.Module):
    """A DiffusionModel that returns the optimal eps or v for Gaussian data N(MU, STD^2)."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str = "eps"):
        super().__init__()
        self.register_buffer("alphas_cumprod", alphas_cumprod)
        self.timesteps = len(alphas_cumprod)
        self.prediction = Prediction(prediction)
        self.schedule = "fixture"
        self.calls: list[tuple[int, torch.Tensor]] = []

    def forward(self, x_t, t, y):
        self.calls.append((x_t.shape[0], y.clone()))
        a = self.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        variance = a * STD**2 + 1 - a
        centred = x_t - a.sqrt() * MU
        eps = (1 - a).sqrt() * centred / variance
        if self.prediction is Prediction.eps:
            return eps
        x0 = MU + a.sqrt() * STD**2 * centred / variance
        return a.sqrt() * eps - (1 - a).sqrt() * x0


def trailing(timesteps: int, steps: int) -> list[int]:
    """Respaced timesteps T-1, ..., ending at T/S - 1: t_i = round(T - i T / S) - 1."""
    return [int(round(timesteps - i * timesteps / steps)) - 1 for i in range(steps)]


def exact_moments(abar: np.ndarray, steps: list[int], method: str, eta: float, variance: str):
    """Return the per-pixel mean and std of the sampler's output, for x_T ~ N(0, 1) and no clipping."""
    mu, s2 = MU.double().numpy(), STD.double().numpy() ** 2
    mean, var = np.zeros_like(mu), np.ones_like(mu)
    for i, t in enumerate(steps):
        a = abar[t]
        a_prev = abar[steps[i + 1]] if i + 1 < len(steps) else 1.0
        v = a * s2 + 1 - a
        # x0_hat = k x + c and eps_hat = (x - sqrt(a) x0_hat) / sqrt(1 - a), both affine in x.
        k = math.sqrt(a) * s2 / v
        c = (1 - k * math.sqrt(a)) * mu
        if i + 1 == len(steps):
            return k * mean + c, np.sqrt(k**2 * var)
        if method == "ddim":
            # Song et al. 2021, eq. 12 and 16.
            sigma2 = eta**2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
            direction = math.sqrt(1 - a_prev - sigma2) / math.sqrt(1 - a)
            gain = math.sqrt(a_prev) * k + direction * (1 - math.sqrt(a) * k)
            shift = math.sqrt(a_prev) * c - direction * math.sqrt(a) * c
        else:
            # Ho et al. 2020, eq. 7: posterior mean from x0_hat, with beta_t for the respaced pair.
            beta = 1 - a / a_prev
            c_x0 = math.sqrt(a_prev) * beta / (1 - a)
            c_xt = math.sqrt(a / a_prev) * (1 - a_prev) / (1 - a)
            gain, shift = c_x0 * k + c_xt, c_x0 * c
            sigma2 = (1 - a_prev) / (1 - a) * beta if variance == "posterior" else beta
        mean = gain * mean + shift
        var = gain**2 * var + sigma2
    raise AssertionError("no steps")


def sample(model, method, steps, eta=0.0, variance="posterior", count=4000, seed=0, noise=None, guidance=0.0):
    scheduler = build_scheduler(model, SamplerMethod(method), steps, variance)
    labels = torch.zeros(count, dtype=torch.long)
    return denoise(
        model, labels, scheduler, shape=SHAPE, eta=eta, guidance=guidance, num_classes=10,
        generator=torch.Generator().manual_seed(seed), noise=noise,
    )


# (method, steps, eta, variance) on T = 200
SAMPLERS = [
    ("ddim", 10, 0.0, "posterior"),
    ("ddim", 50, 0.0, "posterior"),
    ("ddim", 40, 1.0, "posterior"),
    ("ddim", 200, 0.5, "posterior"),
    ("ddpm", None, 0.0, "posterior"),
    ("ddpm", None, 0.0, "beta"),
    ("ddpm", 50, 0.0, "posterior"),
    ("ddpm", 30, 0.0, "beta"),
]


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("method, steps, eta, variance", SAMPLERS, ids=lambda v: str(v))
def test_gaussian_moments_match_exact_recursion(schedule_name, prediction, method, steps, eta, variance):
    timesteps = 200
    abar = schedule(schedule_name, timesteps)
    model = GaussianModel(abar, prediction)
    x = sample(model, method, steps, eta, variance)

    expected_mean, expected_std = exact_moments(abar.numpy(), trailing(timesteps, steps or timesteps), method, eta, variance)
    z = (x.double() - torch.from_numpy(expected_mean)) / torch.from_numpy(expected_std)
    n = z.numel()
    assert abs(z.mean().item()) < 4 / math.sqrt(n), "mean differs from the exact recursion"
    assert abs(z.std().item() - 1) < 4 / math.sqrt(2 * n), "std differs from the exact recursion"


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("method, eta, variance", [("ddpm", 0.0, "posterior"), ("ddpm", 0.0, "beta"), ("ddim", 0.0, "posterior")])
def test_full_chain_reproduces_data(schedule_name, method, eta, variance):
    # With all T = 1000 steps the discretization error is small, so the samples follow N(MU, STD^2).
    model = GaussianModel(schedule(schedule_name, 1000))
    x = sample(model, method, None, eta, variance, count=1000)
    z = (x - MU) / STD
    assert abs(z.mean().item()) < 0.05
    assert abs(z.std().item() - 1) < 0.06
    assert (x.mean(0) - MU).abs().max() < 0.03


def test_ddim_eta_zero_is_deterministic():
    model = GaussianModel(schedule("cosine", 100))
    noise = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(0))
    first = sample(model, "ddim", 10, eta=0.0, count=64, seed=1, noise=noise)
    second = sample(model, "ddim", 10, eta=0.0, count=64, seed=2, noise=noise)
    stochastic = sample(model, "ddim", 10, eta=1.0, count=64, seed=1, noise=noise)
    ancestral = sample(model, "ddpm", 10, count=64, seed=1, noise=noise)
    assert torch.equal(first, second)
    assert not torch.allclose(first, stochastic)
    assert not torch.allclose(first, ancestral)


def test_same_seed_same_samples():
    model = GaussianModel(schedule("linear", 100))
    assert torch.equal(sample(model, "ddpm", 20, count=32, seed=5), sample(model, "ddpm", 20, count=32, seed=5))
    assert not torch.equal(sample(model, "ddpm", 20, count=32, seed=5), sample(model, "ddpm", 20, count=32, seed=6))


def test_eps_and_v_models_give_same_samples():
    abar = schedule("cosine", 100)
    noise = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(0))
    eps = sample(GaussianModel(abar, "eps"), "ddim", 20, count=64, noise=noise)
    v = sample(GaussianModel(abar, "v"), "ddim", 20, count=64, noise=noise)
    torch.testing.assert_close(eps, v, atol=1e-4, rtol=0)


class LinearEpsModel(nn.Module):
    """A DiffusionModel predicting eps = 0.3 x_t, for checking one step by hand."""

    def __init__(self, alphas_cumprod):
        super().__init__()
        self.register_buffer("alphas_cumprod", alphas_cumprod)
        self.timesteps = len(alphas_cumprod)
        self.prediction = "eps"

    def forward(self, x_t, t, y):
        return 0.3 * x_t


def test_ddpm_two_steps_golden():
    abar = torch.linspace(0.99, 0.5, 10, dtype=torch.float64)
    model = LinearEpsModel(abar)
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn(8, *SHAPE, generator=generator)
    xi = torch.randn(8, *SHAPE, generator=generator)  # the step noise, drawn next from the same generator

    x = sample(model, "ddpm", 2, variance="beta", count=8, seed=0)

    # Trailing steps of T=10, S=2 are t=9 then t=4.
    a, a_prev = abar[9].item(), abar[4].item()
    x0 = ((x_T - math.sqrt(1 - a) * 0.3 * x_T) / math.sqrt(a)).clamp(-1, 1)
    beta = 1 - a / a_prev
    mean = math.sqrt(a_prev) * beta / (1 - a) * x0 + math.sqrt(a / a_prev) * (1 - a_prev) / (1 - a) * x_T
    x_4 = mean + math.sqrt(beta) * xi
    expected = ((x_4 - math.sqrt(1 - a_prev) * 0.3 * x_4) / math.sqrt(a_prev)).clamp(-1, 1)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=1e-5)


def test_single_ddim_step_returns_clipped_x0():
    abar = torch.linspace(0.99, 0.5, 10, dtype=torch.float64)
    x_T = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(0)) * 2
    x = sample(LinearEpsModel(abar), "ddim", 1, count=8, noise=x_T)
    a = abar[9].item()
    expected = ((x_T - math.sqrt(1 - a) * 0.3 * x_T) / math.sqrt(a)).clamp(-1, 1)
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=1e-6)
    assert (x.abs() == 1).any(), "the fixture should exercise clipping"


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [100, 500])
def test_scheduler_uses_model_schedule(schedule_name, timesteps):
    abar = schedule(schedule_name, timesteps)
    for method in (SamplerMethod.ddpm, SamplerMethod.ddim):
        scheduler = build_scheduler(GaussianModel(abar), method, None)
        torch.testing.assert_close(scheduler.alphas_cumprod.double(), abar, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "method, steps, expected",
    [
        ("ddim", 5, [499, 399, 299, 199, 99]),
        ("ddim", 1, [499]),
        ("ddpm", 4, [499, 374, 249, 124]),
        ("ddpm", 3, [499, 332, 166]),
    ],
)
def test_respaced_timesteps_start_at_last_step(method, steps, expected):
    scheduler = build_scheduler(GaussianModel(schedule("cosine", 500)), SamplerMethod(method), steps)
    assert scheduler.timesteps.tolist() == expected


def test_all_steps_when_steps_is_none():
    scheduler = build_scheduler(GaussianModel(schedule("cosine", 50)), SamplerMethod.ddpm, None)
    assert scheduler.timesteps.tolist() == list(range(49, -1, -1))


@pytest.mark.parametrize(
    "method, steps, message",
    [("ddim", 30, "does not divide"), ("ddpm", 300, "use 1..200"), ("ddim", 0, "use 1..200")],
)
def test_scheduler_rejects_bad_steps(method, steps, message):
    with pytest.raises(ValueError, match=message):
        build_scheduler(GaussianModel(schedule("linear", 200)), SamplerMethod(method), steps)


class LabelModel(nn.Module):
    """A DiffusionModel whose prediction is label + 1 everywhere."""

    timesteps = 10
    prediction = "eps"

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x_t, t, y):
        self.calls.append(x_t.shape[0])
        return (y.float() + 1).view(-1, 1, 1, 1).expand_as(x_t)


@pytest.mark.parametrize("guidance", [0.0, 0.5, 3.0])
def test_guidance_combines_conditional_and_unconditional(guidance):
    model, num_classes = LabelModel(), 10
    x = torch.zeros(4, *SHAPE)
    labels = torch.tensor([0, 1, 2, 9])
    out = guided_prediction(model, x, torch.zeros(4, dtype=torch.long), labels, guidance, num_classes)
    conditional = (labels.float() + 1).view(-1, 1, 1, 1)
    unconditional = float(num_classes + 1)
    torch.testing.assert_close(out, ((1 + guidance) * conditional - guidance * unconditional).expand_as(x))
    assert model.calls == ([4] if guidance == 0 else [8])


def test_guidance_sends_no_label_index():
    model = GaussianModel(schedule("cosine", 20))
    sample(model, "ddim", 5, count=6, guidance=1.5)
    assert len(model.calls) == 5
    for batch, labels in model.calls:
        assert batch == 12
        assert labels[:6].eq(0).all()
        assert labels[6:].eq(10).all()


DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())


def params_with_sampler(sampler: dict, timesteps: int = 500) -> dict:
    raw = copy.deepcopy(DEFAULTS)
    raw["variants"]["diffusion"]["timesteps"] = timesteps
    raw["samplers"] = {"s": {"variant": "diffusion", **sampler}}
    return raw


@pytest.mark.parametrize(
    "sampler, expected",
    [
        ({"method": "ddim", "steps": 30}, ["samplers.s.steps is 30", "does not divide", "(500)", "[1, 2, 4, 5,"]),
        ({"method": "ddpm", "steps": 600}, ["samplers.s.steps is 600", "at most 500"]),
        ({"method": "ddpm", "variance": "learned"}, ["samplers.s.variance", "'learned'", "posterior", "beta"]),
        ({"method": "ddim", "eta": 1.5}, ["samplers.s.eta", "1.5"]),
        ({"method": "ddim", "guidance": -1}, ["samplers.s.guidance", "-1"]),
    ],
)
def test_params_reject_diffusion_sampler(sampler, expected):
    with pytest.raises(ParamsError) as caught:
        validate_params(params_with_sampler(sampler))
    for part in expected:
        assert part in str(caught.value)


@pytest.mark.parametrize("sampler", [{"method": "ddpm", "steps": 30}, {"method": "ddim", "steps": 25}, {"method": "ddpm"}])
def test_params_accept_diffusion_sampler(sampler):
    params = validate_params(params_with_sampler(sampler))
    assert params.samplers["s"].method.value == sampler["method"]
