"""A simulated D2NN bench and the instruments that are views onto it: SLMs holding the
masks, an input modulator showing the digits, a camera reading the output plane.

The bench evaluates ``D2nnModel`` (the one place of the D2NN's physics) with whatever
imperfections it is set to; the twin (``D2nnTwin``) is the same model with none, read
through the same camera model, so without noise the two agree bit for bit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from satlab.simulators.freespace import optics
from satlab.simulators.freespace.alignment import AlignmentAxes
from satlab.simulators.freespace.d2nn import AXES, PRESETS, D2nnImperfections, D2nnModel
from satlab.simulators.seeded_noise import SeededNoise

from satlab.camera_readout import normalised_signals
from satlab.instruments import Camera, PhaseModulator, Roi
from satlab.phase_lut import PhaseLut
from satlab.validation import ConfigError, OptionError, require_count, require_seconds

if TYPE_CHECKING:
    from satlab.calibration.store import Calibration


class D2nnCameraModel:
    """What the bench's camera does with light: electrons per unit intensity and second,
    full well, ADC bits, read noise, and whether photon shot noise is drawn. The default
    fills the well at an intensity of 50 in 1 ms: a digit through random masks peaks at
    2-10; trained masks gather its light (about 340 in all) onto the detectors, and
    must not saturate them.

    A real sensor is not the ideal one on the optical grid, and these are what a camera
    calibration must find: its registration to the grid (``rotation_deg``, anticlockwise as
    displayed; ``shift_px``, (rows, cols); ``scale``; about the grid's centre: the grid's
    light is resampled onto the sensor's pixels), a dark signal per pixel (``dark_counts``
    on average, a fixed pattern of ``dark_spread_counts`` about it; drawn with the light's
    shot noise) and a gain per pixel (photo-response non-uniformity: 1 ± ``gain_spread``).
    The fixed patterns are drawn from ``pattern_seed``. The defaults: the ideal camera."""

    _REGISTRATION = ("rotation_deg", "shift_px", "scale")
    _PATTERNS = ("dark_counts", "dark_spread_counts", "gain_spread", "pattern_seed")

    def __init__(self, electrons_per_unit_s: float = 4e5, full_well_e: float = 20_000.0,
                 bit_depth: int = 12, read_noise_e: float = 0.0, shot_noise: bool = False,
                 dark_counts: float = 0.0, dark_spread_counts: float = 0.0, gain_spread: float = 0.0,
                 rotation_deg: float = 0.0, shift_px: tuple[float, float] | list[float] = (0.0, 0.0),
                 scale: float = 1.0, pattern_seed: int = 0) -> None:
        self.electrons_per_unit_s, self.full_well_e = electrons_per_unit_s, full_well_e
        self.bit_depth, self.read_noise_e, self.shot_noise = bit_depth, read_noise_e, shot_noise
        top = 2**bit_depth - 1 if isinstance(bit_depth, int) else 0
        for name, value, low, high in (("dark_counts", dark_counts, 0.0, top),
                                       ("dark_spread_counts", dark_spread_counts, 0.0, top),
                                       ("gain_spread", gain_spread, 0.0, 0.5),
                                       ("rotation_deg", rotation_deg, -45.0, 45.0),
                                       ("scale", scale, 0.5, 2.0)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high):
                raise OptionError(f"camera.{name}", f"expected a number in [{low:g}, {high:g}], got {value!r}")
        if not (isinstance(shift_px, (list, tuple)) and len(shift_px) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        for v in shift_px)):
            raise OptionError("camera.shift_px", f"expected [rows, cols] in pixels, got {shift_px!r}")
        require_count("camera.pattern_seed", pattern_seed, 0, highest=2**32 - 1)
        self.dark_counts, self.dark_spread_counts, self.gain_spread = dark_counts, dark_spread_counts, gain_spread
        self.rotation_deg, self.shift_px, self.scale = rotation_deg, (float(shift_px[0]), float(shift_px[1])), scale
        self.pattern_seed = pattern_seed
        self.dark: torch.Tensor | None = None  # (H, W) counts; None: drawn from the options
        self.gain: torch.Tensor | None = None  # (H, W) relative gain; None: drawn from the options

    @property
    def noisy(self) -> bool:
        """Whether readings are random."""
        return self.shot_noise or self.read_noise_e > 0

    @property
    def registered(self) -> bool:
        """Whether the sensor sits off the optical grid."""
        return bool(self.rotation_deg or any(self.shift_px) or self.scale != 1.0)

    @property
    def ideal(self) -> bool:
        """No registration, dark signal or gain pattern: the grid's light, counted as it is."""
        return (not self.registered and self.dark is None and self.gain is None
                and not (self.dark_counts or self.dark_spread_counts or self.gain_spread))

    def measured(self, dark: torch.Tensor, gain: torch.Tensor) -> D2nnCameraModel:
        """This camera with a measured dark frame (counts) and gain (flat field) per pixel."""
        self.dark, self.gain = dark, gain
        return self

    def on_sensor(self, intensity: torch.Tensor) -> torch.Tensor:
        """The grid's intensity (..., H, W) as the sensor's pixels see it (registration)."""
        if not self.registered:
            return intensity
        return optics.affine_resample(intensity, math.radians(self.rotation_deg), self.shift_px, self.scale)

    def _patterns(self, shape: tuple[int, int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # drawn on first use for the sensor's shape: the same seed is the same sensor
        if self.dark is None or self.gain is None:
            generator = torch.Generator().manual_seed(self.pattern_seed)
            gain = 1 + self.gain_spread * torch.randn(shape, generator=generator, dtype=torch.float64)
            dark = self.dark_counts + self.dark_spread_counts * torch.randn(shape, generator=generator,
                                                                           dtype=torch.float64)
            self.gain = gain.clamp(min=0) if self.gain is None else self.gain
            self.dark = dark.clamp(0, 2**self.bit_depth - 1) if self.dark is None else self.dark
        return self.dark.to(dtype), self.gain.to(dtype)

    def counts(self, intensity: torch.Tensor, exposure_s: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Counts per camera pixel (one camera pixel per grid pixel)."""
        electrons_per_unit = self.electrons_per_unit_s * exposure_s
        if not self.ideal:
            dark, gain = self._patterns(tuple(intensity.shape[-2:]), intensity.dtype)
            # the dark signal as the light that would give it, so that it is counted (and
            # its shot noise drawn) with the light
            dark_light = dark * (self.full_well_e / (2**self.bit_depth - 1) / electrons_per_unit)
            intensity = self.on_sensor(intensity) * gain + dark_light
        return optics.camera_counts(intensity, 1, electrons_per_unit,
                                    self.full_well_e, self.bit_depth, self.read_noise_e,
                                    generator if self.noisy else None)


def _check_common(preset: str, slm_bits: int, camera: dict) -> None:
    if preset not in PRESETS:
        raise OptionError("preset", f"expected one of {sorted(PRESETS)}, got {preset!r}")
    require_count("slm_bits", slm_bits, 1, highest=16)
    try:
        D2nnCameraModel(**camera)
    except TypeError as exc:
        raise OptionError("camera", str(exc)) from None


class D2nnBench(SeededNoise, AlignmentAxes):
    """Shared state of one simulated D2NN bench: masks shown, digits loaded, imperfections,
    alignment stages."""

    axes = AXES

    @staticmethod
    def check_options(preset: str = "sat_system3", slm_bits: int = 8, camera: dict | None = None,
                      noise_seed: int = 0) -> None:
        """Validate rig-file options without building a bench."""
        _check_common(preset, slm_bits, camera or {})
        SeededNoise.check_noise_seed(noise_seed)

    def __init__(self, preset: str = "sat_system3", slm_bits: int = 8, camera: dict | None = None,
                 noise_seed: int = 0) -> None:
        self.check_options(preset, slm_bits, camera, noise_seed)
        self.model = D2nnModel(PRESETS[preset])
        self.params, self.slm_bits = self.model.params, slm_bits
        self.camera = D2nnCameraModel(**(camera or {}))
        grid = self.params.grid
        self.masks = torch.zeros(self.params.masks, grid, grid, dtype=torch.float64)
        self.images = torch.zeros(1, self.params.image, self.params.image, dtype=torch.float64)
        self.reset_imperfections()
        self.home_axes()
        self.seed_noise(noise_seed)

    def show(self, mask: int, phase: np.ndarray) -> None:
        """Mask ``mask`` now shows ``phase`` (rad, device resolution)."""
        self.masks[mask] = torch.from_numpy(np.asarray(phase, dtype=float))

    @property
    def image_side(self) -> int:
        """Side of the input digit, in pixels."""
        return self.params.image

    def load(self, images: np.ndarray) -> None:
        """Digits (B, image²) in [0, 1] on the input modulator."""
        side = self.params.image
        self.images = torch.from_numpy(np.asarray(images, dtype=float)).reshape(-1, side, side)

    def frames(self, exposure_s: float) -> torch.Tensor:
        """One camera frame per loaded digit, counts (B, grid, grid)."""
        with torch.no_grad():
            bench = self.with_stages(self.imperfections)
            images = self.images
            if bench["input_intensity_std"]:  # each input pixel's light, fluctuating frame by frame
                noise = torch.randn(images.shape, generator=self.generator, dtype=images.dtype)
                images = images * (1 + bench["input_intensity_std"] * noise).clamp(min=0)
            intensity = self.model.intensity(images, self.masks, D2nnImperfections.named(bench))
            return self.camera.counts(intensity, exposure_s, self.generator)

    def reset_imperfections(self) -> None:
        """Back to the aligned bench of the rig file."""
        self.imperfections = dict.fromkeys([*AXES, "slm_fringing_px", "input_intensity_std"], 0.0)

    def set_imperfection(self, name: str, value: float, draw: int = 0) -> None:
        """Misalign the bench (names: the D2NN system's imperfections); the twin stays aligned."""
        if name not in self.imperfections:
            raise KeyError(f"the D2NN bench has no imperfection {name!r}")
        self.imperfections[name] = float(value)


class D2nnTwin(torch.nn.Module):
    """The bench's model with no imperfections, read through the same (noise-free) camera:
    twin(x (B, image²), device phases (masks·grid²), exposure_s, regions) → detector
    signals. Give it the bench's options: the camera and slm_bits must match for the two
    to agree bit for bit."""

    def __init__(self, preset: str = "sat_system3", slm_bits: int = 8, camera: dict | None = None,
                 noise_seed: int = 0) -> None:
        super().__init__()
        _check_common(preset, slm_bits, camera or {})
        self.model = D2nnModel(PRESETS[preset])
        self.camera = D2nnCameraModel(**(camera or {}))
        self.lut = PhaseLut.linear(slm_bits)
        # (dark counts, flat field) the readout corrects frames with; None: raw counts
        self.correction: tuple[torch.Tensor, torch.Tensor] | None = None

    check_options = staticmethod(D2nnBench.check_options)

    @classmethod
    def from_calibration(cls, cal: Calibration, layer: str, **options) -> D2nnTwin:
        """The twin of the measured bench: its camera registered, dark and flat as the
        calibration's ``camera`` step measured them (the rig file's camera options keep
        only the sensor's electrons, well, bits and noise), its frames corrected as the
        calibrated readout corrects the bench's. Without a camera step: the preset twin."""
        from satlab.calibration.camera import registration_of

        twin = cls(**options)
        if not cal.has("camera"):
            return twin
        measured_layer = cal.summary("camera").get("layer", layer)
        if measured_layer != layer:
            raise ConfigError(cal.path / "calibration.yaml", "steps.camera.summary.layer",
                              f"measured layer {measured_layer!r}, not {layer!r}")
        p = twin.model.params
        shape = (p.grid, p.grid)
        rotation_deg, shift_px, scale = registration_of(cal.array("camera", "affine", (2, 3)), shape)
        dark = torch.from_numpy(cal.array("camera", "dark", shape).astype(np.float64))
        flat = torch.from_numpy(cal.array("camera", "flat", shape).astype(np.float64))
        if not bool((flat > 0).all()):
            raise ConfigError(cal.path / "camera.npz", "flat", "expected a positive gain on every pixel")
        sensor = {k: v for k, v in (options.get("camera") or {}).items()
                  if k not in D2nnCameraModel._REGISTRATION + D2nnCameraModel._PATTERNS}
        twin.camera = D2nnCameraModel(**sensor, rotation_deg=rotation_deg, shift_px=shift_px,
                                      scale=scale).measured(dark, flat)
        twin.correction = (dark, flat)
        return twin

    def light(self, x: torch.Tensor, masks: torch.Tensor, alignment: dict[str, float] | None = None,
              registration: tuple[float, tuple[float, float], float] | None = None) -> torch.Tensor:
        """The light on the camera's pixels (B, H, W) for inputs x (B, image²) and masks as
        shown (masks, grid, grid) rad: the output plane through the camera's registration, or
        through ``registration`` = (rotation_deg, shift_px, scale) if given ((0, (0, 0), 1):
        the optical grid itself); differentiable, before the camera counts it."""
        p = self.model.params
        bench = D2nnImperfections.named(alignment or {})
        camera = self.camera if registration is None else D2nnCameraModel(
            rotation_deg=float(registration[0]), shift_px=tuple(map(float, registration[1])),
            scale=float(registration[2]))
        return camera.on_sensor(self.model.intensity(x.reshape(-1, p.image, p.image), masks, bench))

    def frames(self, x: torch.Tensor, phases: torch.Tensor, exposure_s: float,
               alignment: dict[str, float] | None = None) -> torch.Tensor:
        """The counts (B, H, W) the camera reads without noise, device phases (masks·grid²)
        shown at the SLMs' levels."""
        p = self.model.params
        masks = optics.quantise_phase(phases.reshape(p.masks, p.grid, p.grid), self.lut)
        bench = D2nnImperfections.named(alignment or {})
        # the camera registers the light itself (counts): the unregistered intensity goes in
        return self.camera.counts(self.model.intensity(x.reshape(-1, p.image, p.image), masks, bench),
                                  exposure_s)

    def forward(self, x: torch.Tensor, phases: torch.Tensor, exposure_s: float,
                regions: torch.Tensor, alignment: dict[str, float] | None = None) -> torch.Tensor:
        """Normalised signals (B, regions) of the detector ``regions`` (regions, grid, grid),
        with the bench's stages at ``alignment`` (axis: position; none: all at 0)."""
        counts = self.frames(x, phases, exposure_s, alignment)
        if self.correction is not None:
            dark, flat = self.correction
            counts = (counts - dark) / flat  # as the calibrated readout corrects the bench's frames
        return normalised_signals(counts, regions)


class SimulatedSlm(PhaseModulator):
    """Mask ``mask`` of a simulated D2NN bench, as an SLM.

    As on a real device, what a gray level shows and what the driver believes it shows
    are separate: ``response`` is the liquid crystal's own curve, phase(g) =
    max_phase_rad · (g / (2^bits − 1))^gamma (a real LCoS is rarely linear, and its range
    may fall short of 2π or pass it), which only the bench knows; ``lut_file`` is the
    table the driver picks gray levels by (``PhaseLut.from_file``). Without either, the
    device is the ideal linear one and the driver knows it.
    """

    RESPONSE_KEYS = ("gamma", "max_phase_rad")

    @staticmethod
    def check_options(mask: int = 0, lut_file: str | None = None, response: dict | None = None) -> None:
        """Validate rig-file options without a bench (the mask's range and the LUT's size
        are checked against the bench when it opens)."""
        require_count("mask", mask, 0)
        if lut_file is not None:
            if not isinstance(lut_file, str):
                raise OptionError("lut_file", f"expected the path of a LUT file, got {lut_file!r}")
            try:
                PhaseLut.from_file(lut_file)
            except ValueError as exc:
                raise OptionError("lut_file", str(exc)) from None
        if response is None:
            return
        if not isinstance(response, dict) or set(response) - set(SimulatedSlm.RESPONSE_KEYS):
            raise OptionError("response", "expected a mapping with gamma and/or max_phase_rad, got "
                              f"{response!r}")
        limits = {"gamma": (0.2, 5.0), "max_phase_rad": (0.1, 4 * np.pi)}
        for key, value in response.items():
            low, high = limits[key]
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and low <= value <= high):
                raise OptionError(f"response.{key}", f"expected a number in [{low:g}, {high:.4g}], got {value!r}")

    def __init__(self, resource: D2nnBench, mask: int = 0, lut_file: str | None = None,
                 response: dict | None = None) -> None:
        self.check_options(mask, lut_file, response)
        if mask >= resource.params.masks:
            raise OptionError("mask", f"the bench has masks 0..{resource.params.masks - 1}, got {mask!r}")
        self.bench, self.mask = resource, mask
        self.name = f"simulated SLM (mask {mask})"
        self.shape = (resource.params.grid, resource.params.grid)
        self.pixel_pitch_m = resource.params.pitch
        try:
            self.lut = PhaseLut.for_device(lut_file, resource.slm_bits)
        except ValueError as exc:
            raise OptionError("lut_file", str(exc)) from None
        # the device's true phase (rad) of every gray level: hidden from satlab, which
        # knows only the LUT; the ideal table exactly when no response is given
        linear = PhaseLut.linear(resource.slm_bits).phases
        if response is None:
            self.response = linear
        else:
            top = 2**resource.slm_bits - 1
            gamma, max_phase = response.get("gamma", 1.0), response.get("max_phase_rad", linear[-1])
            self.response = float(max_phase) * (np.arange(top + 1) / top) ** float(gamma)
        self.blank()

    def _write_gray(self, gray: np.ndarray) -> None:
        """The bench's mask becomes the phase these levels show on this device."""
        self.bench.show(self.mask, self.response[np.asarray(gray, dtype=np.intp)])


class SimulatedCamera(Camera):
    """The bench's camera: one frame per loaded digit."""

    def __init__(self, resource: D2nnBench, exposure_s: float = 1e-3) -> None:
        self.bench = resource
        grid = resource.params.grid
        self.shape, self.roi = (grid, grid), Roi(0, 0, grid, grid)
        self.pixel_pitch_m, self.bit_depth = resource.params.pitch, resource.camera.bit_depth
        self.set_exposure(exposure_s)

    def identify(self) -> str:
        """Name, size and bit depth."""
        return f"simulated camera, {self.shape[1]}x{self.shape[0]}, {self.bit_depth}-bit"

    def set_exposure(self, seconds: float) -> None:
        """Set the exposure time (s)."""
        require_seconds("exposure_s", seconds, longest=10.0)
        self.exposure_s = float(seconds)

    def grab(self, frames: int) -> np.ndarray:
        """A frame per loaded digit (``frames`` must be their number), over the ROI."""
        counts = self.bench.frames(self.exposure_s)
        if frames != len(counts):
            raise ValueError(f"the input shows {len(counts)} images; grab one frame per image")
        r = self.roi
        return counts[:, r.row:r.row + r.height, r.col:r.col + r.width].numpy().astype(np.uint16)
