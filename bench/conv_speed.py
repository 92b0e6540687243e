"""Measure the FLOP/s of one 3x3 convolution, forward and backward, by channel count, dtype and layout.

Usage (from the repository root)::

    .venv/bin/python bench/conv_speed.py [--channels 16 32 64 128] [--side 16] [--batch 64]

The backbone's convolutions are this shape (C -> C channels, side x side, padding 1), so the
table shows how the utilization of a training step depends on the width. FLOPs are
3 x 2 x B x H x W x C_in x C_out x 9 (forward, input gradient, weight gradient).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from machine import describe, load_average


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128], help="input and output channels")
    parser.add_argument("--side", type=int, default=16, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=64, help="images per batch")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward and backward passes")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser.parse_args()


def conv_flops_per_second(channels: int, side: int, batch: int, bf16: bool, channels_last: bool, repeats: int) -> float:
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    x = torch.randn(batch, channels, side, side)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = conv(x)
        y.float().sum().backward()

    step()
    step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - started) / repeats
    return 3 * 2 * batch * side * side * channels * channels * 9 / seconds


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = describe(torch.device("cpu"))
    print(
        f"{machine['cpu_model']}, nproc {machine['nproc']}, torch {machine['torch']}, {machine['threads']} threads; "
        f"3x3 conv C -> C at {args.side}x{args.side}, batch {args.batch}, forward and backward, GFLOP/s"
    )
    print(f"{'C':>5}{'fp32':>8}{'fp32 CL':>9}{'bf16':>8}{'bf16 CL':>9}{'load':>6}")
    for channels in args.channels:
        figures = [
            conv_flops_per_second(channels, args.side, args.batch, bf16, channels_last, args.repeats) / 1e9
            for bf16 in (False, True)
            for channels_last in (False, True)
        ]
        print(f"{channels:>5}" + "".join(f"{value:>{width}.1f}" for value, width in zip(figures, (8, 9, 8, 9))) + f"{load_average():>6.2f}")
    print("CL: channels_last memory format")
    return 0


if __name__ == "__main__":
    sys.exit(main())
