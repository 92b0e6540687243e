"""The prepare stage under real DVC in a temporary git repository."""

from __future__ import annotations

import json

import yaml
from conftest import dvc
from mlflow.tracking import MlflowClient


def set_param(repo, dotted: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_prepare_reruns_only_on_its_params(pipeline_repo):
    repo = pipeline_repo
    set_param(repo, "data.source", "digits")

    first = dvc(["repro", "prepare"], repo)
    assert "Running stage 'prepare'" in first.stdout
    prepared = repo / "data" / "prepared"
    for name in ("train.npz", "val.npz", "test.npz", "meta.json", "stats.json", "preview.png"):
        assert (prepared / name).is_file(), name
    assert json.loads((prepared / "meta.json").read_text())["image_size"] == 16

    second = dvc(["repro", "prepare"], repo)
    assert "Running stage" not in second.stdout

    # A key prepare does not read leaves it alone.
    set_param(repo, "sampling.per_class", 7)
    third = dvc(["repro", "prepare"], repo)
    assert "Running stage" not in third.stdout

    set_param(repo, "data.image_size", 32)
    status = dvc(["status", "prepare"], repo)
    assert "modified:           data" in status.stdout
    fourth = dvc(["repro", "prepare"], repo)
    assert "Running stage 'prepare'" in fourth.stdout
    assert json.loads((prepared / "meta.json").read_text())["image_size"] == 32

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("genladder").experiment_id])
    assert len(runs) == 2
    assert {r.data.tags["dvc.stage"] for r in runs} == {"prepare"}
    assert {r.data.params["data.image_size"] for r in runs} == {"16", "32"}
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"preview.png", "stats.json", "meta.json"} <= artifacts


def test_prepare_with_bad_params_keeps_outputs(pipeline_repo):
    repo = pipeline_repo
    set_param(repo, "data.source", "digits")
    dvc(["repro", "prepare"], repo)
    before = (repo / "data" / "prepared" / "train.npz").read_bytes()

    set_param(repo, "data.levels", 1)
    failed = dvc(["repro", "prepare"], repo, check=False)
    assert failed.returncode != 0
    assert "data.levels" in failed.stderr + failed.stdout
    # DVC removes outputs before running a changed stage, so its cache restores them;
    # the files on disk must be either untouched or restorable with dvc checkout.
    dvc(["checkout", "prepare"], repo, check=False)
    assert (repo / "data" / "prepared" / "train.npz").read_bytes() == before
