"""Train our diffusion variant and a diffusers baseline for the same wall-clock budget, then compare.

Usage (from the repository root, after `dvc repro prepare train_evaluator`)::

    .venv/bin/python bench/vs_diffusers.py [--budget-seconds 120] [--baseline-lrs 1e-4 2e-3]

Both models train on data/prepared/train.npz at train.batch_size and train.precision:

- ours: the ``diffusion`` variant of params.yaml, built by genladder.models.build_model and
  trained by genladder.trainer.train (class-conditional with label dropout, EMA weights);
- baseline: a diffusers UNet2DModel of about the same parameter count, with three levels of
  DownBlock2D/UpBlock2D and no attention, like our backbone. It uses DDPMScheduler (1000
  linear steps, eps prediction) and trains with the defaults of diffusers'
  examples/unconditional_image_generation/train_unconditional.py: MSE on the noise, AdamW
  (betas 0.95/0.999, weight decay 1e-6, eps 1e-8), cosine learning rate with linear warm-up,
  gradient clipping at 1.0, and EMAModel with warm-up (inv_gamma 1, power 3/4, max decay
  0.9999). The example's random horizontal flip is left out, because a flipped digit is not
  a digit. Its 500 warm-up steps would fill a short budget, so --baseline-warmup sets them.

Each model first trains --calibrate-steps steps to measure its speed. The run then trains for
as many steps as fit in --budget-seconds at that speed, so the cosine schedule ends at the
budget. Both sample with DDIM (eta 0, "trailing" spacing) at each of --steps, from their EMA
weights, --num-samples images. The baseline is unconditional, so our model samples twice:
class-balanced (the same count for every class, as the pipeline's samplers do) and
unconditional (the "no label" embedding). The Fréchet distance and KID are computed in the
evaluator's feature space (models/evaluator/model.pt) against the test split, as in the
evaluate stage. Results also go to bench/results/vs_diffusers.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.nn import functional as F
from tqdm import tqdm

from genladder.config import Precision, SamplerMethod
from genladder.data import from_unit, load_split, to_unit
from genladder.evaluator import load_evaluator
from genladder.metrics.features import EvaluatorFeatures
from genladder.metrics.frechet import FeatureDistances
from genladder.models import build_model, count_parameters
from genladder.sampling.diffusion import build_scheduler, denoise
from genladder.trainer import autocast, batch_indices, train
from machine import add_common_arguments, describe, load_average, set_up, synchronize, write_results

RESULTS = Path("bench/results/vs_diffusers.json")
BASELINE_TIMESTEPS = 1000  # train_unconditional.py's --ddpm_num_steps default


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--variant", default="diffusion", help="our diffusion variant key (default: diffusion)")
    parser.add_argument("--budget-seconds", type=float, default=120.0, help="training wall-clock budget of each model, in seconds")
    parser.add_argument("--calibrate-steps", type=int, default=20, help="training steps that measure each model's speed first")
    parser.add_argument(
        "--baseline-lrs", type=float, nargs="+", default=[1e-4],
        help="peak learning rates of the baseline, one training run each (default: 1e-4, the example's)",
    )
    parser.add_argument("--baseline-warmup", type=int, default=None, help="baseline warm-up steps (default: train.warmup_steps)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50], help="DDIM sampling steps")
    parser.add_argument("--num-samples", type=int, default=1000, help="samples per model and step count, a multiple of the class count")
    parser.add_argument("--sample-batch", type=int, default=500, help="images per sampling forward pass")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results file (default: {RESULTS})")
    return parser.parse_args()


# ---------------------------------------------------------------------------
# Baseline
# ---------------------------------------------------------------------------


def baseline_unet(channels: int, image_size: int) -> UNet2DModel:
    """Build a UNet2DModel of three levels (16, 32, 64 channels), about our backbone's size at width 16."""
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
    )


def train_baseline(
    images: torch.Tensor, levels: int, steps: int, lr: float, warmup: int, batch_size: int,
    precision: Precision, device: torch.device, seed: int,
) -> tuple[UNet2DModel, float]:
    """Train the baseline for `steps` steps; return the EMA model and the training seconds."""
    torch.manual_seed(seed)
    unet = baseline_unet(images.shape[1], images.shape[2]).to(device).train()
    noise_scheduler = DDPMScheduler(num_train_timesteps=BASELINE_TIMESTEPS, beta_schedule="linear")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    ema = EMAModel(
        unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75,
        model_cls=UNet2DModel, model_config=unet.config,
    )
    generator = torch.Generator().manual_seed(seed)
    seconds = 0.0
    for step in tqdm(range(steps), desc=f"diffusers lr {lr:g}", mininterval=2.0):
        synchronize(device)
        started = time.perf_counter()
        clean = to_unit(images[batch_indices(len(images), batch_size, seed, step)], levels).to(device)
        noise = torch.randn(clean.shape, generator=generator).to(device)
        t = torch.randint(BASELINE_TIMESTEPS, (batch_size,), generator=generator).to(device)
        noisy = noise_scheduler.add_noise(clean, noise, t)
        with autocast(device, precision):
            prediction = unet(noisy, t).sample
        loss = F.mse_loss(prediction.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        synchronize(device)
        seconds += time.perf_counter() - started
    averaged = copy.deepcopy(unet).eval()
    ema.copy_to(averaged.parameters())
    return averaged, seconds


@torch.inference_mode()
def sample_baseline(unet: UNet2DModel, steps: int, count: int, batch: int, device: torch.device, seed: int) -> tuple[torch.Tensor, float]:
    """Sample `count` images in [-1, 1] with DDIM (eta 0, trailing spacing); return them and the seconds."""
    config = DDPMScheduler(num_train_timesteps=BASELINE_TIMESTEPS, beta_schedule="linear").config
    scheduler = DDIMScheduler.from_config(config, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    chunks = []
    synchronize(device)
    started = time.perf_counter()
    for start in range(0, count, batch):
        x = torch.randn((min(batch, count - start), *shape), generator=generator).to(device)
        for t in scheduler.timesteps:
            output = unet(x, t).sample
            x = scheduler.step(output, t, x, eta=0.0).prev_sample
        chunks.append(x.clamp(-1.0, 1.0).cpu())
    synchronize(device)
    return torch.cat(chunks), time.perf_counter() - started


# ---------------------------------------------------------------------------
# Ours
# ---------------------------------------------------------------------------


@torch.inference_mode()
def sample_ours(model, labels: torch.Tensor, steps: int, batch: int, device: torch.device, seed: int) -> tuple[torch.Tensor, float]:
    """Sample one image per label in [-1, 1] with the pipeline's DDIM sampler (eta 0, no guidance)."""
    scheduler = build_scheduler(model, SamplerMethod.ddim, steps)
    generator = torch.Generator().manual_seed(seed)
    shape = (model.channels, model.image_size, model.image_size)
    chunks = []
    synchronize(device)
    started = time.perf_counter()
    for start in range(0, len(labels), batch):
        batch_labels = labels[start : start + batch].to(device)
        chunks.append(
            denoise(
                model, batch_labels, scheduler, shape=shape, eta=0.0, guidance=0.0,
                num_classes=model.num_classes, generator=generator,
            ).cpu()
        )
    synchronize(device)
    return torch.cat(chunks), time.perf_counter() - started


def steps_in_budget(seconds_per_step: float, budget: float) -> int:
    return max(1, int(budget / seconds_per_step))


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    device, params = set_up(args)
    if args.variant not in params.variants:
        print(f"unknown variant {args.variant!r}; params defines {sorted(params.variants)}", file=sys.stderr)
        return 2
    train_images, train_labels, meta = load_split("train")
    test_images, _, _ = load_split("test")
    levels, num_classes = int(meta["levels"]), int(meta["num_classes"])
    if args.num_samples % num_classes:
        print(f"--num-samples {args.num_samples} is not a multiple of the {num_classes} classes", file=sys.stderr)
        return 2
    evaluator, _ = load_evaluator("models/evaluator/model.pt", device)
    distances = FeatureDistances(EvaluatorFeatures(evaluator), test_images.to(device))
    config = params.train.model_copy(update={"log_every": 10**6, "checkpoint_every": 10**6})
    batch_size, precision = config.batch_size, config.precision
    warmup = config.warmup_steps if args.baseline_warmup is None else args.baseline_warmup
    machine = describe(device)
    print(
        f"{machine['cpu_model']}, nproc {machine['nproc']}, torch {machine['torch']}, {machine['threads']} threads, "
        f"device {device}; {len(train_images)} train and {len(test_images)} test images, batch {batch_size}, "
        f"{precision.value}, budget {args.budget_seconds:.0f} s per model"
    )

    # 1. Ours: calibrate, then train for the budget.
    variant = params.variants[args.variant]

    def train_ours(steps: int):
        model = build_model(variant, params.backbone, meta, seed=config.seed).to(device)
        return train(model, train_images, train_labels, config, steps, desc="ours")

    calibration = train_ours(args.calibrate_steps)
    ours_steps = steps_in_budget(calibration.train_seconds / args.calibrate_steps, args.budget_seconds)
    load_before = load_average()
    ours = train_ours(ours_steps)
    models = {
        "ours": {
            "param_count": count_parameters(ours.model),
            "steps": ours_steps,
            "train_seconds": ours.train_seconds,
            "train_images_per_second": ours.images_per_second,
            "final_loss": ours.final_loss,
            "load_average": [load_before, load_average()],
        }
    }

    # 2. Baselines: calibrate once, then train one model per learning rate.
    _, seconds = train_baseline(train_images, levels, args.calibrate_steps, 1e-4, 1, batch_size, precision, device, seed=1)
    baseline_steps = steps_in_budget(seconds / args.calibrate_steps, args.budget_seconds)
    baselines = {}
    for lr in args.baseline_lrs:
        load_before = load_average()
        unet, seconds = train_baseline(train_images, levels, baseline_steps, lr, min(warmup, baseline_steps // 2), batch_size, precision, device, seed=config.seed)
        name = f"diffusers_lr{lr:g}"
        baselines[name] = unet
        models[name] = {
            "param_count": sum(p.numel() for p in unet.parameters()),
            "steps": baseline_steps,
            "lr": lr,
            "train_seconds": seconds,
            "train_images_per_second": baseline_steps * batch_size / seconds,
            "load_average": [load_before, load_average()],
        }

    # 3. Sample each model at each step count and measure the distances to the test split.
    # One short untimed run of each sampler first, so one-time setup costs stay out of the timings.
    sample_ours(ours.ema, torch.arange(num_classes), 1, args.sample_batch, device, seed=0)
    sample_baseline(next(iter(baselines.values())), 1, num_classes, args.sample_batch, device, seed=0)
    balanced = torch.arange(num_classes).repeat_interleave(args.num_samples // num_classes)
    unconditional = torch.full((args.num_samples,), num_classes)
    rows = []
    for steps in args.steps:
        runs = {
            "ours_balanced": lambda: sample_ours(ours.ema, balanced, steps, args.sample_batch, device, seed=0),
            "ours_unconditional": lambda: sample_ours(ours.ema, unconditional, steps, args.sample_batch, device, seed=0),
        }
        for name, unet in baselines.items():
            runs[name] = lambda unet=unet: sample_baseline(unet, steps, args.num_samples, args.sample_batch, device, seed=0)
        for name, run in runs.items():
            unit, seconds = run()
            fd, kid = distances(from_unit(unit, levels).to(device))
            rows.append({
                "model": name, "ddim_steps": steps, "frechet_distance": fd, "kid": kid,
                "samples_per_second": args.num_samples / seconds, "load_average": load_average(),
            })

    # 4. Print and save.
    print(f"{'model':<22}{'params':>9}{'steps':>7}{'train s':>9}{'train img/s':>13}{'load':>6}")
    for name, record in models.items():
        print(
            f"{name:<22}{record['param_count']:>9,}{record['steps']:>7}{record['train_seconds']:>9.1f}"
            f"{record['train_images_per_second']:>13.0f}{record['load_average'][1]:>6.2f}"
        )
    print(f"{'model':<22}{'DDIM':>5}{'FD':>9}{'KID':>9}{'samples/s':>11}{'load':>6}")
    for row in rows:
        print(
            f"{row['model']:<22}{row['ddim_steps']:>5}{row['frechet_distance']:>9.3f}{row['kid']:>9.4f}"
            f"{row['samples_per_second']:>11.0f}{row['load_average']:>6.2f}"
        )
    ratios = []
    for name in baselines:
        ratio = {"baseline": name, "train_images_per_second": models["ours"]["train_images_per_second"] / models[name]["train_images_per_second"]}
        for steps in args.steps:
            by_model = {row["model"]: row for row in rows if row["ddim_steps"] == steps}
            ratio[f"samples_per_second_ddim{steps}"] = by_model["ours_balanced"]["samples_per_second"] / by_model[name]["samples_per_second"]
            for ours_kind in ("ours_balanced", "ours_unconditional"):
                key = f"frechet_distance_ddim{steps}_{ours_kind.removeprefix('ours_')}"
                ratio[key] = by_model[ours_kind]["frechet_distance"] / by_model[name]["frechet_distance"]
        ratios.append(ratio)
        print(f"ours / {name}: " + ", ".join(f"{key} {value:.2f}" for key, value in ratio.items() if key != "baseline"))

    setup = {
        **machine, "budget_seconds": args.budget_seconds, "batch_size": batch_size, "precision": precision.value,
        "num_samples": args.num_samples, "baseline_warmup": warmup, "test_images": len(test_images),
    }
    result = {"setup": setup, "models": models, "samples": rows, "ratios": ratios}
    write_results(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
