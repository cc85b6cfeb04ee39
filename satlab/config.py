"""The training config file: data, model, estimator, training and evaluation settings."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from satlab.rigfile import Strict
from satlab.validation import ConfigError, FiniteNonNegative, FinitePositive, load_model

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def parse_range(spec: str) -> list[float]:
    """'start:stop:count' (inclusive, like numpy.linspace) or 'a,b,c' into a list of floats."""
    try:
        if ":" in spec:
            start, stop, count = spec.split(":")
            n = int(count)
            if n < 1:
                raise ValueError
            values = [float(start) + (float(stop) - float(start)) * k / max(n - 1, 1)
                      for k in range(n)]
        else:
            values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise ValueError(f"expected 'start:stop:count' or 'a,b,c', got {spec!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"values must be finite numbers (no nan or inf), got {spec!r}")
    return values


class DataConfig(Strict):
    """Which MNIST to use and how to split it."""

    source: Literal["offline", "idx"] = "offline"
    data_dir: Path | None = None
    train_per_class: PositiveInt = 400
    test_per_class: PositiveInt = 100
    limit_train: PositiveInt | None = None  # idx only: first N training images
    limit_test: PositiveInt | None = None

    @model_validator(mode="after")
    def _idx_fields_need_idx(self) -> DataConfig:
        given = [f for f in ("data_dir", "limit_train", "limit_test") if getattr(self, f) is not None]
        if self.source == "offline" and given:
            raise ValueError(f"{', '.join(given)} apply to source: idx (full MNIST files); "
                             "source: offline would ignore them")
        return self


class ModelConfig(Strict):
    """Hybrid network: a digital front end, then physical layers."""

    front: Literal["lenet", "image"] = Field("lenet", description=(
        "lenet: convolutions and a linear layer feed the first physical layer; image: the "
        "digit itself, resized to the first physical layer's square input (an optical input)"))
    activation: Literal["hardtanh", "sigmoid"] = Field("hardtanh", description=(
        "between physical layers, after BatchNorm: hardtanh clips to [0, 1] (optical powers); "
        "sigmoid squashes into (0, 1)"))
    between: Literal["batchnorm", "bias"] = Field("batchnorm", description=(
        "what the electronics do to a physical layer's outputs before the activation: "
        "batchnorm (BatchNorm1d), or bias (a trained bias per output, also on the logits: "
        "the SAT paper's System 4)"))
    readout_scale: FinitePositive = Field(1.0, description=(
        "logits = last physical layer's outputs x this (normalised detector signals need ~10)"))
    conv_channels: list[PositiveInt] = [6, 16]
    physical: list[PositiveInt] = Field([32, 16, 10], min_length=2,
                                        description="features through the physical layers")
    init_from: Path | None = Field(None, description=(
        "start from trained weights: a run folder, a method folder or its weights.pt (e.g. "
        "trained in silico), deployed onto the rig through each layer's weight map"))
    init_weight_range: float = Field(0.5, gt=0, le=1, description=(
        "spread of each physical layer's initial response (a weight bank: weights uniform "
        "in +-value)"))

    @field_validator("physical")
    @classmethod
    def _ten_classes(cls, v: list[int]) -> list[int]:
        if v[-1] != 10:
            raise ValueError("the last physical layer must output 10 MNIST classes")
        return v

    @property
    def has_batchnorm(self) -> bool:
        """The lenet front end and every step between physical layers normalise."""
        return self.front == "lenet" or (len(self.physical) > 2 and self.between == "batchnorm")

    @model_validator(mode="after")
    def _image_front_is_square(self) -> ModelConfig:
        side = math.isqrt(self.physical[0])
        if self.front == "image" and side * side != self.physical[0]:
            raise ValueError(f"front: image needs a square first layer input (side x side pixels), "
                             f"got physical[0] = {self.physical[0]}")
        return self

    @field_validator("conv_channels")
    @classmethod
    def _fits_28_pixels(cls, v: list[int]) -> list[int]:
        if feature_map_size(len(v)) < 1:
            raise ValueError(f"{len(v)} conv stages shrink a 28x28 image to nothing; at most 2")
        return v


def feature_map_size(stages: int) -> int:
    """Side of the feature map after the conv stages (5x5 conv, 2x2 pool; first conv padded)."""
    size = 28
    for i in range(stages):
        size = (size if i == 0 else size - 4) // 2
    return size


class EstimatorConfig(Strict):
    """How physical-layer gradients are estimated."""

    name: Literal["finite_difference", "spsa", "physics_aware", "twin_autograd"] = "finite_difference"
    step: FinitePositive = Field(2e-5, description="perturbation, in the controls' unit")
    scheme: Literal["central", "forward"] = "central"
    directions: PositiveInt = Field(8, description="SPSA directions per layer and step")
    distribution: Literal["rademacher", "hadamard"] = Field(
        "rademacher", description="SPSA: independent random signs, or orthogonal Hadamard rows")
    blockwise: bool = Field(False, description="SPSA: read each control's slope from the one "
                                               "output it changes, where the system declares it")


class TrainingConfig(Strict):
    """Optimisation settings; SAT and plain training share all of them except rho."""

    methods: list[Literal["sat", "plain", "noise", "prune", "weights"]] = Field(
        ["sat", "plain"], min_length=1,
        description=("noise: plain training with Gaussian noise of noise_std on every control "
                     "(or weight, noise_on) during each gradient, the update applied to the clean "
                     "controls; prune: plain training with the penalty prune_lambda x the weights' "
                     "sensitivity to the controls; weights: deploy model.init_from and evaluate "
                     "it, without training"))

    @field_validator("methods")
    @classmethod
    def _once_each(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("list each method once")
        return v

    @model_validator(mode="after")
    def _noise_has_a_size(self) -> TrainingConfig:
        if "noise" in self.methods and self.noise_std == 0:
            raise ValueError(f"method noise needs noise_std > 0 (in the {self.noise_on}' unit)")
        return self

    @model_validator(mode="after")
    def _prune_has_a_weight(self) -> TrainingConfig:
        if "prune" in self.methods and self.prune_lambda == 0:
            raise ValueError("method prune needs prune_lambda > 0 (loss x the controls' unit)")
        return self

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    optimizer: Literal["adam", "sgd"] = "adam"
    lr_controls: FinitePositive = Field(1e-4, description="A per step scale")
    lr_digital: FinitePositive = 1e-3
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description=(
        "cosine: both learning rates decay from their values to 0 over the run (half a "
        "cosine), so the last steps settle instead of jumping; set from the step alone"))
    rho: FiniteNonNegative = 1.0
    adaptive: bool = True
    rho_digital: FiniteNonNegative = 0.0
    rho_alignment: dict[str, FiniteNonNegative] = Field(
        {}, description="SAT's ascent radius per alignment positioner, in its unit")
    knobs_at_once: Literal["all", "worst"] = Field("all", description=(
        "SAT's knob offsets each step: all, every knob of a layer within the ellipsoid of its "
        "radii; worst, only the one knob (of all layers) whose radius x slope is largest, at "
        "its radius"))
    knob_radius: Literal["fixed", "uniform"] = Field("fixed", description=(
        "fixed: the knobs' offsets at their radii every step; uniform: each step's radii "
        "scaled by a fraction drawn uniformly in (0, 1], from the seed and the step (a resumed "
        "run draws the same), so the points between aligned and the radius are trained too"))
    gamma: float = Field(0.5, ge=0, lt=1, description=(
        "weight of the perturbed gradient (WSAM, coupled): 0.5 is SAM; lower values mix in "
        "the unperturbed gradient"))
    noise_std: FiniteNonNegative = Field(0.0, description=(
        "method noise: the std of the noise on every control (or weight, noise_on), in its "
        "unit; drawn from the seed and the step (a resumed run draws the same)"))
    noise_on: Literal["controls", "weights"] = Field("controls", description=(
        "method noise: controls, the gradient pass runs at controls + noise; weights (layers "
        "linear in their inputs, y = W x), it sees weights W + N, N of noise_std per weight "
        "(out x in), added as x N^T to the layer's output"))
    prune_lambda: FiniteNonNegative = Field(0.0, description=(
        "method prune: loss = cross-entropy + prune_lambda x sum over layers and controls k "
        "of ||dw/dc_k|| (w the layer's weights as its twin gives them): favours controls where "
        "the weights move little with the controls, so drift moves them little; unit: loss x "
        "the controls' unit"))
    space: Literal["controls", "weights"] = Field("controls", description=(
        "controls: train the physical controls; weights: train each physical layer in silico "
        "as a weight matrix (estimator twin_autograd, starting from the twin's weights at the "
        "initial controls, clamped to the system's weight range), then evaluate it deployed "
        "onto the rig through the layer's weight-to-control map; lr_controls, rho and "
        "noise_std are then in weight units"))
    seed: int = Field(0, ge=0, lt=2**32)
    checkpoint_every: PositiveInt = 20
    log_every: PositiveInt = 5


class EvaluationConfig(Strict):
    """The drift sweep run after training."""

    drift: str = "0:2:5"
    batch_size: PositiveInt = 500

    @field_validator("drift")
    @classmethod
    def _parse(cls, v: str) -> str:
        parse_range(v)
        return v


class RunConfig(Strict):
    """A whole training config file."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="names the run folder: letters, digits, '.', '_', '-'")
    rig: Path
    runs_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    estimator: EstimatorConfig = EstimatorConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @model_validator(mode="after")
    def _weights_need_a_source(self) -> RunConfig:
        if "weights" in self.training.methods and self.model.init_from is None:
            raise ValueError("training.methods: weights deploys trained weights; set model.init_from")
        return self


def load_config(path: str | Path) -> RunConfig:
    """Validate a config file; relative rig and data_dir paths are relative to the config file.

    (runs_dir is relative to the working directory, like any output path.)
    """
    path = Path(path)
    cfg = load_model(path, RunConfig)
    cfg.rig = (path.parent / cfg.rig).resolve()
    if not cfg.rig.is_file():
        raise ConfigError(path, "rig", f"no rig file at {cfg.rig}")
    if cfg.model.init_from is not None:
        cfg.model.init_from = (path.parent / cfg.model.init_from).resolve()
    if cfg.data.data_dir is not None:
        cfg.data.data_dir = (path.parent / cfg.data.data_dir).resolve()
    return cfg
