"""Run one sampler of params.yaml on a trained model, and write its outputs.

Every sampler generates ``sampling.per_class`` images for every class, in batches of
``sampling.batch_size``, from one CPU generator seeded with ``sampling.seed`` combined with
a stable hash of the sampler name. On CPU a rerun therefore writes identical samples; the
images depend on the batch size, because the random draws are taken batch by batch.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from genladder.config import Paradigm, SamplerConfig, SamplerMethod, SamplingConfig
from genladder.data import from_unit, save_split
from genladder.orders import OrderError, check_fits, group_pixels
from genladder.runtime import DataError, write_json
from genladder.sampling import ar, diffusion, regression
from genladder.sampling.pictures import FrameTrace, class_grid, save_gif, save_png

log = logging.getLogger(__name__)

METHOD_PARADIGM = {
    SamplerMethod.regression: Paradigm.regression,
    SamplerMethod.ar: Paradigm.ar,
    SamplerMethod.ddpm: Paradigm.diffusion,
    SamplerMethod.ddim: Paradigm.diffusion,
}
GUIDANCE_FORM = "(1 + w) * cond - w * uncond"


@dataclass
class SampleResult:
    """Generated images with their cost and the frames of the animation."""

    images: torch.Tensor  # uint8 (N, C, H, W), levels 0..L-1, on CPU
    labels: torch.Tensor  # int64 (N,), the requested classes
    frames: torch.Tensor  # float (F, K, 3, H, W') in [0, 1], the generation of K samples
    nfe: int  # network evaluations per image
    seconds_total: float  # wall time of the sampling loop, model loading excluded
    settings: dict[str, Any] = field(default_factory=dict)


def sampler_seed(seed: int, name: str) -> int:
    """Combine sampling.seed with the sampler name into a 63-bit seed, stable across runs.

    Python's hash() of a string changes between processes, so SHA-256 is used instead.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def class_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """Return labels 0,0,..,1,1,..: `per_class` of every class, as int64 (N,)."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def animated_indices(total: int, count: int) -> list[int]:
    """Pick `count` sample indices spread evenly over 0..total-1, so the animation spans the classes."""
    count = min(count, total)
    return [i * total // count for i in range(count)]


def steps_per_image(sampler: SamplerConfig, model: nn.Module, height: int, width: int) -> int:
    """Return the sampler's number of steps: groups for ar, respaced steps for diffusion, 1 for regression."""
    if sampler.method is SamplerMethod.regression:
        return 1
    if sampler.method is SamplerMethod.ar:
        return height * width // group_pixels(sampler.order, sampler.group)
    return int(model.timesteps) if sampler.steps is None else sampler.steps


def network_evaluations(sampler: SamplerConfig, steps: int) -> int:
    """Return the network evaluations per image; guided diffusion runs two per step."""
    guided = sampler.method in (SamplerMethod.ddpm, SamplerMethod.ddim) and sampler.guidance > 0
    return steps * 2 if guided else steps


def check_model(sampler: SamplerConfig, paradigm: str, model: nn.Module, meta: dict) -> None:
    """Raise DataError when a checkpoint does not fit the sampler, naming the retraining command."""
    retrain = f"rerun `dvc repro train@{sampler.variant}`"
    expected = METHOD_PARADIGM[sampler.method]
    if paradigm != expected.value:
        raise DataError(
            f"models/{sampler.variant}/model.pt contains a {paradigm} model, but method "
            f"{sampler.method.value} needs a {expected.value} model; {retrain}"
        )
    side = int(meta["image_size"])
    if sampler.method is SamplerMethod.ar:
        try:
            check_fits(sampler.order, sampler.group, side, side)
        except OrderError as exc:
            raise DataError(f"the model was trained on {side}x{side} images, where {exc}; {retrain}") from None
        if int(model.levels) != int(meta["levels"]):
            raise DataError(
                f"the model predicts {model.levels} levels but its data has {meta['levels']}; {retrain}"
            )
    if sampler.method in (SamplerMethod.ddpm, SamplerMethod.ddim) and sampler.steps is not None:
        timesteps = int(model.timesteps)
        if sampler.steps > timesteps or (sampler.method is SamplerMethod.ddim and timesteps % sampler.steps):
            raise DataError(
                f"steps {sampler.steps} does not fit the model's {timesteps} timesteps "
                f"(ddim needs a divisor of T, ddpm at most T); {retrain}"
            )


def method_settings(sampler: SamplerConfig, model: nn.Module, scheduler) -> dict[str, Any]:
    """Return the settings that define this sampler's output, for info.json and MLflow."""
    if sampler.method is SamplerMethod.ar:
        return {
            "order": sampler.order.value,
            "group": sampler.group,
            "group_pixels": group_pixels(sampler.order, sampler.group),
            "greedy": sampler.greedy,
            "temperature": None if sampler.greedy else sampler.temperature,
        }
    if sampler.method is SamplerMethod.regression:
        return {}
    settings = {
        "train_timesteps": int(model.timesteps),
        "schedule": str(getattr(model, "schedule", "unknown")),
        "prediction": str(getattr(model.prediction, "value", model.prediction)),
        "timestep_spacing": diffusion.TIMESTEP_SPACING,
        "first_timestep": int(scheduler.timesteps[0]),
        "guidance": sampler.guidance,
        "guidance_form": GUIDANCE_FORM,
        "clip_x0": True,
    }
    if sampler.method is SamplerMethod.ddim:
        settings["eta"] = sampler.eta
    else:
        settings["variance"] = sampler.variance
    return settings


def run_sampler(
    name: str,
    sampler: SamplerConfig,
    sampling: SamplingConfig,
    model: nn.Module,
    meta: dict,
    device: torch.device,
) -> SampleResult:
    """Generate sampling.per_class images of every class with one sampler.

    model: the paradigm module in eval mode on `device`; meta: the prepared data's meta dict
    (image_size, channels, levels, num_classes).

    NOTE: tests run only on CPU. On CUDA every random draw still comes from the CPU
    generator and is moved to the device, but that path has not been run.
    """
    side, channels = int(meta["image_size"]), int(meta["channels"])
    levels, num_classes = int(meta["levels"]), int(meta["num_classes"])
    labels = class_labels(num_classes, sampling.per_class)
    total = labels.shape[0]
    steps = steps_per_image(sampler, model, side, side)
    seed = sampler_seed(sampling.seed, name)
    generator = torch.Generator().manual_seed(seed)
    scheduler = None
    if sampler.method in (SamplerMethod.ddpm, SamplerMethod.ddim):
        scheduler = diffusion.build_scheduler(model, sampler.method, sampler.steps, sampler.variance)

    animated = animated_indices(total, sampling.animate)
    batches = range(0, total, sampling.batch_size)
    log.info(
        "sampler %s: %s on %s, %d images in %d batches, %d steps each, seed %d",
        name, sampler.method.value, device, total, len(batches), steps, seed,
    )

    images, frames = [], []
    bar = tqdm(total=len(batches) * steps, desc=f"sample@{name}", unit="step", mininterval=1.0)
    started = time.perf_counter()
    with torch.inference_mode(), bar:
        for start in batches:
            batch_labels = labels[start : start + sampling.batch_size].to(device)
            traced = [i - start for i in animated if start <= i < start + len(batch_labels)]
            trace = FrameTrace(torch.tensor(traced, dtype=torch.long), steps) if traced else None

            if sampler.method is SamplerMethod.regression:
                unit = regression.predict(model, batch_labels, trace=trace, progress=bar)
                batch_images = from_unit(unit, levels)
            elif sampler.method is SamplerMethod.ar:
                batch_images = ar.decode(
                    model, batch_labels, height=side, width=side, channels=channels,
                    family=sampler.order, group=sampler.group, greedy=sampler.greedy,
                    temperature=sampler.temperature, generator=generator, trace=trace, progress=bar,
                )
            else:
                unit = diffusion.denoise(
                    model, batch_labels, scheduler, shape=(channels, side, side), eta=sampler.eta,
                    guidance=sampler.guidance, num_classes=num_classes, generator=generator,
                    trace=trace, progress=bar,
                )
                batch_images = from_unit(unit, levels)

            images.append(batch_images.cpu())
            if trace is not None:
                frames.append(trace.stack())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started

    settings = {
        "per_class": sampling.per_class,
        "batch_size": sampling.batch_size,
        "seed": sampling.seed,
        "generator_seed": seed,
        "steps": steps,
        "device": str(device),
        **method_settings(sampler, model, scheduler),
    }
    return SampleResult(
        images=torch.cat(images),
        labels=labels,
        frames=torch.cat(frames, dim=1),
        nfe=network_evaluations(sampler, steps),
        seconds_total=seconds,
        settings=settings,
    )


def info_record(name: str, sampler: SamplerConfig, result: SampleResult) -> dict[str, Any]:
    """Return the content of info.json: cost figures and the settings of one sampler run."""
    count = int(result.labels.shape[0])
    seconds = result.seconds_total
    return {
        "sampler": name,
        "variant": sampler.variant,
        "method": sampler.method.value,
        "nfe": result.nfe,
        "seconds_total": seconds,
        "seconds_per_image": seconds / count,
        "images_per_second": count / seconds if seconds > 0 else None,
        "num_samples": count,
        "settings": result.settings,
    }


def write_outputs(out_dir: Path, name: str, sampler: SamplerConfig, result: SampleResult, levels: int) -> dict:
    """Write samples.npz, grid.png, process.gif and info.json under `out_dir`, each atomically.

    info.json is written last, so its presence means the other three are complete.
    Returns the info record.
    """
    out_dir = Path(out_dir)
    save_split(out_dir / "samples.npz", result.images.numpy(), result.labels.numpy())
    save_png(out_dir / "grid.png", class_grid(result.images, result.labels, levels))
    save_gif(out_dir / "process.gif", result.frames)
    info = info_record(name, sampler, result)
    write_json(out_dir / "info.json", info)
    return info
