"""The whole pipeline on the quick profile, with real DVC, MLflow and git, in a temporary copy."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import dvc, pipeline_env
from mlflow.tracking import MlflowClient

VENV = Path(sys.executable).parent.parent

pytestmark = pytest.mark.slow


def make_quick(repo: Path) -> subprocess.CompletedProcess:
    env = pipeline_env(repo)
    # -o keeps make from reinstalling this environment from the copy's sources.
    cmd = ["make", "quick", f"VENV={VENV}", "-o", f"{VENV}/.installed"]
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)


def test_quick_profile_end_to_end(pipeline_repo):
    repo = pipeline_repo
    started = time.monotonic()
    result = make_quick(repo)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, f"make quick failed\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    print(f"make quick took {elapsed:.0f} s")

    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["data"]["source"] == "digits", "dvc exp run should leave the quick params in the workspace"

    # 1. Every stage wrote its outputs.
    for variant in params["variants"]:
        assert (repo / "models" / variant / "model.pt").is_file()
        assert (repo / "models" / variant / "loss.tsv").is_file()
    for sampler in params["samplers"]:
        folder = repo / "samples" / sampler
        for name in ("samples.npz", "grid.png", "process.gif", "info.json"):
            assert (folder / name).is_file(), f"{sampler}/{name}"
        assert (repo / "metrics" / "samplers" / f"{sampler}.json").is_file()
    summary = json.loads((repo / "metrics" / "summary.json").read_text())
    assert summary
    report = (repo / "report" / "report.md").read_text()
    for claim in ("Regression to the mean", "Greedy autoregression", "Diffusion"):
        assert claim.lower() in report.lower(), claim
    assert (repo / "report" / "index.html").is_file()

    # 2. Nothing to do on a second run.
    again = dvc(["repro"], repo)
    assert "Running stage" not in again.stdout

    # 3. A sampler-only change reruns that sampler, evaluate and report, nothing else.
    changed = dvc(["exp", "run", "-S", "samplers.ddim5.eta=0.5"], repo)
    reran = sorted(line.split("'")[1] for line in changed.stdout.splitlines() if line.startswith("Running stage"))
    assert reran == ["evaluate", "report", "sample@ddim5"], changed.stdout

    # 4. dvc exp show reads both experiments' metrics, not only the workspace's.
    table = dvc(["exp", "show", "--csv", "--keep", "ddim5.frechet_distance"], repo).stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    experiments = [row for row in rows if row["Experiment"]]
    column = next(name for name in rows[0] if name.endswith("ddim5.frechet_distance"))
    assert len(experiments) == 2, table
    for row in experiments:
        assert row[column] not in ("", "!"), table

    # 5. MLflow contains one run per stage execution, tagged with the DVC experiment.
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    stages = {r.data.tags.get("dvc.stage") for r in runs}
    assert {"prepare", "train_evaluator", "train", "sample", "evaluate", "report"} <= stages
    assert any(r.data.tags.get("dvc.exp_name") for r in runs), "runs should carry the DVC experiment name"
    assert len([r for r in runs if r.data.tags.get("dvc.stage") == "sample"]) == len(params["samplers"]) + 1
