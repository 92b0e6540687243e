"""Helpers shared by the benchmark scripts: machine description, common options and set-up.

Every recorded figure names its hardware and load, from describe() and load_average().
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from genladder.config import Params, load_params


def cpu_model() -> str:
    """Return the "model name" line of /proc/cpuinfo, or platform's guess where that file is absent."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> float:
    """Return the 1-minute load average; above the core count, every figure is slowed down."""
    return round(os.getloadavg()[0], 2)


def describe(device: torch.device) -> dict:
    """Return the CPU model, core count, torch version, intra-op threads and device, as a dict."""
    info = {
        "cpu_model": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall-clock reading covers it; does nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --params, --threads and --device, which every model benchmark takes."""
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def set_up(args: argparse.Namespace) -> tuple[torch.device, Params]:
    """Quiet the library logs, apply --threads, and return the device and the validated params."""
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device), load_params(args.params)


def unknown_keys(requested: Iterable[str], defined: Iterable[str], section: str) -> bool:
    """Report the requested keys that the params section does not define, and return whether there are any."""
    unknown = sorted(set(requested) - set(defined))
    if unknown:
        print(f"unknown {section} {unknown}; params defines {sorted(defined)}", file=sys.stderr)
    return bool(unknown)


def write_results(path: Path, results: dict) -> None:
    """Write a benchmark's figures as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
