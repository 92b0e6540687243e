"""Params validation: every bad value fails before any work, naming key, value and what is allowed."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genladder.config import ParamsError, load_params, validate_params

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(path: str, value) -> dict:
    """Return the default params with one dotted key set (or removed when value is DELETE)."""
    raw = copy.deepcopy(DEFAULTS)
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


DELETE = object()

BAD_VALUES = [
    # (dotted key, value, fragments the message must contain)
    ("data.source", "imagenet", ["data.source", "'imagenet'", "digits", "mnist5k", "cifar10"]),
    ("data.image_size", 2, ["data.image_size", "2", "greater than or equal to 4"]),
    ("data.image_size", "big", ["data.image_size", "'big'", "integer"]),
    ("data.levels", 1, ["data.levels", "1", "greater than or equal to 2"]),
    ("data.levels", 300, ["data.levels", "300", "less than or equal to 256"]),
    ("data.val_fraction", 0.0, ["data.val_fraction", "0.0", "greater than 0"]),
    ("data.test_fraction", 0.85, ["test_fraction", "0.95", "below 0.9"]),
    ("data.colour", "red", ["data.colour", "unknown key", "'red'"]),
    ("train.lr", -1.0, ["train.lr", "-1.0", "greater than 0"]),
    ("train.precision", "fp8", ["train.precision", "'fp8'", "fp32", "bf16"]),
    ("train.batch_size", 0, ["train.batch_size", "0", "greater than 0"]),
    ("sampling.per_class", 0, ["sampling.per_class", "0", "greater than 0"]),
    ("runtime.device", "tpu", ["runtime.device", "'tpu'", "auto", "cpu", "cuda"]),
    ("typo_section", {}, ["typo_section", "unknown key"]),
]


@pytest.mark.parametrize(("key", "value", "fragments"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_bad_value_names_key_value_allowed(key, value, fragments):
    raw = with_change(key, value) if "." in key else {**copy.deepcopy(DEFAULTS), key: value}
    with pytest.raises(ParamsError) as info:
        validate_params(raw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"


CROSS_FIELD = [
    ("samplers.patch4.group", 3, ["samplers.patch4.group", "3", "divide the image side 16", "[1, 2, 4, 8]"]),
    ("samplers.spread8.group", 16, ["samplers.spread8.group", "16", "smaller than it"]),
    ("samplers.random4.group", 5, ["samplers.random4.group", "5", "does not divide the 256 pixels"]),
    ("samplers.ddim5.variant", "gan", ["samplers.ddim5.variant", "'gan'", "not a key of variants"]),
    ("samplers.ddim5.method", "ar", ["samplers.ddim5.method", "'ar'", "needs a ar variant", "diffusion"]),
    ("samplers.ddim100.steps", 5000, ["samplers.ddim100.steps", "5000", "at most"]),
    ("variants.ar.patch_sizes", [3], ["variants.ar.patch_sizes", "3", "divide the image side"]),
]


@pytest.mark.parametrize(("key", "value", "fragments"), CROSS_FIELD, ids=[k for k, _, _ in CROSS_FIELD])
def test_setting_that_does_not_fit_image(key, value, fragments):
    with pytest.raises(ParamsError) as info:
        validate_params(with_change(key, value))
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} missing from: {info.value}"


def test_defaults_are_valid():
    params = validate_params(copy.deepcopy(DEFAULTS))
    assert params.data.image_size == 16
    assert set(params.samplers) >= {"regression", "raster_greedy", "raster_t1", "ddpm"}


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "params.yaml")


def test_invalid_yaml_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


def test_check_command_exit_codes(tmp_path):
    good = subprocess.run([sys.executable, "-m", "genladder.check", str(REPO / "params.yaml")], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "is valid" in good.stdout
    bad_path = tmp_path / "params.yaml"
    bad_path.write_text(yaml.safe_dump(with_change("data.levels", 0)))
    bad = subprocess.run([sys.executable, "-m", "genladder.check", str(bad_path)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "data.levels" in bad.stderr


def test_stage_rejects_bad_params_before_writing(tmp_path):
    """A stage with invalid params exits 2 and leaves the output folder untouched."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change("data.levels", 0)))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "prepare.py")], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "data.levels" in result.stderr
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "mlflow.db").exists()
