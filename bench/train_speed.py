"""Measure training and inference throughput of every variant, in fp32 and bf16.

Usage (from the repository root)::

    .venv/bin/python bench/train_speed.py [--variants ar diffusion] [--repeats 3]

The backbone, variants and batch size come from params.yaml, and the image shape from
data/prepared/meta.json when it exists, else from params.yaml (one channel). Images
are random levels, because the speed of a step does not depend on pixel values.

- training: images/s of the real training loop (genladder.trainer.train) at
  train.batch_size, timed as the difference between a run of warm-up + timed steps and a
  run of the warm-up steps alone;
- inference: images/s of one forward pass in torch.inference_mode at --infer-batch.

Each figure is the median over --repeats measurements; the load average is printed,
because other processes on the machine slow every figure down. On a shared machine,
``--threads 1 --clock process`` counts this process's CPU time instead of wall time,
which gives the throughput of one otherwise idle core. Results also go to
bench/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from genladder.config import Precision
from genladder.models import build_model, count_parameters
from genladder.trainer import autocast, train
from machine import add_common_arguments, set_up, unknown_keys, write_results

RESULTS = Path("bench/results/train_speed.json")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--variants", nargs="*", help="variant keys to measure (default: all)")
    parser.add_argument("--precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--warmup-steps", type=int, default=3, help="training steps before timing")
    parser.add_argument("--train-steps", type=int, default=15, help="timed training steps")
    parser.add_argument("--infer-batch", type=int, default=500, help="images per inference forward pass")
    parser.add_argument("--infer-repeats", type=int, default=4, help="timed forward passes per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure; the median is reported")
    parser.add_argument(
        "--clock", choices=["wall", "process"], default="wall",
        help="wall time, or this process's CPU time (use with --threads 1 on a shared CPU)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results file (default: {RESULTS})")
    return parser.parse_args()


def data_shape(params) -> dict:
    meta_path = Path("data/prepared/meta.json")
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return {key: meta[key] for key in ("channels", "image_size", "levels", "num_classes")}
    return {"channels": 1, "image_size": params.data.image_size, "levels": params.data.levels, "num_classes": 10}


def training_rate(params, variant, shape: dict, precision: Precision, args, device) -> float:
    config = params.train.model_copy(update={"precision": precision, "log_every": 10**6, "checkpoint_every": 10**6})
    generator = torch.Generator().manual_seed(0)
    count = max(4 * config.batch_size, 256)
    side = shape["image_size"]
    images = torch.randint(shape["levels"], (count, shape["channels"], side, side), generator=generator, dtype=torch.uint8)
    labels = torch.randint(shape["num_classes"], (count,), generator=generator)

    def seconds(steps: int) -> float:
        model = build_model(variant, params.backbone, shape, seed=0).to(device)
        started = time.process_time()
        result = train(model, images, labels, config, steps, desc="bench", progress=False)
        return result.train_seconds if args.clock == "wall" else time.process_time() - started

    timed = seconds(args.warmup_steps + args.train_steps) - seconds(args.warmup_steps)
    return args.train_steps * config.batch_size / timed


@torch.inference_mode()
def inference_rate(params, variant, shape: dict, precision: Precision, args, device) -> float:
    model = build_model(variant, params.backbone, shape, seed=0).to(device).eval()
    inputs = [x.to(device) for x in model.example_inputs(args.infer_batch)]
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    with autocast(device, precision):
        model(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = clock()
        for _ in range(args.infer_repeats):
            model(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return args.infer_repeats * args.infer_batch / (clock() - started)


def main() -> int:
    args = parse_args()
    device, params = set_up(args)
    names = args.variants or list(params.variants)
    if unknown_keys(names, params.variants, "variants"):
        return 2
    shape = data_shape(params)

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.clock} clock, device {device}; images {shape['channels']}x{shape['image_size']}"
        f"x{shape['image_size']}, {shape['levels']} levels; train batch {params.train.batch_size}, "
        f"inference batch {args.infer_batch}; median of {args.repeats}"
    )
    print(f"{'variant':<14}{'params':>10}{'precision':>11}{'train img/s':>13}{'infer img/s':>13}{'load avg':>10}")
    rows = []
    for name in names:
        variant = params.variants[name]
        param_count = count_parameters(build_model(variant, params.backbone, shape))
        for precision in map(Precision, args.precisions):
            train_rates, infer_rates = [], []
            for _ in range(args.repeats):
                train_rates.append(training_rate(params, variant, shape, precision, args, device))
                infer_rates.append(inference_rate(params, variant, shape, precision, args, device))
            row = {
                "variant": name,
                "paradigm": variant.paradigm.value,
                "param_count": param_count,
                "precision": precision.value,
                "train_images_per_second": round(statistics.median(train_rates), 1),
                "inference_images_per_second": round(statistics.median(infer_rates), 1),
                "train_runs": [round(r, 1) for r in train_rates],
                "inference_runs": [round(r, 1) for r in infer_rates],
                "load_average": round(os.getloadavg()[0], 2),
            }
            rows.append(row)
            print(
                f"{name:<14}{param_count:>10,}{precision.value:>11}{row['train_images_per_second']:>13,.0f}"
                f"{row['inference_images_per_second']:>13,.0f}{row['load_average']:>10.2f}",
                flush=True,
            )

    setup = {
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "device": str(device),
        "torch": torch.__version__,
        "shape": shape,
        "train_batch": params.train.batch_size,
        "infer_batch": args.infer_batch,
        "backbone": params.backbone.model_dump(mode="json"),
    }
    write_results(args.output, {"setup": setup, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
