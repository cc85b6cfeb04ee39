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

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from satlab.rigfile import PluginSpec, RigSpec, SystemSpec, check_plugin
from satlab.validation import ConfigError

if TYPE_CHECKING:
    from satlab.rig import Rig


@dataclass(frozen=True)
class Imperfection:
    """A named deviation from the calibrated bench that a simulated rig can be set to."""

    unit: str
    default: float
    description: str
    random: bool = False  # a value is a distribution: each draw gives another realisation


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

    def __init__(self) -> None:
        self.queries = 0
        self.seconds = 0.0

    @property
    def n_controls(self) -> int:
        """Number of trainable controls."""
        return self.controls.size

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
        """Move controls in place into their bounds, ``margin`` inside (room for probes)."""
        with torch.no_grad():
            controls.clamp_(self.controls.lower + margin, self.controls.upper - margin)

    def initial_controls(self, generator: torch.Generator, scale: float) -> torch.Tensor:
        """Starting controls; ``scale`` is the spread of the layer's response (0..1]."""
        lo, hi = self.controls.lower, self.controls.upper
        mid, half = (lo + hi) / 2, (hi - lo) / 2 * scale
        return mid + (torch.rand(lo.shape, generator=generator, dtype=torch.float64) * 2 - 1) * half


class System(ABC):
    """A system type: validates its rig-file section and builds its layers on an open rig."""

    Spec: ClassVar[type[SystemSpec]]
    imperfections: ClassVar[dict[str, Imperfection]] = {}

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

    def require_twin(self, field: str, twin: PluginSpec) -> None:
        """ConfigError at ``field`` unless ``twin`` names a registered torch module."""
        check_plugin(self.path, field, twin.driver, {}, twin.options,
                     (nn.Module, "digital twin (torch module)"))

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
