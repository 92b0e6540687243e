"""Measure the wall time and peak memory of a command and every process it starts.

Usage (from the repository root)::

    .venv/bin/python bench/pipeline_time.py [--interval 0.1] [--label NAME] -- dvc repro

Reported figures:

- wall time, from start to exit, in seconds;
- peak process-tree RSS: the largest sum of the resident set sizes of the command and all its
  descendants, sampled every --interval seconds with psutil. Processes that live less than one
  interval can be missed, so this is a lower bound of the true peak;
- largest single-process RSS: ru_maxrss of RUSAGE_CHILDREN, the peak of the biggest process
  in the tree (the figure /usr/bin/time -v calls "Maximum resident set size"). It counts only
  descendants that were waited for, which `dvc repro` does for each stage.

The figures are printed and appended as one JSON line to bench/results/pipeline_time.jsonl.
The exit status is the command's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil

RESULTS = Path("bench/results/pipeline_time.jsonl")
MIB = 1024 * 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between memory samples (default: 0.1)")
    parser.add_argument("--label", default=None, help="name stored with the figures (default: the command)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON lines file to append to (default: {RESULTS})")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("missing command; give it after --, e.g. -- dvc repro")
    return args


def tree_rss(root: psutil.Process) -> int:
    """Return the summed RSS in bytes of `root` and its live descendants; vanished processes count 0."""
    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def main() -> int:
    args = parse_args()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    child = subprocess.Popen(args.command)
    root = psutil.Process(child.pid)
    peak_tree = 0
    while child.poll() is None:
        peak_tree = max(peak_tree, tree_rss(root))
        time.sleep(args.interval)
    wall = time.perf_counter() - started
    # ru_maxrss is in KiB on Linux.
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024

    record = {
        "label": args.label or " ".join(args.command),
        "command": args.command,
        "exit_status": child.returncode,
        "wall_seconds": round(wall, 3),
        "peak_tree_rss_mib": round(peak_tree / MIB, 1),
        "largest_process_rss_mib": round(largest / MIB, 1),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "nproc": len(os.sched_getaffinity(0)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        f"{record['label']}: exit {child.returncode}, wall {wall:.2f} s, peak tree RSS "
        f"{record['peak_tree_rss_mib']:.0f} MiB, largest process RSS {record['largest_process_rss_mib']:.0f} MiB, "
        f"load {record['load_average_before']} -> {record['load_average_after']}",
        file=sys.stderr,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
