"""Build a variant's model from params, save it as models/VARIANT/model.pt, and load it back.

model.pt is a dict saved with ``torch.save`` and readable with ``weights_only=True``:

- ``variant``: the variant name; ``paradigm``: "regression", "ar" or "diffusion";
- ``config``: ``{"variant": ..., "backbone": ..., "train": ...}`` as plain dicts;
- ``data``: the prepared data's meta.json dict (channels, image_size, levels, num_classes, ...);
- ``param_count``: trainable parameters;
- ``model``: the trained weights; ``ema``: their exponential moving average, used for sampling;
- ``step``: training steps done.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from genladder.config import BackboneConfig, Paradigm, TrainConfig, VariantConfig
from genladder.paradigms import PARADIGM_CLASSES, ParadigmModel
from genladder.runtime import DataError, atomic_path

DATA_KEYS = ("channels", "image_size", "levels", "num_classes")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(
    variant: VariantConfig | Mapping[str, Any],
    backbone: BackboneConfig | Mapping[str, Any],
    data: Mapping[str, Any],
    seed: int | None = None,
) -> ParadigmModel:
    """Build the paradigm module of a variant for data of the shape that `data` (meta.json) gives.

    With `seed`, the initial weights depend on the seed only; the global torch RNG is left as it was.
    """
    variant = variant if isinstance(variant, VariantConfig) else VariantConfig.model_validate(dict(variant))
    backbone = backbone if isinstance(backbone, BackboneConfig) else BackboneConfig.model_validate(dict(backbone))
    missing = [key for key in DATA_KEYS if key not in data]
    if missing:
        raise DataError(f"data description is missing keys {missing}; rerun `dvc repro prepare` to rewrite meta.json")
    shape = {key: int(data[key]) for key in DATA_KEYS}
    backbone_kwargs = backbone.model_dump()

    extra: dict[str, Any] = {}
    if variant.paradigm is Paradigm.ar:
        extra = {"orders": variant.orders, "group_sizes": variant.group_sizes, "patch_sizes": variant.patch_sizes}
    elif variant.paradigm is Paradigm.diffusion:
        extra = {"timesteps": variant.timesteps, "schedule": variant.schedule, "prediction": variant.prediction}

    cls = PARADIGM_CLASSES[variant.paradigm]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return cls(backbone_kwargs, **shape, **extra)


def model_checkpoint(
    name: str,
    model: ParadigmModel,
    ema: ParadigmModel,
    variant: VariantConfig,
    backbone: BackboneConfig,
    train: TrainConfig,
    data: Mapping[str, Any],
    step: int,
) -> dict[str, Any]:
    """Assemble the model.pt dict; state dicts are copied to the CPU."""
    return {
        "variant": name,
        "paradigm": variant.paradigm.value,
        "config": {
            "variant": variant.model_dump(mode="json"),
            "backbone": backbone.model_dump(mode="json"),
            "train": train.model_dump(mode="json"),
        },
        "data": dict(data),
        "param_count": count_parameters(model),
        "step": int(step),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()},
    }


def save_model(path: str | Path, checkpoint: Mapping[str, Any]) -> None:
    # torch.save names the zip's top folder after a file path (here the random temporary
    # name) but uses a fixed name for a file object, which keeps the bytes reproducible.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(dict(checkpoint), f)


def mlflow_model_arguments(model: ParadigmModel) -> dict[str, Any]:
    """Return the input_example and signature that describe the model's inputs in MLflow.

    The batch dimension is marked -1: the model takes any batch size.
    """
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    example = model.example_inputs(2)
    specs = [
        TensorSpec(np.dtype(tensor.numpy().dtype), (-1, *tensor.shape[1:]), name=name)
        for name, tensor in zip(model.input_names, example, strict=True)
    ]
    return {"input_example": example, "signature": ModelSignature(inputs=Schema(specs))}


def load_model(
    path: str | Path, device: torch.device | str = "cpu", weights: str = "ema"
) -> tuple[ParadigmModel, dict[str, Any]]:
    """Load models/VARIANT/model.pt as (model in eval mode on `device`, checkpoint dict).

    `weights` picks the "ema" weights (the default, used for sampling) or the raw "model" weights.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"trained model not found: {path}; run `dvc repro train@{path.parent.name}` first")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise DataError(f"cannot read {path} ({exc}); rerun `dvc repro -f train@{path.parent.name}`") from None
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    missing = [k for k in ("config", "data", weights) if k not in checkpoint]
    if missing:
        raise DataError(f"{path} is missing keys {missing}; rerun `dvc repro -f train@{path.parent.name}`")

    config = checkpoint["config"]
    model = build_model(config["variant"], config["backbone"], checkpoint["data"])
    model.load_state_dict(checkpoint[weights])
    model.to(device).eval()
    return model, checkpoint
