"""The system protocol: what a physical system gives the controller, whatever its optics.

A *system* type (registered under ``satlab.systems``, selected by ``system.type``
in the rig file) validates its rig-file section and builds *layer backends* on an
open rig. A layer backend declares its controls (quantity, unit, bounds), performs
queries on the rig (one control vector, or a stack of them in one call), holds
the layer's digital twin, keeps controls applicable, and starts them somewhere
sensible. Named *imperfections* (drift, fabrication spread, noise, ...) are what
evaluation sweeps on a simulated rig. The controller, estimators and runs use
only this module, never a concrete system.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from satlab import registry
from satlab.calibration.store import load_calibration
from satlab.rigfile import PluginSpec, RigSpec, Strict, SystemSpec, check_plugin
from satlab.validation import ConfigError, FinitePositive

if TYPE_CHECKING:
    from satlab.rig import Rig


@dataclass(frozen=True)
class Imperfection:
    """A named deviation from the calibrated bench that a simulated rig can be set to."""

    unit: str
    default: float
    description: str
    random: bool = False  # a value is a distribution: each draw gives another realisation
    low: float = -math.inf  # the values that mean something (a std is never negative)
    high: float = math.inf

    def admits(self, value: float) -> bool:
        """Whether ``value`` lies in the imperfection's declared range."""
        return self.low <= value <= self.high

    @property
    def range_text(self) -> str:
        """The declared range, e.g. ``>= 0`` or ``0 to 1``."""
        if math.isinf(self.low) and math.isinf(self.high):
            return "any finite value"
        if math.isinf(self.high):
            return f">= {self.low:g}"
        if math.isinf(self.low):
            return f"<= {self.high:g}"
        return f"{self.low:g} to {self.high:g}"


@dataclass(frozen=True)
class ControlSpace:
    """What one layer trains: a flat vector of physical controls with per-control bounds."""

    quantity: str  # e.g. "heater current", "SLM phase"
    unit: str  # SI: "A", "rad", ...
    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def size(self) -> int:
        """Number of trainable controls."""
        return self.lower.numel()


class AlignmentKnobSpec(Strict):
    """An alignment axis a layer's training may move: which positioner, which of the
    bench's axes it moves (what the twin models), and its central-difference step."""

    positioner: str
    axis: str
    step: FinitePositive = Field(description="central-difference step, in the positioner's unit")


@dataclass(frozen=True)
class AlignmentKnob:
    """A layer's alignment knob on an open rig."""

    positioner: str
    axis: str
    step: float
    travel: tuple[float, float]


class MacroPixels(nn.Module):
    """Blocks of ``block x block`` device pixels driven as one control (e.g. an SLM mask).

    Controls have shape (..., H/block * W/block); device settings (..., H * W).
    """

    def __init__(self, height: int, width: int, block: int) -> None:
        super().__init__()
        if height % block or width % block:
            raise ValueError(f"a {height}x{width} device does not tile into {block}x{block} blocks")
        self.height, self.width, self.block = height, width, block

    @property
    def size(self) -> int:
        """Number of controls."""
        return (self.height // self.block) * (self.width // self.block)

    def forward(self, controls: torch.Tensor) -> torch.Tensor:
        """Device settings for controls; differentiable, so twins train through it."""
        b, lead = self.block, controls.shape[:-1]
        grid = controls.reshape(*lead, self.height // b, self.width // b)
        return grid.repeat_interleave(b, -2).repeat_interleave(b, -1).reshape(*lead, -1)

    def bound(self, device_bound: torch.Tensor, upper: bool) -> torch.Tensor:
        """A control's bound: the tightest of its block's device bounds."""
        b = self.block
        blocks = device_bound.reshape(self.height // b, b, self.width // b, b)
        reduce = torch.amin if upper else torch.amax
        return reduce(blocks, dim=(1, 3)).flatten()


class LayerBackend(ABC):
    """One physical layer on the rig: controls, queries, twin, projection, initialisation.

    Subclasses implement :meth:`measure` (what a query does on the instruments)
    and set ``name``, ``in_features``, ``out_features``, ``controls`` and ``twin``.
    """

    name: str
    in_features: int
    out_features: int
    controls: ControlSpace
    twin: nn.Module  # twin(x, controls) -> output, differentiable in both
    # For each control, the one output it can change; None: any output. Estimators
    # use it to read each output's own slope from a simultaneous perturbation.
    control_outputs: np.ndarray | None = None

    # Heater-driven layers: their share of the source's power budget as a sum of I^2
    # (max_total_power / heater resistance); None: no budget.
    max_sum_sq: float | None = None

    # Alignment axes (stages, mounts) that move this layer's light; SAT's ascent can move
    # them. Positions are offsets from the aligned position, all 0 between steps.
    knobs: tuple[AlignmentKnob, ...] = ()

    def __init__(self) -> None:
        self.queries = 0
        self.seconds = 0.0
        self.alignment = np.zeros(0)

    def attach_knobs(self, rig: Rig, specs: list[AlignmentKnobSpec]) -> None:
        """Take the knobs of the rig file and move them to the aligned position (through
        ``self.rig``, which the backend has set)."""
        self.knobs = tuple(AlignmentKnob(k.positioner, k.axis, k.step, rig.instruments[k.positioner].travel)
                           for k in specs)
        self.alignment = np.full(len(self.knobs), np.nan)
        self.align(np.zeros(len(self.knobs)))

    def align(self, offsets: np.ndarray) -> None:
        """Move the knobs to ``offsets`` from the aligned position (the twin follows)."""
        for i, (knob, value) in enumerate(zip(self.knobs, offsets, strict=True)):
            if value != self.alignment[i]:
                self.rig.move(knob.positioner, float(value))
                self.alignment[i] = value

    def twin_output(self, x: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
        """The twin's output with the knobs where they are now."""
        if not self.knobs:
            return self.twin(x, controls)
        at = {k.axis: float(v) for k, v in zip(self.knobs, self.alignment, strict=True)}
        return self.twin(x, controls, alignment=at)

    @property
    def n_controls(self) -> int:
        """Number of trainable controls."""
        return self.controls.size

    def control_grid(self) -> tuple[int, int]:
        """How the controls lie as a picture, (rows, cols) in row-major order: for the live
        status; (1, n) unless the layer has a natural grid."""
        return 1, self.n_controls

    def camera_regions(self) -> tuple[str, list[list[int]]] | None:
        """The camera this layer reads and its detector regions as pixel boxes
        [row0, col0, row1, col1] (row1, col1 excluded) on that camera's frames, for the live
        status; None: the layer reads no camera."""
        return None

    @abstractmethod
    def measure(self, x: torch.Tensor, settings: np.ndarray) -> np.ndarray:
        """Apply each row of ``settings`` (P, n) with inputs x (B, in); read (P, B, out).

        Every row is checked by the rig before any is applied.
        """

    def query_many(self, x: torch.Tensor, settings: np.ndarray) -> np.ndarray:
        """P rig queries in one call: outputs (P, B, out) for control vectors (P, n)."""
        start = time.perf_counter()
        out = self.measure(x, np.asarray(settings, dtype=float))
        self.seconds += time.perf_counter() - start
        self.queries += len(settings)
        return out

    def query(self, x: torch.Tensor, controls: np.ndarray) -> np.ndarray:
        """One rig query: outputs (B, out) for one control vector."""
        return self.query_many(x, np.asarray(controls, dtype=float)[None])[0]

    def evaluate(self, x: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
        """``query`` with torch tensors in and out."""
        return torch.from_numpy(self.query(x, controls.detach().numpy()))

    def project(self, controls: torch.Tensor, margin: float = 0.0) -> None:
        """Move controls in place into their bounds, ``margin`` inside (room for probes), and
        into the layer's power budget if it has one (``max_sum_sq``): a probe of +-margin on
        every control at once (SPSA) still fits it."""
        lo, hi = self.controls.lower + margin, self.controls.upper - margin
        with torch.no_grad():
            controls.clamp_(lo, hi)
            if self.max_sum_sq is None:
                return
            budget = (self.max_sum_sq ** 0.5 - margin * self.n_controls ** 0.5) ** 2
            if float(lo.pow(2).sum()) > budget:
                # imported here: the rig imports the systems, not the reverse
                from satlab.rig import RigError

                raise RigError(f"{self.rig.path}: layer {self.name}: the power limit leaves no "
                               f"room for currents of at least {margin:g} A on every heater")
            for _ in range(20):  # scale into the budget; re-clamping can add a little back
                total = float(controls.pow(2).sum())
                if total <= budget:
                    return
                controls.mul_((budget / total) ** 0.5 * (1 - 1e-9)).clamp_(lo, hi)

    def weights_of(self, controls: torch.Tensor) -> torch.Tensor | None:
        """The layer's weights (out, in) at these controls; None: the layer has no weights."""
        return None

    def twin_weights(self, controls: torch.Tensor) -> torch.Tensor:
        """The twin's weights (out, in) at these controls, differentiable in them (layers
        linear in their inputs only)."""
        raise NotImplementedError(f"layer {self.name} has no weights")

    def weight_sensitivity(self, controls: torch.Tensor) -> torch.Tensor:
        """Sum over the controls c_k of ||dw/dc_k||_2, w the twin's weights: a scalar whose
        own gradient (second derivatives of the twin) autograd can take."""
        # jacrev batches one vector-Jacobian product per weight: exact for any twin, and
        # differentiable again by ordinary autograd
        jac = torch.func.jacrev(lambda c: self.twin_weights(c).flatten())(controls)
        return torch.linalg.vector_norm(jac, dim=0).sum()

    def controls_for_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Controls that show weights (out, in) on this layer."""
        raise NotImplementedError(f"layer {self.name} cannot be set from weights")

    def initial_controls(self, generator: torch.Generator, scale: float) -> torch.Tensor:
        """Starting controls; ``scale`` is the spread of the layer's response (0..1]."""
        lo, hi = self.controls.lower, self.controls.upper
        mid, half = (lo + hi) / 2, (hi - lo) / 2 * scale
        return mid + (torch.rand(lo.shape, generator=generator, dtype=torch.float64) * 2 - 1) * half


class HeaterLayerBackend(LayerBackend):
    """A layer whose controls are heater currents: inputs on a modulator (``spec.inputs``),
    currents on a source (``spec.heaters``, on ``channels`` of it, None: all), outputs on
    detectors (``spec.detector``), read in input units (``full_scale_W``)."""

    channels: np.ndarray | None = None

    def __init__(self) -> None:
        super().__init__()
        self._loaded: tuple[torch.Tensor, int] | None = None

    def measure(self, x: torch.Tensor, settings: np.ndarray) -> np.ndarray:
        """Write each current vector (A), read the detectors; in input units."""
        # The modulator holds its pattern: reload only when x changes. Holding x
        # itself (not its id) means a freed tensor's recycled id cannot fool this.
        fresh = self._loaded is None or self._loaded[0] is not x or self._loaded[1] != x._version
        inputs = (self.spec.inputs, x.detach().double().numpy()) if fresh else None
        power = self.rig.measure_many(self.spec.heaters, settings, self.spec.detector,
                                      self.channels, inputs)
        self._loaded = (x, x._version)
        return np.divide(power, self.full_scale_W, out=power)  # a new array: scale in place


class System(ABC):
    """A system type: validates its rig-file section and builds its layers on an open rig."""

    Spec: ClassVar[type[SystemSpec]]
    imperfections: ClassVar[dict[str, Imperfection]] = {}
    alignment_axes: ClassVar[tuple[str, ...]] = ()  # imperfections a stage or mount can move
    # Layers linear in their inputs (y = W x) have weights, in this range; None: no weights.
    # Known before the rig opens, so configs that need weights are refused early.
    weight_range: ClassVar[tuple[float, float] | None] = None

    def __init__(self, rig_spec: RigSpec, path: str | Path = "<rig>") -> None:
        self.rig_spec, self.path = rig_spec, Path(path)
        self.spec = rig_spec.system

    def check(self) -> None:
        """Cross-references in the rig file, before anything opens; raise ConfigError."""

    def require_instrument(self, field: str, name: str, kind: str) -> None:
        """ConfigError at ``field`` unless the rig file has an instrument ``name`` of ``kind``."""
        instruments = self.rig_spec.instruments
        if name not in instruments:
            raise ConfigError(self.path, field, f"no instrument named {name!r}")
        if instruments[name].kind != kind:
            raise ConfigError(self.path, field, f"{name!r} must be a {kind}")

    def require_own_instruments(self, roles: tuple[tuple[str, str], ...]) -> None:
        """ConfigError unless every layer's instrument of each (role, kind) exists with that
        kind and no two roles or layers share one."""
        used: dict[str, str] = {}
        for i, layer in enumerate(self.spec.layers):
            for role, kind in roles:
                field, name = f"system.layers.{i}.{role}", getattr(layer, role)
                self.require_instrument(field, name, kind)
                if name in used:
                    raise ConfigError(self.path, field, f"{name!r} is already used by {used[name]}; "
                                      "each layer needs its own")
                used[name] = field

    def require_knobs(self, field: str, knobs: list[AlignmentKnobSpec]) -> None:
        """ConfigError at ``field`` unless every knob names its own positioner and one of
        the system's alignment axes."""
        seen: set[str] = set()
        for i, knob in enumerate(knobs):
            self.require_instrument(f"{field}.{i}.positioner", knob.positioner, "positioner")
            if knob.axis not in self.alignment_axes:
                raise ConfigError(self.path, f"{field}.{i}.axis",
                                  f"expected one of {', '.join(self.alignment_axes)}, got {knob.axis!r}")
            if knob.positioner in seen:
                raise ConfigError(self.path, f"{field}.{i}.positioner", f"{knob.positioner!r} is listed twice")
            seen.add(knob.positioner)

    def check_knobs_open(self, rig: Rig, field: str, knobs: list[AlignmentKnobSpec]) -> None:
        """Each knob's central-difference probes fit in its positioner's travel; a simulated
        stage moves the knob's axis."""
        for i, knob in enumerate(knobs):
            dev = rig.instruments[knob.positioner]
            if getattr(dev, "axis", knob.axis) != knob.axis:
                raise ConfigError(self.path, f"{field}.{i}.axis",
                                  f"{knob.positioner} moves the bench's {dev.axis}, not {knob.axis}")
            low, high = dev.travel
            if not (low <= -knob.step and knob.step <= high):
                raise ConfigError(self.path, f"{field}.{i}.step",
                                  f"{knob.step:g} leaves the travel [{low:g}, {high:g}] of {knob.positioner}")

    def knob_names(self) -> list[str]:
        """The positioners of every layer's alignment knobs, from the rig file."""
        return []

    def require_twin(self, field: str, twin: PluginSpec) -> None:
        """ConfigError at ``field`` unless ``twin`` names a registered torch module."""
        check_plugin(self.path, field, twin.driver, {}, twin.options,
                     (nn.Module, "digital twin (torch module)"))

    def make_twin(self, field: str, twin: PluginSpec, layer: str) -> nn.Module:
        """Layer ``layer``'s twin: from the rig file's calibration if it names one, else
        from the twin's own options (a preset)."""
        cls = registry.lookup(twin.driver)
        if self.rig_spec.calibration is None:
            return cls(**twin.options)
        build = getattr(cls, "from_calibration", None)
        if build is None:
            raise ConfigError(self.path, "calibration", f"{twin.driver} (at {field}) cannot be "
                              "built from a calibration")
        return build(load_calibration(self.rig_spec.calibration), layer, **twin.options)

    def check_open(self, rig: Rig) -> None:
        """What is known only once the instruments are open (e.g. channel counts)."""

    @abstractmethod
    def layer_shapes(self) -> list[tuple[str, int, int]]:
        """(name, in_features, out_features) of every physical layer, from the rig file."""

    def control_span(self) -> tuple[float, str] | None:
        """The narrowest control range of any layer and its unit, from the rig file (None:
        not known before the rig opens); a perturbation step must fit well inside it."""
        return None

    @abstractmethod
    def build_layers(self, rig: Rig) -> list[LayerBackend]:
        """The layer backends of this system on an open rig."""
