"""Data-parallel training under torchrun: process group, rank context, batch sharding.

``train.nproc > 1`` makes the train stage relaunch itself as
``python -m torch.distributed.run --standalone --nproc_per_node N stages/train.py VARIANT``
unless it already runs under torchrun (LOCAL_RANK is set, as torchrun sets it for every
worker). Each worker joins the process group from torchrun's environment variables
(MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE), with the gloo backend on CPU and NCCL on CUDA.
The global batch ``train.batch_size`` is split evenly across ranks, and only rank 0 logs,
checkpoints and writes outputs.

Several machines: start the stage under torchrun yourself on every node, with the same
rendezvous endpoint (a host and free port of node 0) and the repository and prepared data
at the same path everywhere::

    python -m torch.distributed.run --nnodes 2 --nproc_per_node 4 \
        --rdzv-backend c10d --rdzv-endpoint node0.example:29500 --rdzv-id genladder-ar \
        stages/train.py ar

Outputs land on the node that runs rank 0, and ``dvc commit train@ar`` there records them.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the data-parallel group; the defaults describe a single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def inside_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def torchrun_command(nproc: int, script: str, args: list[str]) -> list[str]:
    """Return the command that reruns `script` with `args` as `nproc` local workers."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        script,
        *args,
    ]


def current_context() -> DistributedContext:
    """Return the rank and world size of the initialized process group, or a single-process context."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext()
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistributedContext(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size())


def init_from_env(device: torch.device) -> tuple[DistributedContext, torch.device]:
    """Join the process group that torchrun describes, if any; return the context and this rank's device.

    On CUDA each worker takes the GPU of its LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(), device
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        # NOTE: the tests run gloo on CPU only; this NCCL branch has not run on a GPU there.
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    context = current_context()
    log.info("rank %d of %d joined the %s process group on %s", context.rank, context.world_size, backend, device)
    return context, device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Return this rank's equal slice of a global batch along dim 0."""
    if not context.enabled:
        return tensor
    size = tensor.shape[0]
    if size % context.world_size:
        raise ValueError(f"global batch of {size} is not divisible by the {context.world_size} ranks")
    per_rank = size // context.world_size
    return tensor[context.rank * per_rank : (context.rank + 1) * per_rank]


def all_reduce_mean(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Average a tensor over ranks, in place; a no-op for a single process."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= context.world_size
    return tensor


def broadcast_from_main(value: Any, context: DistributedContext) -> Any:
    """Return rank 0's `value` on every rank (pickled), so all ranks act on what rank 0 read."""
    if not context.enabled:
        return value
    holder = [value if context.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
