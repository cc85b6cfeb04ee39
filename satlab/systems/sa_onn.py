"""The all-optical network with saturable-absorber activations: one layer backend for the
whole network, because light goes from input to detectors without being measured.

The controls are every weight of every layer, in [-1, 1]; the weight modulator shows
them as levels (w + 1)/2. A query shows a weight vector, loads the inputs' field
amplitudes and reads the output detectors (intensities, in input units).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from satlab.rig import Rig, RigLimitError
from satlab.rigfile import PluginSpec, Strict, SystemSpec
from satlab.systems.protocol import ControlSpace, Imperfection, LayerBackend, System
from satlab.validation import ConfigError


class SaOnnLayerSpec(Strict):
    """The network and the instruments that perform it."""

    name: str
    in_features: PositiveInt
    out_features: PositiveInt
    weights: str
    inputs: str
    detector: str
    twin: PluginSpec


class SaOnnSystemSpec(SystemSpec):
    """The ``system`` section of a saturable-absorber network's rig file."""

    model_config = Strict.model_config
    type: Literal["sa_onn"]
    layers: list[SaOnnLayerSpec] = Field(min_length=1, max_length=1)


class SaOnnBackend(LayerBackend):
    """Shows the network's weights, loads its inputs, reads its detectors."""

    def __init__(self, rig: Rig, spec: SaOnnLayerSpec, twin: torch.nn.Module) -> None:
        super().__init__()
        self.rig, self.spec, self.name, self.twin = rig, spec, spec.name, twin
        self.in_features, self.out_features = spec.in_features, spec.out_features
        n = rig.instruments[spec.weights].channels
        self.controls = ControlSpace("weight", "1", torch.full((n,), -1.0, dtype=torch.float64),
                                     torch.ones(n, dtype=torch.float64))
        self.full_scale_W = rig.modulator(spec.inputs).full_scale_W

    def measure(self, x: torch.Tensor, settings: np.ndarray) -> np.ndarray:
        """Each weight vector shown, then one reading of every input (a stack at once on a
        modulator that can hold one)."""
        if not np.isfinite(settings).all():  # refused whole, before anything is shown
            raise RigLimitError(f"{self.name}: weights must be finite")
        self.rig.load_inputs(self.spec.inputs, x.detach().double().numpy())
        levels = (settings + 1) / 2  # beyond [-1, 1]: a level the rig's check refuses
        if getattr(self.rig.instruments[self.spec.weights], "holds_stacks", False) and len(levels) > 1:
            self.rig.load_inputs(self.spec.weights, levels)
            power = self.rig.read(self.spec.detector)
        else:
            power = np.stack([self._read_one(row) for row in levels])
        return np.asarray(power, dtype=float).reshape(len(settings), len(x), -1) / self.full_scale_W

    def _read_one(self, levels: np.ndarray) -> np.ndarray:
        self.rig.load_inputs(self.spec.weights, levels[None])
        return self.rig.read(self.spec.detector)


class SaOnnSystem(System):
    """An all-optical network: weight modulator, field inputs, output detectors."""

    Spec = SaOnnSystemSpec
    imperfections = {
        "od_scale": Imperfection("x", 1.0, "optical depth of every cell relative to the rig file's "
                                           "(the vapour's temperature drifts)", low=0.0),
        "i_sat_scale": Imperfection("x", 1.0, "saturation intensity relative to the rig file's", low=0.1),
        "detector_noise_W": Imperfection("W", 0.0, "detector noise (std per reading); the "
                                                   "default is the rig file's", low=0.0),
    }

    def check(self) -> None:
        """Instruments exist with the right kinds and are distinct."""
        self.require_own_instruments((("weights", "input_modulator"), ("inputs", "input_modulator"),
                                      ("detector", "photodetector")))
        self.require_twin("system.layers.0.twin", self.spec.layers[0].twin)

    def check_open(self, rig: Rig) -> None:
        """Inputs, outputs and weights match the instruments and the twin's network."""
        layer = self.spec.layers[0]
        model = self.make_twin("system.layers.0.twin", layer.twin, layer.name).model
        dev = rig.instruments
        for field, name, got, want in (("in_features", layer.inputs, dev[layer.inputs].channels, layer.in_features),
                                       ("out_features", layer.detector, dev[layer.detector].channels,
                                        layer.out_features),
                                       ("weights", layer.weights, dev[layer.weights].channels, model.n_weights),
                                       ("in_features", "the twin", model.sizes[0], layer.in_features),
                                       ("out_features", "the twin", model.sizes[-1], layer.out_features)):
            if got != want:
                raise ConfigError(self.path, f"system.layers.0.{field}", f"{name} has {got}; this layer needs {want}")

    def layer_shapes(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of the network."""
        layer = self.spec.layers[0]
        return [(layer.name, layer.in_features, layer.out_features)]

    def control_span(self) -> tuple[float, str]:
        """Weights span [-1, 1]."""
        return 2.0, "1"

    def build_layers(self, rig: Rig) -> list[SaOnnBackend]:
        """The network's one backend."""
        layer = self.spec.layers[0]
        return [SaOnnBackend(rig, layer, self.make_twin("system.layers.0.twin", layer.twin, layer.name))]
