"""Typed schema for params.yaml, validated before any stage does work.

Every stage calls :func:`load_params` first. An unknown key, a wrong type, an
out-of-range value or a missing file raises :class:`ParamsError`, whose message
names the key, the value and what is allowed; stages turn it into exit status 2.
"""

from __future__ import annotations

import enum
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = "params.yaml"


class ParamsError(ValueError):
    """Invalid params.yaml; the message names each bad key, its value and what is allowed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------
# Choices
# ---------------------------------------------------------------------------


class Source(str, enum.Enum):
    digits = "digits"
    mnist5k = "mnist5k"
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"
    imagefolder = "imagefolder"


class Paradigm(str, enum.Enum):
    regression = "regression"
    ar = "ar"
    diffusion = "diffusion"


class OrderFamily(str, enum.Enum):
    """Pixel orders for autoregression; each splits the H*W pixels into equal groups."""

    raster = "raster"  # k pixels per step, row by row
    patch = "patch"  # an n x n block of adjacent pixels per step, blocks in raster order
    spread = "spread"  # n*n pixels per step on a lattice with stride (H/n, W/n)
    random = "random"  # k pixels per step in a random order


class Schedule(str, enum.Enum):
    linear = "linear"
    cosine = "cosine"


class Prediction(str, enum.Enum):
    eps = "eps"
    v = "v"


class Precision(str, enum.Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class SamplerMethod(str, enum.Enum):
    regression = "regression"
    ar = "ar"
    ddpm = "ddpm"
    ddim = "ddim"


PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


class DataConfig(Strict):
    source: Source = Source.mnist5k
    root: str = "data/raw"
    download: bool = False
    image_size: Annotated[int, Field(ge=4, le=256)] = 16
    levels: Annotated[int, Field(ge=2, le=256)] = 16
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.2
    max_per_class: PositiveInt | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction is {self.val_fraction + self.test_fraction:g}; "
                "keep the sum below 0.9 so that at least 10% of the images remain for training"
            )
        return self


class BackboneConfig(Strict):
    """The one network shared by every variant: a class-conditional conv U-Net."""

    width: PositiveInt = 16
    channel_mult: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4])
    num_res_blocks: PositiveInt = 1
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


class TrainConfig(Strict):
    """Settings of the training loop shared by every variant."""

    batch_size: PositiveInt = 64
    steps: PositiveInt = 4000
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 2e-3
    warmup_steps: NonNegInt = 100
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    grad_clip: Annotated[float, Field(gt=0.0)] = 1.0
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.999
    label_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    precision: Precision = Precision.bf16
    checkpoint_every: PositiveInt = 500
    log_every: PositiveInt = 50
    nproc: PositiveInt = 1
    seed: int = 0

    @model_validator(mode="after")
    def _batch_splits_across_processes(self) -> TrainConfig:
        if self.batch_size % self.nproc:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by nproc {self.nproc}; "
                "use a batch_size that is a multiple of nproc"
            )
        return self


class VariantConfig(Strict):
    """One trained model; the paradigm fixes its input and output layers and its loss."""

    paradigm: Paradigm
    # ar: the order families that training masks are drawn from, and their group sizes
    # (k pixels for raster and random, n for n x n patch and spread groups).
    orders: list[OrderFamily] = Field(
        default_factory=lambda: [OrderFamily.random, OrderFamily.raster, OrderFamily.patch, OrderFamily.spread]
    )
    group_sizes: list[PositiveInt] = Field(default_factory=lambda: [1])
    patch_sizes: list[PositiveInt] = Field(default_factory=lambda: [2, 4])
    # diffusion
    timesteps: PositiveInt = 1000
    schedule: Schedule = Schedule.cosine
    prediction: Prediction = Prediction.eps
    # any paradigm: overrides of the shared training loop for this variant
    steps: PositiveInt | None = None


class EvaluatorConfig(Strict):
    """The classifier whose features and predictions every metric uses."""

    width: PositiveInt = 32  # channels of the first conv stage; features have 4 * width
    epochs: PositiveInt = 15
    batch_size: PositiveInt = 128
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 2e-3  # peak of the one-cycle schedule
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-4
    shift: Annotated[int, Field(ge=0, le=4)] = 1  # max random translation in pixels during training
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    seed: int = 0


class SamplingConfig(Strict):
    """Settings shared by every sampler."""

    per_class: PositiveInt = 100  # samples generated for every class
    batch_size: PositiveInt = 500  # images per network call
    animate: PositiveInt = 8  # samples shown in process.gif; every sampler writes that file
    seed: int = 0  # combined with a hash of the sampler name into each sampler's seed


class SamplerConfig(Strict):
    """One sampling procedure applied to one trained variant."""

    variant: str
    method: SamplerMethod
    # ar
    order: OrderFamily = OrderFamily.raster
    group: PositiveInt = 1  # k for raster and random, n for patch and spread (n*n pixels per step)
    greedy: bool = False
    temperature: Annotated[float, Field(gt=0.0)] = 1.0
    # diffusion
    steps: PositiveInt | None = None  # respaced steps S; None means every step of T
    eta: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # ddim only: 0 is deterministic, 1 matches DDPM noise
    guidance: Annotated[float, Field(ge=0.0)] = 0.0  # classifier-free guidance w; 0 samples the conditional model
    variance: Literal["posterior", "beta"] = "posterior"  # ddpm only: sigma_t^2 is the posterior variance or beta_t


class EvaluateConfig(Strict):
    bootstrap: PositiveInt = 200
    knn_k: PositiveInt = 3
    nll_images: PositiveInt = 200
    seed: int = 0


class RuntimeConfig(Strict):
    """Execution settings that no stage lists as params, so changing them reruns nothing."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Run each stage again in the Docker image that `python -m genladder.container build` makes.
    container: bool = False
    # GPUs passed to the container, "all" or comma-separated indices; selects the CUDA image.
    gpus: str | None = None
    # Image tag to run; None means the content-hashed tag of the current docker/ recipe.
    image: str | None = None

    @model_validator(mode="after")
    def _gpus_is_all_or_indices(self) -> RuntimeConfig:
        if self.gpus is not None and not re.fullmatch(r"all|\d+(,\d+)*", self.gpus):
            raise ValueError(
                f"runtime.gpus is {self.gpus!r}; use null, 'all' or comma-separated GPU indices such as '0,1'"
            )
        return self


class TrackingConfig(Strict):
    experiment: str = "genladder"
    enabled: bool = True


class Params(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    variants: dict[str, VariantConfig] = Field(default_factory=dict)
    evaluator: EvaluatorConfig = Field(default_factory=EvaluatorConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    samplers: dict[str, SamplerConfig] = Field(default_factory=dict)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        errors = list(_cross_field_errors(self))
        if errors:
            raise ValueError("\n  ".join(errors))
        return self


def _cross_field_errors(p: Params):
    """Yield one message per setting that does not fit the image or the other sections."""
    side = p.data.image_size
    pixels = side * side
    for name, v in p.variants.items():
        if v.paradigm is Paradigm.ar:
            for k in v.group_sizes:
                if pixels % k:
                    yield (
                        f"variants.{name}.group_sizes contains {k}, which does not divide the "
                        f"{pixels} pixels of a {side}x{side} image; use a divisor of {pixels}"
                    )
            for n in v.patch_sizes:
                if side % n or n >= side:
                    yield (
                        f"variants.{name}.patch_sizes contains {n}; n must divide the image side "
                        f"{side} and be smaller than it (allowed: {_divisors_below(side)})"
                    )
    for name, s in p.samplers.items():
        variant = p.variants.get(s.variant)
        if variant is None:
            yield (
                f"samplers.{name}.variant is {s.variant!r}, which is not a key of variants "
                f"(known: {sorted(p.variants)})"
            )
            continue
        expected = {
            SamplerMethod.regression: Paradigm.regression,
            SamplerMethod.ar: Paradigm.ar,
            SamplerMethod.ddpm: Paradigm.diffusion,
            SamplerMethod.ddim: Paradigm.diffusion,
        }[s.method]
        if variant.paradigm is not expected:
            yield (
                f"samplers.{name}.method is {s.method.value!r}, which needs a {expected.value} variant, "
                f"but variants.{s.variant} is {variant.paradigm.value}"
            )
        if s.method is SamplerMethod.ar:
            if s.order in (OrderFamily.patch, OrderFamily.spread):
                if side % s.group or s.group >= side:
                    yield (
                        f"samplers.{name}.group is {s.group}; for {s.order.value} groups n must divide "
                        f"the image side {side} and be smaller than it (allowed: {_divisors_below(side)})"
                    )
            elif pixels % s.group:
                yield (
                    f"samplers.{name}.group is {s.group}, which does not divide the {pixels} pixels "
                    f"of a {side}x{side} image; use a divisor of {pixels}"
                )
        if s.method in (SamplerMethod.ddpm, SamplerMethod.ddim) and s.steps is not None:
            if s.steps > variant.timesteps:
                yield (
                    f"samplers.{name}.steps is {s.steps}, more than variants.{s.variant}.timesteps "
                    f"({variant.timesteps}); use at most {variant.timesteps}"
                )
            elif s.method is SamplerMethod.ddim and variant.timesteps % s.steps:
                # diffusers' DDIMScheduler (0.42) steps from t to t - T // S, which matches the next
                # respaced timestep only when S divides T.
                yield (
                    f"samplers.{name}.steps is {s.steps}, which does not divide "
                    f"variants.{s.variant}.timesteps ({variant.timesteps}); ddim needs a divisor "
                    f"(allowed: {_divisors(variant.timesteps)})"
                )


def _divisors_below(side: int) -> list[int]:
    return [n for n in range(1, side) if side % n == 0]


def _divisors(number: int) -> list[int]:
    return [n for n in range(1, number + 1) if number % n == 0]


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _format_error(err: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        return f"{key}: unknown key (value {value!r}); remove it or check its spelling"
    if kind == "missing":
        return f"{key}: required key is missing"
    message = err["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        return f"{key}: {message}" if key != "(top level)" else message
    return f"{key}: invalid value {value!r}: {message}"


def validate_params(raw: dict[str, Any]) -> Params:
    """Validate a parsed params mapping, raising ParamsError with one line per problem."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params must be a mapping of sections, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(e) for e in exc.errors()]
        raise ParamsError("invalid params:\n  " + "\n  ".join(lines)) from None
    for name, value in (("train.lr", params.train.lr), ("evaluator.lr", params.evaluator.lr)):
        if not math.isfinite(value):
            raise ParamsError(f"invalid params:\n  {name}: invalid value {value!r}: must be finite")
    return params


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raises ParamsError naming the file when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path.resolve()}; run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return validate_params(raw)
