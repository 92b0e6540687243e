"""Describe the machine a benchmark runs on, so every recorded figure names its hardware and load."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


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
