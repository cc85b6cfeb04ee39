"""The incoherent free-space system (the SAT paper's System 4): fully connected layers
whose weights are shown as tiles on a weight display, multiplied by the input image
fanned out onto every tile, and summed onto one camera pixel per tile.

Weights w in [-1, 1] are the controls; the display shows (w + 1)/2 and a reference tile
at 1/2, and the camera's pixels against the reference give sum_j w_ij x_j / sum_j x_j
(``satlab.camera_readout``); a twin without a reference tile (preset paper_system4)
has the display show levels (w + 1)/2 and reads signed sums off the camera's black level,
the twin's ``show`` and ``readout`` deciding which. Misalignment of the display
(rotation, shift, scale of the picture) is what the bench's imperfections model.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, field_validator

from satlab import registry
from satlab.rig import Rig, RigError, RigLimitError
from satlab.rigfile import PluginSpec, Strict, SystemSpec
from satlab.systems.protocol import (
    AlignmentKnobSpec,
    ControlSpace,
    Imperfection,
    LayerBackend,
    System,
)
from satlab.validation import ConfigError


class FreeSpaceLayerSpec(Strict):
    """One layer: its weight display, input display, camera and twin."""

    name: str
    in_features: PositiveInt = Field(description="pixels of the input image (a square number)")
    out_features: PositiveInt
    weights: str
    inputs: str
    camera: str
    alignment: list[AlignmentKnobSpec] = Field([], description="stages and mounts SAT may move")
    twin: PluginSpec

    @field_validator("in_features")
    @classmethod
    def _square_input(cls, v: int) -> int:
        if math.isqrt(v) ** 2 != v:
            raise ValueError(f"expected side x side pixels (a square number), got {v}")
        return v


class FreeSpaceSystemSpec(SystemSpec):
    """The ``system`` section of an incoherent free-space rig file."""

    model_config = Strict.model_config
    type: Literal["incoherent_freespace"]
    layers: list[FreeSpaceLayerSpec] = Field(min_length=1)


class FreeSpaceLayerBackend(LayerBackend):
    """Shows a layer's weights, loads its inputs, reads its tiles against the reference."""

    def __init__(self, rig: Rig, spec: FreeSpaceLayerSpec, twin: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.rig, self.spec, self.name = rig, spec, spec.name
        self.in_features, self.out_features = spec.in_features, spec.out_features
        n = spec.in_features * spec.out_features
        self.controls = ControlSpace("displayed weight", "1", torch.full((n,), -1.0, dtype=torch.float64),
                                     torch.ones(n, dtype=torch.float64))
        self.control_outputs = np.repeat(np.arange(spec.out_features), spec.in_features)
        self.twin = twin or registry.lookup(spec.twin.driver)(**spec.twin.options)
        self._full_scale = 2**rig.instruments[spec.camera].bit_depth - 1
        self.attach_knobs(rig, spec.alignment)

    def control_grid(self) -> tuple[int, int]:
        """The weight matrix shown: (out_features, in_features)."""
        return self.out_features, self.in_features

    def camera_regions(self) -> tuple[str, list[list[int]]]:
        """Every pixel of the frames' first row is one tile's sum (a reference tile's last)."""
        cols = self.rig.instruments[self.spec.camera].roi.width
        return self.spec.camera, [[0, j, 1, j + 1] for j in range(cols)]

    def measure(self, x: torch.Tensor, settings: np.ndarray) -> np.ndarray:
        """Each row of weights shown, then one camera frame per input image."""
        if not np.isfinite(settings).all():  # refuse the stack whole, before any row is shown
            raise RigLimitError(f"{self.name}: weights must be finite")
        self.rig.load_inputs(self.spec.inputs, x.detach().double().clamp(0, 1).numpy())
        out = np.empty((len(settings), len(x), self.out_features))
        for p, row in enumerate(settings):
            # not clipped: a weight beyond ±1 is a transmission the rig's display check refuses
            weights = torch.from_numpy(row).reshape(self.out_features, self.in_features)
            self.rig.load_inputs(self.spec.weights, self.twin.show(weights).reshape(1, -1).numpy())
            shot = self.rig.acquire(self.spec.camera, len(x))
            if (shot.counts >= self._full_scale).any():
                raise RigError(f"{self.spec.camera} saturated: lower the light on the tiles")
            out[p] = self.twin.readout(torch.from_numpy(shot.signal[:, 0])).numpy()
        return out


class IncoherentFreeSpace(System):
    """Fully connected layers of displayed weight tiles read by a camera."""

    Spec = FreeSpaceSystemSpec
    imperfections = {
        "rotation_deg": Imperfection("deg", 0.0, "rotation of the displayed weight tiles"),
        "shift_px": Imperfection("px", 0.0, "shift of the displayed weight tiles along the rows"),
        "scale": Imperfection("x", 1.0, "magnification of the displayed weight tiles", low=0.1),
    }
    alignment_axes = ("rotation_deg", "shift_px", "scale")  # a knob's scale: a change from 1

    def check(self) -> None:
        """Instruments exist with the right kinds; each layer has its own; twins are modules."""
        self.require_own_instruments((("weights", "input_modulator"), ("inputs", "input_modulator"),
                                      ("camera", "camera")))
        for i, layer in enumerate(self.spec.layers):
            where = f"system.layers.{i}"
            self.require_knobs(f"{where}.alignment", layer.alignment)
            self.require_twin(f"{where}.twin", layer.twin)
        knobs = self.knob_names()
        if len(set(knobs)) != len(knobs):
            raise ConfigError(self.path, "system.layers", "a positioner moves one layer's display, not two")

    def check_open(self, rig: Rig) -> None:
        """Display and camera sizes match each layer (and its twin's reference tile, if any)."""
        for i, layer in enumerate(self.spec.layers):
            self.check_knobs_open(rig, f"system.layers.{i}.alignment", layer.alignment)
            twin = registry.lookup(layer.twin.driver)(**layer.twin.options)
            tiles = layer.out_features + int(getattr(getattr(twin, "model", None), "reference", True))
            dev = rig.instruments
            needs = [("in_features", layer.inputs, dev[layer.inputs].channels, layer.in_features, "channels"),
                     ("out_features", layer.weights, dev[layer.weights].channels,
                      tiles * layer.in_features, "channels"),
                     ("out_features", layer.camera, dev[layer.camera].shape[1], tiles, "pixels")]
            for field, name, got, want, unit in needs:
                if got != want:
                    raise ConfigError(self.path, f"system.layers.{i}.{field}",
                                      f"{name} has {got} {unit}; this layer needs {want}")

    def layer_shapes(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of every layer."""
        return [(layer.name, layer.in_features, layer.out_features) for layer in self.spec.layers]

    def knob_names(self) -> list[str]:
        """Every layer's alignment positioners."""
        return [k.positioner for layer in self.spec.layers for k in layer.alignment]

    def control_span(self) -> tuple[float, str]:
        """Weights span [-1, 1]."""
        return 2.0, "1"

    def build_layers(self, rig: Rig) -> list[FreeSpaceLayerBackend]:
        """One backend per layer."""
        return [FreeSpaceLayerBackend(rig, layer, self.make_twin(f"system.layers.{i}.twin", layer.twin,
                                                                 layer.name))
                for i, layer in enumerate(self.spec.layers)]
