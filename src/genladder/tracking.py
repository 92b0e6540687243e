"""MLflow tracking shared by every stage.

The backend is SQLite at ``<repo root>/mlflow.db`` with artifacts under
``<repo root>/mlruns``; the root is DVC_ROOT when DVC runs the stage, so runs made by
``dvc exp run --temp`` or ``--queue`` from a temporary copy land in the same database.
MLFLOW_TRACKING_URI, when set, takes precedence (for a team server).

Tracking never loses pipeline work: stages write their files first, and every call on
:class:`StageRun` turns an MLflow failure into one warning, after which the run goes
on untracked.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genladder.runtime import repo_root

log = logging.getLogger(__name__)

# Distributions that genladder's model code imports, pinned in every logged MLflow model.
MODEL_REQUIREMENTS = ("torch", "numpy", "pydantic", "PyYAML", "tqdm")


def tracking_uri(root: Path | None = None) -> str:
    """Return MLFLOW_TRACKING_URI if set, else the SQLite database at the repository root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = (root or repo_root()).resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def artifact_root(root: Path | None = None) -> str:
    return ((root or repo_root()).resolve() / "mlruns").as_uri()


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys, as MLflow params are flat."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


class StageRun:
    """One MLflow run for one stage execution; every method only warns on failure."""

    def __init__(self, mlflow_module: Any | None, run_id: str | None):
        self._mlflow = mlflow_module
        self.run_id = run_id

    @property
    def active(self) -> bool:
        return self._mlflow is not None

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        if self._mlflow is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop the pipeline
            log.warning("MLflow %s failed, continuing without tracking: %s", what, exc)
            self._mlflow = None
            return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
        self._call("log_params", lambda: self._mlflow.log_params(flat))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self._call("log_metrics", lambda: self._mlflow.log_metrics(clean, step=step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            log.warning("not logging missing artifact %s", path)
            return
        if path.is_dir():
            self._call("log_artifacts", lambda: self._mlflow.log_artifacts(str(path), artifact_path))
        else:
            self._call("log_artifact", lambda: self._mlflow.log_artifact(str(path), artifact_path))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._call("set_tags", lambda: self._mlflow.set_tags({k: str(v) for k, v in tags.items()}))

    def log_torch_model(self, model: Any, name: str, registered_name: str | None = None, **kwargs: Any) -> None:
        """Log a torch module as an MLflow model and register it under `registered_name`.

        The module is pickled together with a copy of the genladder package (MLflow's
        code_paths), so ``mlflow.pytorch.load_model`` returns the same class (ARModel,
        DiffusionModel, ...) on a machine without genladder installed. The pip requirements
        pin the packages that genladder's model code imports. Naming them skips MLflow's
        requirement inference, which re-imports the model in a subprocess (about 6 s on 2
        CPU cores). MLflow 3's default "pt2" format would also trace the model with
        torch.export (about 4 s). Logging this way takes under 1 s.
        Extra keyword arguments go to mlflow.pytorch.log_model (signature, input_example).
        """

        def _log() -> None:
            from importlib.metadata import version

            import mlflow.pytorch

            kwargs.setdefault("serialization_format", "pickle")
            kwargs.setdefault("code_paths", [str(Path(__file__).resolve().parent)])
            kwargs.setdefault("pip_requirements", [f"{pkg}=={version(pkg)}" for pkg in MODEL_REQUIREMENTS])
            mlflow.pytorch.log_model(model, name=name, registered_model_name=registered_name, **kwargs)

        self._call("log_model", _log)


def _experiment_name() -> str:
    """Return the DVC experiment name when DVC runs the stage as an experiment, else ''."""
    return os.environ.get("DVC_EXP_NAME", "")


@contextmanager
def stage_run(
    stage: str,
    experiment: str = "genladder",
    enabled: bool = True,
    variant: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[StageRun]:
    """Open one MLflow run for a stage execution, tagged with stage, commit, experiment and variant.

    Yields a StageRun that does nothing when tracking is disabled or MLflow fails to start.
    An exception raised inside the block marks the run FAILED and propagates.
    """
    if not enabled:
        yield StageRun(None, None)
        return

    root = repo_root()
    # MLflow 3 sends usage telemetry by default. The pipeline is meant to run offline, so
    # telemetry is off unless the user sets MLFLOW_DISABLE_TELEMETRY=false.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri(root))
        if mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment, artifact_location=artifact_root(root))
        mlflow.set_experiment(experiment)
        commit = _git_commit(root)
        all_tags = {
            "dvc.stage": stage,
            "git.commit": commit,
            "dvc.exp_name": _experiment_name(),
            "mlflow.source.git.commit": commit,
        }
        if variant:
            all_tags["variant"] = variant
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        run_name = f"{stage}@{variant}" if variant else stage
        active = mlflow.start_run(run_name=run_name, tags=all_tags)
    except Exception as exc:  # noqa: BLE001 - tracking must never stop the pipeline
        log.warning("MLflow unavailable at %s, running untracked: %s", tracking_uri(root), exc)
        yield StageRun(None, None)
        return

    run = StageRun(mlflow, active.info.run_id)
    status = "FINISHED"
    try:
        yield run
    except BaseException:
        status = "FAILED"
        raise
    finally:
        try:
            mlflow.end_run(status=status)
        except Exception as exc:  # noqa: BLE001
            log.warning("MLflow end_run failed: %s", exc)
