"""Sampler runs end to end on fixture models: samples.npz, grid.png, process.gif and info.json."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDPMScheduler
from PIL import Image
from torch import nn

from genladder.config import ParamsError, Prediction, SamplerConfig, SamplingConfig, validate_params
from genladder.runtime import DataError
from genladder.sampling import check_model, run_sampler, sampler_seed, write_outputs
from genladder.sampling.pictures import MAX_FRAMES, PAD_VALUE, frame_states, tile
from genladder.sampling.run import animated_indices

REPO = Path(__file__).resolve().parents[1]
META = {"image_size": 8, "channels": 1, "levels": 8, "num_classes": 3, "source": "fixture"}
SAMPLING = SamplingConfig(per_class=3, batch_size=4, animate=4, seed=0)
SCALE = 8  # grid.png upscale for 8-pixel images
GIF_SCALE = 6  # process.gif upscale for 8-pixel images
FILES = ("samples.npz", "grid.png", "process.gif", "info.json")


class RegressionFixture(nn.Module):
    """A RegressionModel returning a class-dependent ramp that overshoots [-1, 1]."""

    def forward(self, y):
        ramp = torch.linspace(-1.5, 1.5, 64).view(1, 1, 8, 8)
        return ramp + 0.1 * y.float().view(-1, 1, 1, 1)


class ARFixture(nn.Module):
    """An ARModel with fixed random logits per class and pixel, shifted by the known pixels' mean."""

    levels = 8

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("base", torch.randn(4, 1, 8, 8, 8, generator=generator))

    def forward(self, x, known, y):
        mask = known.float()
        mean_known = (x.float() * mask).sum((2, 3)) / mask.sum((2, 3)).clamp(min=1.0)
        return self.base[y] + 0.2 * mean_known[:, :, None, None, None]


class DiffusionFixture(nn.Module):
    """A DiffusionModel predicting the optimal eps for per-class Gaussian data N(0.5 y - 0.5, 0.2^2)."""

    def __init__(self, timesteps: int = 20):
        super().__init__()
        scheduler = DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="squaredcos_cap_v2")
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.double())
        self.timesteps = timesteps
        self.prediction = Prediction.eps
        self.schedule = "cosine"

    def forward(self, x_t, t, y):
        a = self.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        mu = (0.5 * y.float() - 0.5).clamp(max=1.0).view(-1, 1, 1, 1)  # the "no label" index gets 1.0
        return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * 0.04 + 1 - a)


SAMPLERS = {
    "regression": ({"variant": "regression", "method": "regression"}, RegressionFixture, 1),
    "raster_greedy": ({"variant": "ar", "method": "ar", "order": "raster", "greedy": True}, ARFixture, 64),
    "random4": ({"variant": "ar", "method": "ar", "order": "random", "group": 4}, ARFixture, 16),
    "spread2": ({"variant": "ar", "method": "ar", "order": "spread", "group": 2, "temperature": 0.7}, ARFixture, 16),
    "ddim5": ({"variant": "diffusion", "method": "ddim", "steps": 5}, DiffusionFixture, 5),
    "ddpm": ({"variant": "diffusion", "method": "ddpm"}, DiffusionFixture, 20),
    "ddim4_guided": ({"variant": "diffusion", "method": "ddim", "steps": 4, "guidance": 2.0}, DiffusionFixture, 8),
}


def run_and_write(name: str, out_dir: Path, sampling: SamplingConfig = SAMPLING) -> dict:
    config, model_class, _ = SAMPLERS[name]
    sampler = SamplerConfig(**config)
    result = run_sampler(name, sampler, sampling, model_class().eval(), META, torch.device("cpu"))
    return write_outputs(out_dir, name, sampler, result, META["levels"])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_outputs_written_with_right_shapes(name, tmp_path):
    info = run_and_write(name, tmp_path)

    for file_name in FILES:
        assert (tmp_path / file_name).is_file(), file_name
    assert not list(tmp_path.glob(".*")), "a temporary file was left behind"

    with np.load(tmp_path / "samples.npz") as arrays:
        images, labels = arrays["images"], arrays["labels"]
    assert images.dtype == np.uint8
    assert images.shape == (9, 1, 8, 8)
    assert images.max() <= META["levels"] - 1
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [3, 3, 3]

    # One row per class, three samples each, cells of 8 * SCALE pixels with 2-pixel padding.
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (3 * (8 * SCALE + 2) + 2, 3 * (8 * SCALE + 2) + 2)

    _, _, nfe = SAMPLERS[name]
    with Image.open(tmp_path / "process.gif") as gif:
        frames = gif.n_frames
        # Four samples, two source pixels apart; diffusion shows x_t and x_0 with a divider.
        panel = 8 if SAMPLERS[name][1] is not DiffusionFixture else 2 * 8 + 1
        assert gif.size == ((4 * (panel + 2) + 2) * GIF_SCALE, (8 + 4) * GIF_SCALE)
    if name == "regression":
        assert frames == 1
    else:
        steps = nfe // 2 if "guided" in name else nfe
        assert frames == min(steps + 1, MAX_FRAMES)

    written = json.loads((tmp_path / "info.json").read_text())
    assert written == info
    assert written["sampler"] == name
    assert written["nfe"] == nfe
    assert written["num_samples"] == 9
    assert written["seconds_total"] > 0
    assert written["seconds_per_image"] == pytest.approx(written["seconds_total"] / 9, rel=1e-3)
    assert written["settings"]["generator_seed"] == sampler_seed(0, name)


def test_regression_output_rounds_to_levels(tmp_path):
    run_and_write("regression", tmp_path)
    with np.load(tmp_path / "samples.npz") as arrays:
        images = arrays["images"]
    ramp = torch.linspace(-1.5, 1.5, 64).clamp(-1, 1)
    expected = ((ramp + 1) * 3.5).round().to(torch.uint8).view(8, 8).numpy()  # class 0, L = 8
    assert np.array_equal(images[0, 0], expected)
    assert images.min() == 0
    assert images.max() == 7


@pytest.mark.parametrize("name", ["random4", "ddpm", "ddim5"])
def test_rerun_writes_identical_bytes(name, tmp_path):
    run_and_write(name, tmp_path / "first")
    run_and_write(name, tmp_path / "second")
    for file_name in ("samples.npz", "grid.png", "process.gif"):
        first = (tmp_path / "first" / file_name).read_bytes()
        assert first == (tmp_path / "second" / file_name).read_bytes(), file_name


def test_sampler_name_changes_noise(tmp_path):
    config, model_class, _ = SAMPLERS["random4"]
    sampler = SamplerConfig(**config)
    model = model_class().eval()
    first = run_sampler("random4", sampler, SAMPLING, model, META, torch.device("cpu"))
    renamed = run_sampler("random4_copy", sampler, SAMPLING, model, META, torch.device("cpu"))
    assert not torch.equal(first.images, renamed.images)


def test_sampler_seed_is_stable():
    # Golden values: a change here changes every sampler's output.
    assert sampler_seed(0, "ddim5") == sampler_seed(0, "ddim5")
    assert sampler_seed(0, "ddim5") != sampler_seed(1, "ddim5")
    assert sampler_seed(0, "ddim5") != sampler_seed(0, "ddim10")
    assert 0 <= sampler_seed(123, "raster_t1") < 2**63
    assert sampler_seed(0, "ddim5") == 2703127231375495953
    assert sampler_seed(0, "raster_t1") == 1958244885065440366


def test_batch_size_does_not_change_counts(tmp_path):
    for batch_size in (1, 2, 9, 100):
        sampling = SamplingConfig(per_class=3, batch_size=batch_size, animate=3, seed=0)
        info = run_and_write("spread2", tmp_path / str(batch_size), sampling)
        assert info["num_samples"] == 9
        with Image.open(tmp_path / str(batch_size) / "process.gif") as gif:
            assert gif.size[0] == (3 * (8 + 2) + 2) * GIF_SCALE


@pytest.mark.parametrize("total, count, expected", [(9, 4, [0, 2, 4, 6]), (1000, 8, list(range(0, 1000, 125))), (3, 8, [0, 1, 2])])
def test_animated_indices_spread_over_classes(total, count, expected):
    assert animated_indices(total, count) == expected


@pytest.mark.parametrize(("count", "columns", "padding"), [(7, 3, 2), (4, 4, 6), (2, 10, 1)])
def test_tile_matches_torchvision_make_grid(count, columns, padding):
    from torchvision.utils import make_grid

    pictures = torch.rand(count, 3, 5, 4)
    expected = make_grid(pictures, nrow=columns, padding=padding, pad_value=PAD_VALUE)
    assert torch.equal(tile(pictures, columns, padding), expected)


@pytest.mark.parametrize("steps", [1, 5, 59, 60, 256, 1000])
def test_frame_states_capped(steps):
    states = frame_states(steps)
    assert len(states) <= MAX_FRAMES
    assert states[0] == 0
    assert states[-1] == steps
    assert states == sorted(set(states))


@pytest.mark.parametrize(
    "name, paradigm, message",
    [
        ("ddim5", "ar", "contains a ar model, but method ddim needs a diffusion model"),
        ("random4", "diffusion", "needs a ar model"),
    ],
)
def test_check_model_rejects_wrong_paradigm(name, paradigm, message):
    config, model_class, _ = SAMPLERS[name]
    with pytest.raises(DataError, match=message):
        check_model(SamplerConfig(**config), paradigm, model_class(), META)


def test_check_model_rejects_mismatched_checkpoint():
    ar = ARFixture()
    with pytest.raises(DataError, match="trained on 8x8 images.*train@ar"):
        check_model(SamplerConfig(variant="ar", method="ar", order="patch", group=3), "ar", ar, META)
    with pytest.raises(DataError, match="predicts 8 levels but its data has 16"):
        check_model(SamplerConfig(variant="ar", method="ar"), "ar", ar, {**META, "levels": 16})
    with pytest.raises(DataError, match="steps 8 does not fit the model's 20 timesteps"):
        check_model(SamplerConfig(variant="diffusion", method="ddim", steps=8), "diffusion", DiffusionFixture(), META)


def test_params_reject_zero_animate():
    raw = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    raw["sampling"]["animate"] = 0
    with pytest.raises(ParamsError, match="sampling.animate"):
        validate_params(raw)


# ---------------------------------------------------------------------------
# The stage script, run as DVC runs it, in a copy holding only params and dvc.yaml
# ---------------------------------------------------------------------------


def run_stage(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "sample.py"), *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def stage_dir(tmp_path: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tracking"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path


def test_stage_unknown_sampler_lists_known(stage_dir):
    result = run_stage(stage_dir, "ddim7")
    assert result.returncode == 2, result.stderr
    assert "unknown sampler 'ddim7'" in result.stderr
    assert "ddim5" in result.stderr
    assert "raster_greedy" in result.stderr


def test_stage_missing_model_names_file_and_command(stage_dir):
    result = run_stage(stage_dir, "ddim5")
    assert result.returncode == 2, result.stderr
    assert str(stage_dir / "models" / "diffusion" / "model.pt") in result.stderr
    assert "dvc repro train@diffusion" in result.stderr
    assert not (stage_dir / "samples").exists()
