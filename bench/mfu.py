"""Measure training images/s and model FLOP utilization (MFU) of every variant, in fp32 and bf16.

Usage (from the repository root)::

    .venv/bin/python bench/mfu.py [--variants ar] [--precisions bf16] [--profile diffusion]

For each variant of params.yaml at its default backbone and train.batch_size:

1. FLOPs of one training step: forward and backward of the variant's training loss, counted
   by torch.utils.flop_counter.FlopCounterMode. It counts matrix products and convolutions
   only, so normalization, activations, the optimizer and the EMA update add time but no FLOPs.
2. Training images/s: the real loop (genladder.trainer.train), timed as in bench/train_speed.py,
   the median of --repeats measurements.
3. Peak: FLOP/s of a square matrix product (--matmul-size, 2048 by default), the fastest of
   --matmul-repeats timed products, in the same dtype and process, right before each repeat.

MFU = images/s / batch size * FLOPs per step / peak. --profile VARIANT prints the operators
that take the most time in a few training steps (torch.profiler), to show where the time
goes when MFU is low. Results also go to bench/results/mfu.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from genladder.config import Precision
from genladder.models import build_model, count_parameters
from genladder.trainer import autocast, global_batch, train
from machine import add_common_arguments, describe, load_average, set_up, synchronize, unknown_keys, write_results
from train_speed import data_shape, training_rate

RESULTS = Path("bench/results/mfu.json")
DTYPES = {Precision.fp32: torch.float32, Precision.bf16: torch.bfloat16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--variants", nargs="*", help="variant keys to measure (default: all)")
    parser.add_argument("--precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--warmup-steps", type=int, default=3, help="training steps before timing")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure; the median is reported")
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the square matrices of the peak")
    parser.add_argument("--matmul-repeats", type=int, default=10, help="timed matrix products of the peak")
    parser.add_argument("--batch-size", type=int, default=None, help="override train.batch_size (default: params.yaml's)")
    parser.add_argument("--width", type=int, default=None, help="override backbone.width (default: params.yaml's)")
    parser.add_argument("--profile", metavar="VARIANT", help="profile VARIANT's training steps instead of measuring MFU")
    parser.add_argument("--profile-steps", type=int, default=10, help="training steps under the profiler")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results file (default: {RESULTS})")
    return parser.parse_args()


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int, repeats: int) -> float:
    """Return the FLOP/s of a (size x size) @ (size x size) product in `dtype`, the best of `repeats` runs."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best


def random_data(shape: dict, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    side = shape["image_size"]
    images = torch.randint(shape["levels"], (count, shape["channels"], side, side), generator=generator, dtype=torch.uint8)
    labels = torch.randint(shape["num_classes"], (count,), generator=generator)
    return images, labels


def step_flops(params, variant, shape: dict, precision: Precision, device: torch.device) -> int:
    """Return the FLOPs of the forward and backward pass of one training step at train.batch_size."""
    config = params.train.model_copy(update={"precision": precision})
    model = build_model(variant, params.backbone, shape, seed=0).to(device).train()
    images, labels = random_data(shape, config.batch_size)
    images, labels, draws = global_batch(model, images, labels, config, step=0)
    images, labels = images.to(device), labels.to(device)
    draws = {key: value.to(device) for key, value in draws.items()}
    with FlopCounterMode(display=False) as counter:
        with autocast(device, precision):
            loss = model.training_loss(images, labels, draws).mean()
        loss.backward()
    return int(counter.get_total_flops())


def profile(params, name: str, shape: dict, precision: Precision, device: torch.device, steps: int) -> None:
    """Print the 20 operators with the most self time over `steps` training steps of variant `name`.

    Two steps run before the recorded ones (one skipped, one profiler warm-up), so one-time
    setup is left out. The trainer's per-step log callback advances the profiler schedule.
    """
    from torch.profiler import ProfilerActivity, schedule
    from torch.profiler import profile as torch_profile

    config = params.train.model_copy(update={"precision": precision, "log_every": 1, "checkpoint_every": 10**6})
    model = build_model(params.variants[name], params.backbone, shape, seed=0).to(device)
    images, labels = random_data(shape, max(4 * config.batch_size, 256))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=steps)) as prof:
        train(model, images, labels, config, steps + 2, desc="profile", progress=False, on_log=lambda row: prof.step())
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"{name}, {precision.value}, {steps} steps, load average {load_average()}")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=20, max_name_column_width=50))


def main() -> int:
    args = parse_args()
    device, params = set_up(args)
    if args.batch_size:
        params = params.model_copy(update={"train": params.train.model_copy(update={"batch_size": args.batch_size})})
    if args.width:
        params = params.model_copy(update={"backbone": params.backbone.model_copy(update={"width": args.width})})
    names = [args.profile] if args.profile else (args.variants or list(params.variants))
    if unknown_keys(names, params.variants, "variants"):
        return 2
    shape = data_shape(params)
    machine = describe(device)
    print(
        f"{machine['cpu_model']}, nproc {machine['nproc']}, torch {machine['torch']}, {machine['threads']} threads, "
        f"device {device}; images {shape['channels']}x{shape['image_size']}x{shape['image_size']}, "
        f"batch {params.train.batch_size}; median of {args.repeats}"
    )
    if args.profile:
        for precision in map(Precision, args.precisions):
            profile(params, args.profile, shape, precision, device, args.profile_steps)
        return 0

    timing = argparse.Namespace(warmup_steps=args.warmup_steps, train_steps=args.train_steps, clock="wall")
    header = f"{'variant':<12}{'params':>9}{'prec':>6}{'GFLOP/step':>11}{'img/s':>8}{'GFLOP/s':>9}{'peak':>8}{'MFU':>7}{'load':>6}"
    print(header)
    rows = []
    for name in names:
        variant = params.variants[name]
        param_count = count_parameters(build_model(variant, params.backbone, shape))
        for precision in map(Precision, args.precisions):
            flops = step_flops(params, variant, shape, precision, device)
            peaks, rates = [], []
            for _ in range(args.repeats):
                peaks.append(matmul_peak(DTYPES[precision], device, args.matmul_size, args.matmul_repeats))
                rates.append(training_rate(params, variant, shape, precision, timing, device))
            peak, rate = statistics.median(peaks), statistics.median(rates)
            achieved = rate / params.train.batch_size * flops
            row = {
                "variant": name,
                "param_count": param_count,
                "precision": precision.value,
                "flops_per_step": flops,
                "train_images_per_second": round(rate, 1),
                "achieved_flops_per_second": achieved,
                "matmul_peak_flops_per_second": peak,
                "mfu": achieved / peak,
                "train_runs": [round(r, 1) for r in rates],
                "peak_runs": peaks,
                "load_average": load_average(),
            }
            rows.append(row)
            print(
                f"{name:<12}{param_count:>9,}{precision.value:>6}{flops / 1e9:>11.3f}{rate:>8.0f}"
                f"{achieved / 1e9:>9.1f}{peak / 1e9:>8.1f}{row['mfu']:>7.1%}{row['load_average']:>6.2f}",
                flush=True,
            )

    setup = {
        **machine,
        "shape": shape,
        "train_batch": params.train.batch_size,
        "matmul_size": args.matmul_size,
        "backbone": params.backbone.model_dump(mode="json"),
    }
    write_results(args.output, {"setup": setup, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
