"""Shared fixtures: a temporary git + DVC copy of the repository for end-to-end runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Files a pipeline copy needs; outputs, the environment and tracking data stay behind.
COPIED = ("dvc.yaml", "params.yaml", "pyproject.toml", "requirements.lock", "Makefile", ".gitignore", ".dvcignore")
COPIED_DIRS = ("stages", "src", "docker")


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, returning its output; on failure the assertion shows stdout and stderr."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def pipeline_env(root: Path) -> dict:
    """Environment for stage commands: this interpreter's bin first, tracking in the copy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "genladder tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@genladder.invalid"
    return env


def make_pipeline_copy(dest: Path) -> Path:
    """Copy the pipeline's source into `dest`, then git init, dvc init and commit it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "wheelhouse", "certs")
    for name in COPIED_DIRS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=ignore)
    env = pipeline_env(dest)
    run(["git", "init", "-q", "-b", "main"], dest, env)
    run([str(BIN / "dvc"), "init", "-q"], dest, env)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "pipeline copy"], dest, env)
    return dest


@pytest.fixture
def pipeline_repo(tmp_path: Path) -> Path:
    return make_pipeline_copy(tmp_path / "repo")


def dvc(args: list[str], repo: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], repo, pipeline_env(repo), check=check)
