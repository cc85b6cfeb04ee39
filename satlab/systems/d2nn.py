"""The diffractive (D2NN) system: SLMs show phase masks, an input modulator shows the
digit, a camera reads the output plane, and detector regions on its frames are the
outputs.

One layer holds every mask. Its controls are macro-pixels (blocks of ``macro_pixel``²
SLM pixels driven as one phase), so an estimator has a few thousand controls instead of
16,384 per mask; the rig shows them at device resolution.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from satlab import registry
from satlab.calibration.camera import corrected_frames
from satlab.calibration.store import load_calibration
from satlab.camera_readout import normalised_signals, square_regions
from satlab.instruments import Roi
from satlab.rig import Rig, RigError, RigLimitError
from satlab.rigfile import PluginSpec, RigSpec, Strict, SystemSpec
from satlab.systems.protocol import (
    AlignmentKnobSpec,
    ControlSpace,
    Imperfection,
    LayerBackend,
    MacroPixels,
    System,
)
from satlab.validation import ConfigError, FinitePositive


class DetectorSpec(Strict):
    """Square detector regions on the camera, in rows (e.g. 3-4-3 for ten classes)."""

    size_px: PositiveInt = 9
    layout: list[PositiveInt] = [3, 4, 3]
    spacing_px: PositiveInt = 24


class D2nnLayerSpec(Strict):
    """The diffractive layer: its SLMs (in the light's order), input, camera and twin."""

    name: str = "d2nn"
    slms: list[str] = Field(min_length=1)
    inputs: str
    camera: str
    image: PositiveInt = Field(64, description="the digit's side on the input modulator (pixels)")
    macro_pixel: PositiveInt = Field(4, description="SLM pixels per control along each axis")
    detectors: DetectorSpec = DetectorSpec()
    exposure_s: FinitePositive = 1e-3
    alignment: list[AlignmentKnobSpec] = Field([], description="stages and mounts SAT may move")
    twin: PluginSpec


class D2nnSystemSpec(SystemSpec):
    """The ``system`` section of a D2NN rig file."""

    model_config = Strict.model_config
    type: Literal["d2nn"]
    layer: D2nnLayerSpec


def calibrated_readout(rig_spec: RigSpec, layer: D2nnLayerSpec, shape: tuple[int, int]
                       ) -> tuple[torch.Tensor, np.ndarray, np.ndarray] | None:
    """The layer's detector regions (regions, H, W), dark frame and flat field as the rig
    file's calibration measured them on its camera; None without a camera calibration."""
    if rig_spec.calibration is None:
        return None
    cal = load_calibration(rig_spec.calibration)
    if not cal.has("camera"):
        return None
    file = cal.path / cal.meta.steps["camera"].arrays
    measured = cal.summary("camera").get("layer", layer.name)
    if measured != layer.name:
        raise ConfigError(cal.path / "calibration.yaml", "steps.camera.summary.layer",
                          f"measured layer {measured!r}, not {layer.name!r}")
    regions = cal.array("camera", "regions", (sum(layer.detectors.layout), *shape))
    if regions.dtype != bool:
        raise ConfigError(file, "regions", f"expected booleans, got {regions.dtype}")
    empty = [k for k, region in enumerate(regions) if not region.any()]
    if empty:
        raise ConfigError(file, "regions", f"regions {empty} hold no pixel")
    dark = cal.array("camera", "dark", shape).astype(np.float64)
    flat = cal.array("camera", "flat", shape).astype(np.float64)
    if not (flat > 0).all():
        raise ConfigError(file, "flat", "expected a positive gain on every pixel")
    return torch.from_numpy(regions), dark, flat


class D2nnLayerTwin(torch.nn.Module):
    """The layer's twin on controls: macro-pixels → device phases → the bench's twin, read
    on the layer's own detector regions."""

    def __init__(self, twin: torch.nn.Module, pixels: MacroPixels, exposure_s: float,
                 regions: torch.Tensor) -> None:
        super().__init__()
        self.twin, self.pixels, self.exposure_s = twin, pixels, exposure_s
        self.register_buffer("regions", regions, persistent=False)

    def forward(self, x: torch.Tensor, controls: torch.Tensor,
                alignment: dict[str, float] | None = None) -> torch.Tensor:
        """Normalised detector signals (B, regions) for inputs (B, image²), the bench's
        stages at ``alignment``."""
        masks = controls.shape[-1] // self.pixels.size
        phases = self.pixels(controls.reshape(masks, self.pixels.size))
        return self.twin(x.double(), phases.flatten(), self.exposure_s, self.regions, alignment)


class D2nnLayerBackend(LayerBackend):
    """Shows the masks, loads the digits, reads the detector regions."""

    def __init__(self, rig: Rig, spec: D2nnLayerSpec, twin: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.rig, self.spec, self.name = rig, spec, spec.name
        slm = rig.instruments[spec.slms[0]]
        rows, cols = slm.shape
        self.pixels = MacroPixels(rows, cols, spec.macro_pixel)
        sensor = tuple(rig.instruments[spec.camera].shape)
        # a camera calibration's regions, dark and flat are what the readout integrates and corrects
        calibrated = calibrated_readout(rig.spec, spec, sensor)
        self._correction: tuple[np.ndarray, np.ndarray] | None = None
        if calibrated is None:
            self.regions = square_regions(sensor, spec.detectors.size_px, tuple(spec.detectors.layout),
                                          spec.detectors.spacing_px)
        else:
            self.regions, dark, flat = calibrated
            self._correction = (dark, flat)
        self.in_features, self.out_features = spec.image**2, len(self.regions)
        n = self.pixels.size * len(spec.slms)
        self.controls = ControlSpace("SLM phase", "rad", torch.zeros(n, dtype=torch.float64),
                                     torch.full((n,), 2 * math.pi, dtype=torch.float64))
        twin = twin or registry.lookup(spec.twin.driver)(**spec.twin.options)
        self.twin = D2nnLayerTwin(twin, self.pixels, spec.exposure_s, self.regions)
        camera = rig.instruments[spec.camera]
        camera.set_roi(Roi(0, 0, *camera.shape))  # the regions are in full-sensor pixels
        camera.set_exposure(spec.exposure_s)
        self._detector_pixels = self.regions.any(0).numpy()
        self._full_scale = 2**camera.bit_depth - 1
        self.attach_knobs(rig, spec.alignment)

    def measure(self, x: torch.Tensor, settings: np.ndarray) -> np.ndarray:
        """Each row of controls shown on the SLMs, then one camera frame per digit."""
        if not np.isfinite(settings).all():  # refuse the stack whole, before any row is shown
            raise RigLimitError(f"{self.name}: SLM phases must be finite")
        self.rig.load_inputs(self.spec.inputs, x.detach().double().clamp(0, 1).numpy())
        out = np.empty((len(settings), len(x), self.out_features))
        for p, row in enumerate(settings):
            phases = self.pixels(torch.from_numpy(row).reshape(len(self.spec.slms), -1))
            for slm, phase in zip(self.spec.slms, phases, strict=True):
                self.rig.show_phase(slm, phase.reshape(self.pixels.height, self.pixels.width).numpy())
            shot = self.rig.acquire(self.spec.camera, len(x))
            clipped = (shot.counts[:, self._detector_pixels] >= self._full_scale).any(-1)
            if clipped.any():  # light outside the detectors may clip: it is not an output
                raise RigError(f"{self.spec.camera} saturated on the detectors in {int(clipped.sum())} "
                               f"of {len(x)} frames: lower the layer's exposure_s ({self.spec.exposure_s:g} s)")
            if self._correction is None:
                frames = shot.signal
            else:
                frames = corrected_frames(shot.counts.astype(np.float64), *self._correction)
            out[p] = normalised_signals(torch.from_numpy(frames), self.regions).numpy()
        return out

    def control_grid(self) -> tuple[int, int]:
        """The masks' macro-pixel grids, one below the other."""
        rows, cols = self.pixels.height // self.pixels.block, self.pixels.width // self.pixels.block
        return rows * len(self.spec.slms), cols

    def camera_regions(self) -> tuple[str, list[list[int]]]:
        """The camera and the bounding box of each detector region (a calibration's regions
        need not be square)."""
        boxes = []
        for mask in self.regions.numpy():
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            boxes.append([int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1])
        return self.spec.camera, boxes

    def project(self, controls: torch.Tensor, margin: float = 0.0) -> None:
        """Wrap phases into [0, 2π): a phase has no edge to clamp at."""
        with torch.no_grad():
            controls.remainder_(2 * math.pi)


class D2nnSystem(System):
    """A diffractive network read by a camera."""

    Spec = D2nnSystemSpec
    imperfections = {
        "mask_rotation_deg": Imperfection("deg", 0.0, "rotation of every mask about the optical axis"),
        "mask_shift_px": Imperfection("px", 0.0, "lateral shift of every mask (grid pixels)"),
        "axial_error_um": Imperfection("um", 0.0, "error of every distance between masks"),
        "slm_fringing_px": Imperfection("px", 0.0, "SLM pixel crosstalk: the shown phase smoothed "
                                                   "by a Gaussian of this width", low=0.0),
        "input_intensity_std": Imperfection("1", 0.0, "relative fluctuation of each input pixel's "
                                                      "light, frame by frame", low=0.0),
    }
    alignment_axes = ("mask_rotation_deg", "mask_shift_px", "axial_error_um")

    def check(self) -> None:
        """Instruments exist with the right kinds; the twin is a torch module."""
        layer = self.spec.layer
        roles = [(f"slms.{i}", name, "phase_modulator") for i, name in enumerate(layer.slms)]
        roles += [("inputs", layer.inputs, "input_modulator"), ("camera", layer.camera, "camera")]
        for field, name, kind in roles:
            self.require_instrument(f"system.layer.{field}", name, kind)
        self.require_knobs("system.layer.alignment", layer.alignment)
        self.require_twin("system.layer.twin", layer.twin)

    def check_open(self, rig: Rig) -> None:
        """SLMs of one shape that tiles into macro-pixels; input size; detectors on the sensor."""
        layer = self.spec.layer
        self.check_knobs_open(rig, "system.layer.alignment", layer.alignment)
        shapes = {tuple(rig.instruments[name].shape) for name in layer.slms}
        if len(shapes) != 1:
            raise ConfigError(self.path, "system.layer.slms", f"the SLMs differ in shape: {sorted(shapes)}")
        rows, cols = shapes.pop()
        if rows % layer.macro_pixel or cols % layer.macro_pixel:
            raise ConfigError(self.path, "system.layer.macro_pixel",
                              f"{layer.macro_pixel} does not tile the {rows}x{cols} SLMs")
        channels = rig.instruments[layer.inputs].channels
        if channels != layer.image**2:
            raise ConfigError(self.path, "system.layer.image",
                              f"{layer.image}x{layer.image} pixels, but {layer.inputs} shows {channels}")
        try:
            square_regions(rig.instruments[layer.camera].shape, layer.detectors.size_px,
                           tuple(layer.detectors.layout), layer.detectors.spacing_px)
        except ValueError as exc:
            raise ConfigError(self.path, "system.layer.detectors", str(exc)) from None
        calibrated_readout(self.rig_spec, layer, tuple(rig.instruments[layer.camera].shape))
        # the twin must model this bench: as many masks, of the SLMs' and camera's size
        twin = getattr(registry.lookup(layer.twin.driver)(**layer.twin.options), "model", None)
        params = getattr(twin, "params", None)
        if params is not None:
            expected = (len(layer.slms), (rows, cols), tuple(rig.instruments[layer.camera].shape), layer.image)
            modelled = (params.masks, (params.grid, params.grid), (params.grid, params.grid), params.image)
            if expected != modelled:
                raise ConfigError(self.path, "system.layer.twin", (
                    f"models {modelled[0]} masks of {params.grid}x{params.grid}, a {params.image}-pixel "
                    f"digit; the rig has {expected[0]} SLMs of {rows}x{cols}, a camera of "
                    f"{expected[2][0]}x{expected[2][1]}, image {layer.image}"))

    def layer_shapes(self) -> list[tuple[str, int, int]]:
        """(name, image², detectors)."""
        layer = self.spec.layer
        return [(layer.name, layer.image**2, sum(layer.detectors.layout))]

    def knob_names(self) -> list[str]:
        """The layer's alignment positioners."""
        return [k.positioner for k in self.spec.layer.alignment]

    def control_span(self) -> tuple[float, str]:
        """Phases span a full turn."""
        return 2 * math.pi, "rad"

    def build_layers(self, rig: Rig) -> list[D2nnLayerBackend]:
        """The one diffractive layer."""
        layer = self.spec.layer
        return [D2nnLayerBackend(rig, layer, self.make_twin("system.layer.twin", layer.twin, layer.name))]
