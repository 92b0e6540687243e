"""MLflow tracking read back through MlflowClient, and tracking failure that keeps the work."""

from __future__ import annotations

import logging

import pytest
from mlflow.tracking import MlflowClient

from genladder.tracking import flatten, stage_run, tracking_uri


@pytest.fixture
def tracked_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-quick")
    return tmp_path


def test_run_tags_params_metrics_artifacts(tracked_root):
    artifact = tracked_root / "stats.json"
    artifact.write_text('{"n": 3}')
    with stage_run("prepare", experiment="unit", variant="ar", tags={"extra": 1}) as run:
        run.log_params({"data": {"levels": 16, "source": "digits"}})
        run.log_metrics({"loss": 0.5}, step=1)
        run.log_metrics({"loss": 0.25}, step=2)
        run.log_artifact(artifact)
        run_id = run.run_id

    assert tracking_uri() == f"sqlite:///{tracked_root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri())
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED"
    assert record.data.tags["dvc.stage"] == "prepare"
    assert record.data.tags["dvc.exp_name"] == "exp-quick"
    assert record.data.tags["variant"] == "ar"
    assert record.data.tags["extra"] == "1"
    assert len(record.data.tags["git.commit"]) in (40, len("unknown"))
    assert record.data.params == {"data.levels": "16", "data.source": "digits"}
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["stats.json"]
    assert (tracked_root / "mlruns").is_dir()


def test_failed_block_marks_run_failed(tracked_root):
    with pytest.raises(RuntimeError):
        with stage_run("train", experiment="unit") as run:
            run_id = run.run_id
            raise RuntimeError("boom")
    assert MlflowClient(tracking_uri()).get_run(run_id).info.status == "FAILED"


def test_unreachable_backend_only_warns(tmp_path, monkeypatch, caplog):
    # A directory where the SQLite file should be makes every MLflow call fail.
    (tmp_path / "blocked.db").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'blocked.db'}")
    output = tmp_path / "out.txt"
    with caplog.at_level(logging.WARNING, logger="genladder.tracking"):
        with stage_run("prepare", experiment="unit") as run:
            output.write_text("work")
            run.log_params({"a": 1})
            run.log_artifact(output)
    assert output.read_text() == "work"
    assert not run.active
    assert "running untracked" in caplog.text


def test_disabled_tracking_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with stage_run("prepare", enabled=False) as run:
        run.log_metrics({"x": 1.0})
    assert not run.active
    assert not (tmp_path / "mlflow.db").exists()


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
