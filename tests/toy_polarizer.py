"""A system defined only in the tests: an array of current-driven polarisation rotators.

Input j is light on channel j; rotator (i, j) turns its polarisation by
KAPPA * I_ij (a coil, Faraday rotation); a polarising beam splitter and a balanced
detector pair read out_i = sum_j x_j (cos^2 - sin^2) = sum_j x_j cos(2 (KAPPA I_ij + m)),
m a common misalignment of the input polariser. satlab imports none of this: the
rig file names these classes as ``toy_polarizer:Name``, so training through the
unchanged controller shows that the core is system-agnostic.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import PositiveInt

from satlab.instruments import CurrentSource, InputModulator, Photodetector
from satlab.rigfile import Strict, SystemSpec
from satlab.systems import ControlSpace, Imperfection, LayerBackend, System

KAPPA = 100.0  # rad/A: 15.7 mA turn the polarisation by 90 degrees
FULL_SCALE_W = 1e-3


def balanced_weights(currents: torch.Tensor, rows: int, cols: int, misalignment: float = 0.0):
    """cos(2 theta) of every rotator, shape (..., rows, cols)."""
    return torch.cos(2 * (KAPPA * currents + misalignment)).reshape(*currents.shape[:-1], rows, cols)


class PolarizerBench:
    """Shared state the simulated coil driver, light source and detectors act on."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.currents = torch.zeros(rows * cols, dtype=torch.float64)
        self.inputs = torch.zeros(1, cols, dtype=torch.float64)
        self.misalignment = 0.0

    def read(self) -> torch.Tensor:
        w = balanced_weights(self.currents, self.rows, self.cols, self.misalignment)
        return self.inputs @ w.T * FULL_SCALE_W

    def set_imperfection(self, name: str, value: float, draw: int = 0) -> None:
        if name != "misalignment_rad":
            raise KeyError(name)
        self.misalignment = value

    def reset_imperfections(self) -> None:
        self.misalignment = 0.0


class CoilDriver(CurrentSource):
    """One coil current per rotator; applies one setting at a time, like real hardware."""

    def __init__(self, resource: PolarizerBench) -> None:
        self.bench, self.channels, self.max_current = resource, resource.rows * resource.cols, 0.02
        self.output = False

    def identify(self) -> str:
        return "toy coil driver"

    def set_currents(self, currents: np.ndarray) -> None:
        self.bench.currents = torch.from_numpy(np.array(currents) * self.output)

    def get_currents(self) -> np.ndarray:
        return self.bench.currents.numpy().copy()

    def set_output(self, enabled: bool) -> None:
        self.output = enabled


class LightSource(InputModulator):
    def __init__(self, resource: PolarizerBench) -> None:
        self.bench, self.channels, self.full_scale_W = resource, resource.cols, FULL_SCALE_W

    def identify(self) -> str:
        return "toy light source"

    def load(self, values: np.ndarray) -> None:
        self.bench.inputs = torch.as_tensor(values, dtype=torch.float64)


class BalancedPair(Photodetector):
    def __init__(self, resource: PolarizerBench) -> None:
        self.bench, self.channels = resource, resource.rows

    def identify(self) -> str:
        return "toy balanced detectors"

    def read(self) -> np.ndarray:
        return self.bench.read().numpy()


class PolarizerTwin(torch.nn.Module):
    def __init__(self, rows: int, cols: int) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x: torch.Tensor, currents: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64) @ balanced_weights(currents, self.rows, self.cols).T


class PolarizerSpec(SystemSpec):
    model_config = Strict.model_config
    type: Literal["toy_polarizer:PolarizerArray"]
    in_features: PositiveInt
    out_features: PositiveInt
    coils: str
    light: str
    detector: str


class PolarizerLayer(LayerBackend):
    def __init__(self, rig, spec: PolarizerSpec) -> None:
        super().__init__()
        self.rig, self.spec, self.name = rig, spec, "rotators"
        self.in_features, self.out_features = spec.in_features, spec.out_features
        n = spec.in_features * spec.out_features
        quarter_turn = torch.full((n,), np.pi / 2 / KAPPA, dtype=torch.float64)
        self.controls = ControlSpace("coil current", "A", torch.zeros(n, dtype=torch.float64),
                                     quarter_turn)
        self.control_outputs = np.repeat(np.arange(spec.out_features), spec.in_features)
        self.twin = PolarizerTwin(spec.out_features, spec.in_features)

    def measure(self, x: torch.Tensor, settings: np.ndarray) -> np.ndarray:
        power = self.rig.measure_many(self.spec.coils, settings, self.spec.detector,
                                      inputs=(self.spec.light, x.detach().double().numpy()))
        return power / FULL_SCALE_W


class PolarizerArray(System):
    Spec = PolarizerSpec
    imperfections = {"misalignment_rad": Imperfection("rad", 0.0, "input polariser rotation")}

    def layer_shapes(self) -> list[tuple[str, int, int]]:
        return [("rotators", self.spec.in_features, self.spec.out_features)]

    def build_layers(self, rig) -> list[LayerBackend]:
        return [PolarizerLayer(rig, self.spec)]


def rig_file(rows: int = 10, cols: int = 8) -> dict:
    """A rig-file mapping for the toy system."""
    bench = {"driver": "toy_polarizer:PolarizerBench", "options": {"rows": rows, "cols": cols}}
    return {
        "name": "toy-polarizers",
        "resources": {"bench": bench},
        "instruments": {
            "coils": {"kind": "current_source", "driver": "toy_polarizer:CoilDriver",
                      "resource": "bench", "limits": {"max_current": 0.016}},
            "light": {"kind": "input_modulator", "driver": "toy_polarizer:LightSource",
                      "resource": "bench"},
            "pd": {"kind": "photodetector", "driver": "toy_polarizer:BalancedPair", "resource": "bench"},
        },
        "system": {"type": "toy_polarizer:PolarizerArray", "in_features": cols,
                   "out_features": rows, "coils": "coils", "light": "light", "detector": "pd"},
    }
