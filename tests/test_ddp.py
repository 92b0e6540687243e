"""Data parallelism: two gloo processes on half batches match one process on the whole batch."""

from __future__ import annotations

import datetime
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genladder.config import BackboneConfig, TrainConfig, VariantConfig
from genladder.distributed import DistributedContext, current_context, shard, torchrun_command
from genladder.models import build_model
from genladder.trainer import Objective, global_batch, local_batch, train

DATA = {"channels": 1, "image_size": 8, "levels": 16, "num_classes": 2}
BACKBONE = BackboneConfig(width=8, channel_mult=[1, 2], num_res_blocks=1)
VARIANT = VariantConfig(paradigm="ar", group_sizes=[1, 4], patch_sizes=[2, 4])
CONFIG = TrainConfig(batch_size=8, lr=3e-3, warmup_steps=1, precision="fp32", log_every=1, checkpoint_every=2, label_dropout=0.25)
STEPS = 3


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(16, (24, 1, 8, 8), generator=generator, dtype=torch.uint8)
    return images, torch.arange(24) % 2


def model_with_signal():
    """Return the variant's model with its zero-initialized layers filled, so every gradient is nonzero."""
    model = build_model(VARIANT, BACKBONE, DATA, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if torch.count_nonzero(param) == 0:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def gradients(model, objective, context: DistributedContext) -> dict[str, torch.Tensor]:
    images, labels = dataset()
    batch = local_batch(global_batch(model, images, labels, CONFIG, step=0), context, torch.device("cpu"))
    objective(*batch).mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def worker(rank: int, world_size: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    # A short timeout turns a rank that waits for a collective call forever into an error.
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        from torch.nn.parallel import DistributedDataParallel

        context = current_context()
        model = model_with_signal()
        grads = gradients(model, DistributedDataParallel(Objective(model)), context)

        images, labels = dataset()
        checkpoint = Path(out) / f"run-rank{rank}.pt"
        result = train(model_with_signal(), images, labels, CONFIG, STEPS, checkpoint=checkpoint, run_key="k")
        # Resume: only rank 0 has a checkpoint file, and every rank must continue from it.
        first = Path(out) / f"resume-rank{rank}.pt"
        train(model_with_signal(), images, labels, CONFIG, 2, checkpoint=first, run_key="r")
        resumed = train(model_with_signal(), images, labels, CONFIG, 4, checkpoint=first, run_key="r")
        torch.save(
            {"grads": grads, "weights": result.model.state_dict(), "context": (context.rank, context.world_size),
             "checkpoint_exists": checkpoint.exists(), "resumed_from": resumed.resumed_from,
             "resumed_weights": resumed.model.state_dict()},
            Path(out) / f"rank{rank}.pt",
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[int, dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return {rank: torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)}


def test_ranks_see_process_group(two_ranks):
    assert two_ranks[0]["context"] == (0, 2)
    assert two_ranks[1]["context"] == (1, 2)


def test_half_batches_give_full_batch_gradients(two_ranks):
    torch.set_num_threads(1)
    model = model_with_signal()
    expected = gradients(model, Objective(model), DistributedContext())
    for rank in (0, 1):
        for name, grad in expected.items():
            torch.testing.assert_close(two_ranks[rank]["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=f"rank {rank}: {name}")


def test_ddp_training_matches_single_process(two_ranks):
    torch.set_num_threads(1)
    images, labels = dataset()
    single = train(model_with_signal(), images, labels, CONFIG, STEPS)
    for name, value in single.model.state_dict().items():
        for rank in (0, 1):
            torch.testing.assert_close(two_ranks[rank]["weights"][name], value, rtol=1e-4, atol=1e-5, msg=f"rank {rank}: {name}")


def test_only_rank_zero_checkpoints(two_ranks):
    assert two_ranks[0]["checkpoint_exists"]
    assert not two_ranks[1]["checkpoint_exists"]


def test_every_rank_resumes_from_rank_zero(two_ranks):
    assert two_ranks[0]["resumed_from"] == 2
    assert two_ranks[1]["resumed_from"] == 2
    for name, value in two_ranks[0]["resumed_weights"].items():
        assert torch.equal(two_ranks[1]["resumed_weights"][name], value), name


@pytest.mark.slow
def test_stage_relaunches_under_torchrun(tmp_path):
    from test_trainer import STAGE_PARAMS, run_stage, stage_repo

    params = {**STAGE_PARAMS, "train": {**STAGE_PARAMS["train"], "nproc": 2}, "tracking": {"enabled": False}}
    root = stage_repo(tmp_path / "repo", params)
    result = run_stage(root, "ar", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.returncode == 0, result.stderr
    assert "torch.distributed.run --standalone --nproc_per_node=2" in result.stderr
    assert "rank 1 of 2 joined the gloo process group" in result.stderr
    metrics = json.loads((root / "models" / "ar" / "metrics.json").read_text())
    assert metrics["steps"] == 4


def test_shard_splits_evenly():
    batch = torch.arange(8)
    assert shard(batch, DistributedContext(rank=1, world_size=2)).tolist() == [4, 5, 6, 7]
    assert shard(batch, DistributedContext()).tolist() == list(range(8))
    with pytest.raises(ValueError, match="3 ranks"):
        shard(batch, DistributedContext(rank=0, world_size=3))


def test_torchrun_command_is_standalone():
    command = torchrun_command(4, "stages/train.py", ["ar"])
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node=4" in command
    assert command[-2:] == ["stages/train.py", "ar"]
