"""The MZI-mesh system: a programmable mesh's heaters, input modulator and port detectors
composed into a layer.

Layer ``y = |U(I) x|^2`` on the first ``out_features`` ports: the input vector is put on
the mesh's modes as field amplitudes, every heater current I is a control, and every
control can change every output (the SAT paper's System 2).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, PositiveInt

from satlab.rig import Rig
from satlab.rigfile import PluginSpec, Strict, SystemSpec
from satlab.systems.protocol import (
    ControlSpace,
    HeaterLayerBackend,
    Imperfection,
    System,
)
from satlab.validation import ConfigError


class MziLayerSpec(Strict):
    """One mesh and the instruments that perform it."""

    name: str
    in_features: PositiveInt = Field(description="the mesh's modes")
    out_features: PositiveInt = Field(description="detected ports, the first of the mesh's outputs")
    heaters: str
    inputs: str
    detector: str
    twin: PluginSpec


class MziSystemSpec(SystemSpec):
    """The ``system`` section of an MZI-mesh rig file."""

    model_config = Strict.model_config
    type: Literal["mzi_mesh"]
    layers: list[MziLayerSpec] = Field(min_length=1)


class MziLayerBackend(HeaterLayerBackend):
    """Performs ``|U(I) x|^2`` for one mesh on the rig, and holds its twin."""

    def __init__(self, rig: Rig, spec: MziLayerSpec, twin: torch.nn.Module) -> None:
        super().__init__()
        self.rig, self.spec, self.name, self.twin = rig, spec, spec.name, twin
        self.in_features, self.out_features = spec.in_features, spec.out_features
        self.full_scale_W = rig.modulator(spec.inputs).full_scale_W
        guard = rig.guards[spec.heaters]
        upper = torch.as_tensor(guard.max_current, dtype=torch.float64)
        self.controls = ControlSpace("heater current", "A", torch.zeros_like(upper), upper)
        if guard.limits.max_total_power is not None:  # the source drives this mesh alone
            self.max_sum_sq = guard.limits.max_total_power / guard.limits.heater_resistance_ohm

    def initial_controls(self, generator: torch.Generator, scale: float) -> torch.Tensor:
        """Currents of phases uniform in [0, 2 pi * scale): a random mesh at scale 1."""
        phases = torch.rand(self.n_controls, generator=generator, dtype=torch.float64) * 2 * math.pi * scale
        return self.twin.mesh.currents_for_phases(phases).clamp(max=self.controls.upper)


class MziMeshSystem(System):
    """Programmable MZI meshes: heater source, input modulator, port detectors."""

    Spec = MziSystemSpec
    imperfections = {
        "sigma_bs": Imperfection("", 0.0, "coupler splitting error std (splitting 1/2 +- e)",
                                 random=True, low=0.0, high=1.0),
        "sigma_phase": Imperfection("rad", 0.0, "phase error std on every theta and phi",
                                    random=True, low=0.0),
        "crosstalk_scale": Imperfection("x", 1.0, "thermal crosstalk relative to the rig file's", low=0.0),
        "detector_noise_W": Imperfection("W", 0.0, "detector noise (std per reading); the "
                                                   "default is the rig file's", low=0.0),
    }

    def check(self) -> None:
        """Instruments exist with the right kinds; each layer has its own."""
        self.require_own_instruments((("heaters", "current_source"), ("inputs", "input_modulator"),
                                      ("detector", "photodetector")))
        for i, layer in enumerate(self.spec.layers):
            self.require_twin(f"system.layers.{i}.twin", layer.twin)

    def check_open(self, rig: Rig) -> None:
        """Modes, ports and heaters match the instruments and the twin."""
        for i, layer in enumerate(self.spec.layers):
            where = f"system.layers.{i}"
            mesh = self.make_twin(f"{where}.twin", layer.twin, layer.name).mesh
            for field, size, name in (("in_features", layer.in_features, layer.inputs),
                                      ("out_features", layer.out_features, layer.detector)):
                channels = rig.instruments[name].channels
                if size != channels:
                    raise ConfigError(self.path, f"{where}.{field}", f"{size}, but {name} has {channels} channels")
            if layer.in_features != mesh.layout.modes:
                raise ConfigError(self.path, f"{where}.in_features",
                                  f"{layer.in_features}, but the twin has {mesh.layout.modes} modes")
            heaters = rig.source(layer.heaters).channels
            if heaters != mesh.layout.heaters:
                raise ConfigError(self.path, f"{where}.heaters", f"{layer.heaters} has {heaters} channels, "
                                  f"the twin's mesh {mesh.layout.heaters} heaters")

    def layer_shapes(self) -> list[tuple[str, int, int]]:
        """(name, modes, ports) of every mesh."""
        return [(layer.name, layer.in_features, layer.out_features) for layer in self.spec.layers]

    def control_span(self) -> tuple[float, str]:
        """The lowest max_current of the heater sources (currents start at 0)."""
        sources = {layer.heaters for layer in self.spec.layers}
        return min(min(self.rig_spec.instruments[s].limits.max_current) for s in sources), "A"

    def build_layers(self, rig: Rig) -> list[MziLayerBackend]:
        """One backend per mesh."""
        return [MziLayerBackend(rig, layer, self.make_twin(f"system.layers.{i}.twin", layer.twin, layer.name))
                for i, layer in enumerate(self.spec.layers)]

