"""Measure images/s and NFE of every sampler of params.yaml, and how sampling time grows with the image side.

Usage (from the repository root)::

    .venv/bin/python bench/sampling_speed.py [--per-class 10] [--sides 8 16 28] [--trained]

1. Samplers: every entry of params.yaml's samplers section runs through the pipeline's own
   genladder.sampling.run_sampler, with --per-class images per class in one batch. The models
   are untrained (backbone of params.yaml, seed 0) unless --trained loads models/VARIANT/model.pt.
   The network's cost does not depend on its weights, so untrained models give the same
   timings; only the images are meaningless.
2. Image side: for each of --sides, untrained models built for side x side images run raster
   autoregression (one pixel per step, H*W NFE), spread autoregression (n x n pixels per step
   on a lattice, H*W/n^2 NFE, n = --spread) and DDIM with --ddim-steps steps (NFE independent
   of the side), on --side-images images.

Images/s counts the sampling loop only, as info.json does, with model loading excluded.
Results also go to bench/results/sampling_speed.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from genladder.config import Paradigm, SamplerConfig, SamplingConfig, VariantConfig
from genladder.models import build_model, load_model
from genladder.sampling import run_sampler
from genladder.sampling.run import info_record
from machine import add_common_arguments, describe, load_average, set_up, unknown_keys, write_results
from train_speed import data_shape

RESULTS = Path("bench/results/sampling_speed.json")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--samplers", nargs="*", help="sampler keys to measure (default: all)")
    parser.add_argument("--per-class", type=int, default=10, help="images per class for each sampler")
    parser.add_argument("--trained", action="store_true", help="load models/VARIANT/model.pt instead of untrained models")
    parser.add_argument("--sides", type=int, nargs="*", default=[8, 16, 28], help="image sides of the scaling table (empty skips it)")
    parser.add_argument("--side-images", type=int, default=10, help="images per sampler and side in the scaling table")
    parser.add_argument("--spread", type=int, default=4, help="n of the n x n spread groups in the scaling table")
    parser.add_argument("--ddim-steps", type=int, default=50, help="DDIM steps in the scaling table")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results file (default: {RESULTS})")
    return parser.parse_args()


def fitting_variant(variant: VariantConfig, side: int) -> VariantConfig:
    """Drop the ar training-mixture sizes that do not fit side x side images; the forward cost stays the same."""
    if variant.paradigm is not Paradigm.ar:
        return variant
    group_sizes = [k for k in variant.group_sizes if (side * side) % k == 0]
    patch_sizes = [n for n in variant.patch_sizes if side % n == 0 and n < side]
    return variant.model_copy(update={"group_sizes": group_sizes or [1], "patch_sizes": patch_sizes or [1]})


def timed_sample(name: str, sampler: SamplerConfig, sampling: SamplingConfig, model, shape: dict, device) -> dict:
    """Run one sampler and return its info record with the load average.

    Two untimed forward passes at the sampling batch size come first, so one-time setup
    (memory allocation, oneDNN kernel selection for new shapes) stays out of the timing.
    """
    with torch.inference_mode():
        inputs = [x.to(device) for x in model.example_inputs(sampling.per_class * shape["num_classes"])]
        for _ in range(2):
            model(*inputs)
    result = run_sampler(name, sampler, sampling, model, shape, device)
    info = info_record(name, sampler, result)
    info["load_average"] = load_average()
    return info


def main() -> int:
    args = parse_args()
    device, params = set_up(args)
    names = args.samplers or list(params.samplers)
    if unknown_keys(names, params.samplers, "samplers"):
        return 2
    shape = data_shape(params)
    machine = describe(device)
    count = args.per_class * shape["num_classes"]
    sampling = SamplingConfig(per_class=args.per_class, batch_size=count, animate=1, seed=0)
    print(
        f"{machine['cpu_model']}, nproc {machine['nproc']}, torch {machine['torch']}, {machine['threads']} threads, "
        f"device {device}; {'trained' if args.trained else 'untrained'} models, {count} images per sampler in one batch"
    )

    # 1. Every sampler of params.yaml at the prepared image size.
    models = {}
    rows = []
    print(f"{'sampler':<16}{'NFE':>6}{'images/s':>10}{'ms/image':>10}{'load':>6}")
    for name in names:
        sampler = params.samplers[name]
        if sampler.variant not in models:
            if args.trained:
                models[sampler.variant] = load_model(Path("models") / sampler.variant / "model.pt", device)[0]
            else:
                models[sampler.variant] = build_model(params.variants[sampler.variant], params.backbone, shape, seed=0).to(device).eval()
        info = timed_sample(name, sampler, sampling, models[sampler.variant], shape, device)
        rows.append(info)
        print(f"{name:<16}{info['nfe']:>6}{info['images_per_second']:>10.1f}{1000 * info['seconds_per_image']:>10.2f}{info['load_average']:>6.2f}", flush=True)

    # 2. Raster, spread and DDIM sampling at each image side, on untrained models.
    scaling = []
    side_samplers = {
        "raster": ("ar", SamplerConfig(variant="ar", method="ar", order="raster", group=1)),
        f"spread{args.spread}": ("ar", SamplerConfig(variant="ar", method="ar", order="spread", group=args.spread)),
        f"ddim{args.ddim_steps}": ("diffusion", SamplerConfig(variant="diffusion", method="ddim", steps=args.ddim_steps)),
    }
    per_class = max(1, args.side_images // shape["num_classes"])
    side_sampling = SamplingConfig(per_class=per_class, batch_size=per_class * shape["num_classes"], animate=1, seed=0)
    if args.sides:
        print(f"{'sampler':<16}{'side':>5}{'NFE':>6}{'images/s':>10}{'ms/image':>10}{'load':>6}")
    for side in args.sides:
        side_shape = {**shape, "image_size": side}
        for name, (variant, sampler) in side_samplers.items():
            model = build_model(fitting_variant(params.variants[variant], side), params.backbone, side_shape, seed=0)
            model = model.to(device).eval()
            info = timed_sample(name, sampler, side_sampling, model, side_shape, device)
            info["side"] = side
            scaling.append(info)
            print(f"{name:<16}{side:>5}{info['nfe']:>6}{info['images_per_second']:>10.1f}{1000 * info['seconds_per_image']:>10.2f}{info['load_average']:>6.2f}", flush=True)

    setup = {**machine, "trained": args.trained, "shape": shape, "images_per_sampler": count, "side_images": per_class * shape["num_classes"]}
    write_results(args.output, {"setup": setup, "samplers": rows, "scaling": scaling})
    return 0


if __name__ == "__main__":
    sys.exit(main())
