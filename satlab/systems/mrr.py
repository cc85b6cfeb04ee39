"""The MRR weight-bank system: a rig's heaters, inputs and detectors composed into layers.

Layer ``y = W(I) x``: ring (i, j) weights input j onto output i, its heater
current I_ij is the control. Each control changes only its own output row.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator

from satlab import registry
from satlab.rig import Rig
from satlab.rigfile import PluginSpec, Strict, SystemSpec
from satlab.systems.protocol import (
    ControlSpace,
    HeaterLayerBackend,
    Imperfection,
    System,
)
from satlab.validation import ConfigError


class MrrLayerSpec(Strict):
    """One physical layer and the instruments that perform it."""

    name: str
    in_features: PositiveInt
    out_features: PositiveInt
    heaters: str
    inputs: str
    detector: str
    heater_channels: list[int] | None = Field(
        None, description="current channel of ring (i, j) in row-major order; default 0..N-1")
    twin: PluginSpec  # the layer's digital model, from the registry like an instrument

    @model_validator(mode="after")
    def _channel_map_size(self) -> MrrLayerSpec:
        n = self.in_features * self.out_features
        if self.heater_channels is not None:
            if len(self.heater_channels) != n:
                raise ValueError(f"heater_channels must list {n} channels (rows*cols), "
                                 f"got {len(self.heater_channels)}")
            if len(set(self.heater_channels)) != n or min(self.heater_channels) < 0:
                raise ValueError("heater_channels must be distinct channel numbers >= 0")
        return self

    @property
    def channels(self) -> list[int]:
        """The heater channel of every ring, row-major."""
        return self.heater_channels or list(range(self.in_features * self.out_features))


class MrrSystemSpec(SystemSpec):
    """The ``system`` section of an MRR weight-bank rig file."""

    model_config = Strict.model_config
    type: Literal["mrr_weight_bank"]
    layers: list[MrrLayerSpec] = Field(min_length=1)


def currents_for_weights(backend: MrrLayerBackend, target: torch.Tensor, iters: int = 40,
                         grid: int = 256) -> torch.Tensor:
    """Currents whose twin weights match ``target`` (rows, cols), ring by ring.

    Heating moves a ring through its resonance (lowest weight) and then away
    from it (weight rising towards +1); the search uses that rising branch: it
    finds each ring's resonance current on a grid, then bisects above it.
    Targets out of reach end at the edge of the range.
    """
    lower, upper = backend.controls.lower, backend.controls.upper
    eye = torch.eye(backend.in_features, dtype=torch.float64)
    weights = lambda currents: backend.twin(eye, currents).T.flatten()  # twin(eye) = W^T
    with torch.no_grad():
        levels = torch.linspace(0, 1, grid, dtype=torch.float64)
        swept = torch.stack([weights(lower + f * (upper - lower)) for f in levels])
        lo = lower + levels[swept.argmin(0)] * (upper - lower)
        hi = upper.clone()
        target = target.flatten().to(torch.float64)
        for _ in range(iters):
            mid = (lo + hi) / 2
            above = weights(mid) > target
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
    return (lo + hi) / 2


class MrrLayerBackend(HeaterLayerBackend):
    """Performs ``y = W(I) x`` for one physical layer on the rig, and holds its twin."""

    def __init__(self, rig: Rig, spec: MrrLayerSpec, twin: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.rig, self.spec, self.name = rig, spec, spec.name
        self.in_features, self.out_features = spec.in_features, spec.out_features
        n = spec.in_features * spec.out_features
        source = rig.source(spec.heaters)
        self.full_scale_W = rig.modulator(spec.inputs).full_scale_W
        channels = spec.channels  # checked by MrrWeightBank.check_open
        guard = rig.guards[spec.heaters]
        upper = torch.as_tensor(guard.max_current[channels], dtype=torch.float64)
        self.controls = ControlSpace("heater current", "A", torch.zeros_like(upper), upper)
        identity = channels == list(range(source.channels))
        self.channels = None if identity else np.asarray(channels)  # None: write all at once
        self.control_outputs = np.repeat(np.arange(spec.out_features), spec.in_features)
        limits = guard.limits
        if limits.max_total_power is not None:
            sharing = sum(layer.in_features * layer.out_features
                          for layer in rig.spec.system.layers if layer.heaters == spec.heaters)
            self.max_sum_sq = limits.max_total_power / limits.heater_resistance_ohm * n / sharing
        self.twin: torch.nn.Module = twin or registry.lookup(spec.twin.driver)(**spec.twin.options)

    def control_grid(self) -> tuple[int, int]:
        """One heater per weight: (out_features, in_features)."""
        return self.out_features, self.in_features

    def initial_controls(self, generator: torch.Generator, scale: float) -> torch.Tensor:
        """Currents on the rising branch whose weights are uniform in [-scale, scale]."""
        target = (torch.rand(self.out_features, self.in_features, generator=generator,
                             dtype=torch.float64) * 2 - 1) * scale
        return self.controls_for_weights(target)

    def weights_of(self, controls: torch.Tensor) -> torch.Tensor:
        """The twin's weights (out, in) at these currents."""
        with torch.no_grad():
            return self.twin_weights(controls.detach().double())

    def twin_weights(self, controls: torch.Tensor) -> torch.Tensor:
        """The twin's weights (out, in) at these currents, differentiable: twin(eye) = W^T."""
        return self.twin(torch.eye(self.in_features, dtype=controls.dtype), controls).T

    def controls_for_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Currents that give weights (out, in): through the calibrated map (crosstalk
        compensated) when the twin is a calibration's, else by search on the twin."""
        bank = getattr(self.twin, "bank", None)
        if bank is None:
            return currents_for_weights(self, weights)
        currents, _ = bank.currents_for(weights.detach().double().numpy())
        return torch.from_numpy(currents)


class MrrWeightBank(System):
    """Layers of microring weight banks: heater source, WDM input modulator, balanced detectors."""

    Spec = MrrSystemSpec
    weight_range = (-1.0, 1.0)  # balanced detection: through minus drop port, normalised
    imperfections = {
        "drift_K": Imperfection("K", 0.0, "chip temperature offset from calibration "
                                           "(resonances move by drift_nm_per_K)"),
        "fabrication_std_nm": Imperfection(
            "nm", 0.0, "extra random resonance offset per ring (another chip of the same "
                       "process)", random=True, low=0.0),
        "crosstalk_scale": Imperfection("x", 1.0, "thermal crosstalk relative to calibration", low=0.0),
        "detector_noise_W": Imperfection("W", 0.0, "detector noise (std per reading); the "
                                                   "default is the rig file's", low=0.0),
    }

    def check(self) -> None:
        """Instruments exist with the right kinds, optics unshared, heater channels disjoint."""
        path = self.path
        used: dict[str, set[int]] = {}
        optics: dict[str, str] = {}
        for i, layer in enumerate(self.spec.layers):
            where = f"system.layers.{i}"
            for role, kind in (("heaters", "current_source"), ("inputs", "input_modulator"),
                               ("detector", "photodetector")):
                target = getattr(layer, role)
                self.require_instrument(f"{where}.{role}", target, kind)
                if role != "heaters":
                    if target in optics:  # each layer loads and reads its own optics
                        raise ConfigError(path, f"{where}.{role}", f"{target!r} is already used by "
                                          f"layer {optics[target]}; each layer needs its own {kind}")
                    optics[target] = layer.name
            channels = set(layer.channels)
            if channels & used.setdefault(layer.heaters, set()):
                raise ConfigError(path, f"{where}.heater_channels", f"channels overlap another "
                                  f"layer's on {layer.heaters!r}; give each layer its own heater_channels")
            used[layer.heaters] |= channels
            self.require_twin(f"{where}.twin", layer.twin)

    def check_open(self, rig: Rig) -> None:
        """Every layer's sizes match its modulator and detector, its heater channels exist."""
        for i, layer in enumerate(self.spec.layers):
            where = f"system.layers.{i}"
            for field, size, name in (("in_features", layer.in_features, layer.inputs),
                                      ("out_features", layer.out_features, layer.detector)):
                channels = rig.instruments[name].channels
                if size != channels:
                    raise ConfigError(self.path, f"{where}.{field}",
                                      f"{size}, but {name} has {channels} channels")
            channels = rig.source(layer.heaters).channels
            if max(layer.channels) >= channels:
                field, what = (("heater_channels", f"channel {max(layer.channels)} does")
                               if layer.heater_channels is not None else
                               ("in_features", f"in_features x out_features = {len(layer.channels)} "
                                               "heaters do"))
                raise ConfigError(self.path, f"{where}.{field}",
                                  f"{what} not exist on {layer.heaters} ({channels} channels)")

    def layer_shapes(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of every bank."""
        return [(layer.name, layer.in_features, layer.out_features) for layer in self.spec.layers]

    def control_span(self) -> tuple[float, str]:
        """The lowest max_current of the heater sources the banks use (currents start at 0)."""
        sources = {layer.heaters for layer in self.spec.layers}
        return min(min(self.rig_spec.instruments[s].limits.max_current) for s in sources), "A"

    def build_layers(self, rig: Rig) -> list[MrrLayerBackend]:
        """One backend per bank."""
        return [MrrLayerBackend(rig, layer, self.make_twin(f"system.layers.{i}.twin", layer.twin,
                                                           layer.name))
                for i, layer in enumerate(self.spec.layers)]
