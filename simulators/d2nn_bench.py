"""A simulated D2NN bench and the instruments that are views onto it: SLMs holding the
masks, an input modulator showing the digits, a camera reading the output plane.

The bench evaluates ``D2nnModel`` (the one place of the D2NN's physics) with whatever
imperfections it is set to; the twin (``D2nnTwin``) is the same model with none, read
through the same camera model, so without noise the two agree bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from satlab.simulators import optics
from satlab.simulators.alignment import AlignmentAxes
from satlab.simulators.d2nn import AXES, PRESETS, D2nnImperfections, D2nnModel
from satlab.simulators.seeded_noise import SeededNoise

from satlab.camera_readout import normalised_signals
from satlab.instruments import Camera, PhaseModulator, Roi
from satlab.phase_lut import PhaseLut
from satlab.validation import OptionError, require_count, require_seconds


class D2nnCameraModel:
    """What the bench's camera does with light: electrons per unit intensity and second,
    full well, ADC bits, read noise, and whether photon shot noise is drawn. The default
    fills the well at an intensity of 50 in 1 ms: a digit through random masks peaks at
    2-10; trained masks gather its light (about 340 in all) onto the detectors, and
    must not saturate them."""

    def __init__(self, electrons_per_unit_s: float = 4e5, full_well_e: float = 20_000.0,
                 bit_depth: int = 12, read_noise_e: float = 0.0, shot_noise: bool = False) -> None:
        self.electrons_per_unit_s, self.full_well_e = electrons_per_unit_s, full_well_e
        self.bit_depth, self.read_noise_e, self.shot_noise = bit_depth, read_noise_e, shot_noise

    @property
    def noisy(self) -> bool:
        """Whether readings are random."""
        return self.shot_noise or self.read_noise_e > 0

    def counts(self, intensity: torch.Tensor, exposure_s: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Counts per camera pixel (one camera pixel per grid pixel)."""
        return optics.camera_counts(intensity, 1, self.electrons_per_unit_s * exposure_s,
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

    check_options = staticmethod(D2nnBench.check_options)

    def forward(self, x: torch.Tensor, phases: torch.Tensor, exposure_s: float,
                regions: torch.Tensor, alignment: dict[str, float] | None = None) -> torch.Tensor:
        """Normalised signals (B, regions) of the detector ``regions`` (regions, grid, grid),
        with the bench's stages at ``alignment`` (axis: position; none: all at 0)."""
        p = self.model.params
        masks = optics.quantise_phase(phases.reshape(p.masks, p.grid, p.grid), self.lut)
        bench = D2nnImperfections.named(alignment or {})
        counts = self.camera.counts(self.model.intensity(x.reshape(-1, p.image, p.image), masks, bench),
                                    exposure_s)
        return normalised_signals(counts, regions)


class SimulatedSlm(PhaseModulator):
    """Mask ``mask`` of a simulated D2NN bench, as an SLM."""

    def __init__(self, resource: D2nnBench, mask: int = 0) -> None:
        if not (isinstance(mask, int) and 0 <= mask < resource.params.masks):
            raise OptionError("mask", f"the bench has masks 0..{resource.params.masks - 1}, got {mask!r}")
        self.bench, self.mask = resource, mask
        self.name = f"simulated SLM (mask {mask})"
        self.shape = (resource.params.grid, resource.params.grid)
        self.pixel_pitch_m = resource.params.pitch
        self.lut = PhaseLut.linear(resource.slm_bits)
        self.blank()

    def _write_gray(self, gray: np.ndarray) -> None:
        """The bench's mask becomes the phase these levels show."""
        self.bench.show(self.mask, self.lut.to_phase(gray))


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
