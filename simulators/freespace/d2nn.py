"""A diffractive network (D2NN): phase masks between free-space propagations, read by a
camera's detector regions. The SAT paper's System 3 preset (shared/REFERENCES.md).

Chain (System 3, as the reference's forward pass runs it): the digit's amplitude (sqrt of
its intensity, 64x64 zero-padded to 128x128) → 5 mm → lens f → 4 mm → mask 1 → threshold
→ 2 mm → mask 2 → threshold → 4 mm → lens f → 5 mm → camera. The threshold
I' = ReLU(I − mean(I)/2) sets the amplitude to sqrt(I') and keeps the phase. Ten 9x9
detector regions in rows of 3-4-3 read the light, normalised by their total.

The physics comes from ``optics``; this module only strings it together. Like the
paper's recipe, propagation uses the unpadded 128x128 window: at 5 mm the transfer
function is undersampled (N·dx²/λ ≈ 1 mm) and light leaving the window wraps around;
twin and bench share this, and ``optics.propagate(pad=...)`` is there for a wider window. Imperfections
are arguments of the forward pass, so the same model is the twin (all zero) and the
simulated bench (whatever the bench is set to).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from satlab.simulators.freespace import optics

from satlab.camera_readout import normalised_signals, square_regions


@dataclass(frozen=True)
class D2nnParams:
    """Geometry of a diffractive network (SI units)."""

    wavelength: float = 532e-9
    grid: int = 128
    pitch: float = 2e-6
    image: int = 64  # the input digit's size on the grid, zero-padded to ``grid``
    focal_length: float = 5e-3
    # distances: source → lens, lens → mask 1, mask k → mask k+1 ..., last mask → lens, lens → camera
    to_lens: float = 5e-3
    to_first_mask: float = 4e-3
    between_masks: tuple[float, ...] = (2e-3,)
    to_output_lens: float = 4e-3
    to_camera: float = 5e-3
    detector_px: int = 9
    detector_layout: tuple[int, ...] = (3, 4, 3)
    detector_spacing_px: int = 24
    threshold: float = 0.5  # I' = ReLU(I − threshold·mean(I)); 0: no nonlinearity
    # each_mask: after every mask, the phase kept (the reference's network); last_mask: once,
    # after the last mask, re-emitted without the phase (an optoelectronic stage)
    threshold_at: str = "each_mask"

    @property
    def masks(self) -> int:
        """Number of phase masks."""
        return len(self.between_masks) + 1


PRESETS = {
    "sat_system3": D2nnParams(),
    # satlab's first System 3: one optoelectronic threshold after mask 2. Its output speckle
    # is coarser, so its camera calibration registers more precisely (docs/calibration.md)
    "sat_system3_one_threshold": D2nnParams(threshold_at="last_mask"),
    # Lin et al. (Science 2018) style: an all-optical stack of five masks (theirs 3 cm apart
    # at 0.4 THz), here 2 mm apart on the visible grid, no nonlinearity
    "lin_5layer": D2nnParams(between_masks=(2e-3, 2e-3, 2e-3, 2e-3), threshold=0.0),
}


@dataclass(frozen=True)
class D2nnImperfections:
    """How a bench differs from the twin. Rotation and shift apply to every mask."""

    mask_rotation_rad: float = 0.0
    mask_shift_px: tuple[float, float] = (0.0, 0.0)  # (rows, cols)
    axial_error: float = 0.0  # m, added to every distance between masks
    fringing_px: float = 0.0  # SLM pixel crosstalk: Gaussian smoothing of the shown phase

    @classmethod
    def named(cls, values: dict[str, float]) -> D2nnImperfections:
        """From the D2NN system's named imperfections (e.g. ``mask_rotation_deg``), in their units."""
        return cls(math.radians(values.get("mask_rotation_deg", 0.0)),
                   (0.0, values.get("mask_shift_px", 0.0)), values.get("axial_error_um", 0.0) * 1e-6,
                   values.get("slm_fringing_px", 0.0))


# The bench's alignment axes and their units (imperfections a stage or mount can move)
AXES = {"mask_rotation_deg": "deg", "mask_shift_px": "px", "axial_error_um": "um"}


class D2nnModel(torch.nn.Module):
    """Forward model: images (B, image, image) and masks (masks, grid, grid) rad → detector
    signals (B, regions), each row summing to 1."""

    def __init__(self, params: D2nnParams = D2nnParams()) -> None:
        super().__init__()
        self.params = p = params
        shape = (p.grid, p.grid)
        self.register_buffer("regions", square_regions(shape, p.detector_px, p.detector_layout,
                                                              p.detector_spacing_px), persistent=False)

    def input_field(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Amplitude sqrt(intensity), centred on the grid."""
        p = self.params
        margin = (p.grid - p.image) // 2
        amplitude = torch.sqrt(images.clamp(min=0).to(dtype))
        return F.pad(amplitude, (margin, p.grid - p.image - margin) * 2).to(_complex(dtype))

    def intensity(self, images: torch.Tensor, masks: torch.Tensor,
                  bench: D2nnImperfections = D2nnImperfections()) -> torch.Tensor:
        """Camera-plane intensity (B, grid, grid)."""
        transmissions = []
        for mask in masks:
            transmission = optics.slm_pixels(mask, 1, fringing_px=bench.fringing_px)
            if bench.mask_rotation_rad or any(bench.mask_shift_px):
                # resample the transmission, not the phase: interpolating phases across a
                # 0/2π edge would invent a π that the mask does not show
                transmission = optics.affine_resample(transmission, bench.mask_rotation_rad,
                                                      bench.mask_shift_px)
            transmissions.append(transmission)
        # A few images at a time: a whole batch's field (52 MB at 128² complex128) is
        # allocated afresh by every operation and faults its pages in, and no pass over it
        # stays in the cache; a chunk of ~2 MB does both. Images never mix, so the result
        # is the batch's own.
        per_chunk = max(1, _CHUNK_BYTES // (masks.shape[-1] * masks.shape[-2] * 2 * masks.element_size()))
        return torch.cat([self._chunk_intensity(chunk, transmissions, bench.axial_error)
                          for chunk in images.split(per_chunk)])

    def _chunk_intensity(self, images: torch.Tensor, transmissions: list[torch.Tensor],
                         axial_error: float) -> torch.Tensor:
        p = self.params
        field = self.input_field(images, transmissions[0].real.dtype)
        shape, lam = (p.grid, p.grid), p.wavelength
        lens = optics.lens(shape, p.pitch, lam, p.focal_length, field.dtype, field.device)
        field = optics.propagate(field, p.pitch, lam, p.to_lens) * lens
        field = optics.propagate(field, p.pitch, lam, p.to_first_mask)
        gaps = [*p.between_masks, None]
        for transmission, gap in zip(transmissions, gaps, strict=True):
            field = field * transmission
            if p.threshold and (gap is None or p.threshold_at == "each_mask"):
                field = threshold(field, p.threshold, keep_phase=p.threshold_at == "each_mask")
            if gap is not None:
                field = optics.propagate(field, p.pitch, lam, gap + axial_error)
        field = optics.propagate(field, p.pitch, lam, p.to_output_lens) * lens
        field = optics.propagate(field, p.pitch, lam, p.to_camera)
        return field.real**2 + field.imag**2

    def forward(self, images: torch.Tensor, masks: torch.Tensor,
                bench: D2nnImperfections = D2nnImperfections()) -> torch.Tensor:
        """Detector signals, normalised to sum to 1 per image."""
        return normalised_signals(self.intensity(images, masks, bench), self.regions)


def threshold(field: torch.Tensor, fraction: float, keep_phase: bool = True) -> torch.Tensor:
    """The intensity-threshold nonlinearity: amplitude sqrt(ReLU(I − fraction·mean(I))), the
    field's phase kept or (an optoelectronic stage re-emitting the light) dropped."""
    intensity = field.real**2 + field.imag**2
    above = torch.relu(intensity - fraction * intensity.mean((-2, -1), keepdim=True))
    if not keep_phase:
        return torch.sqrt(above).to(field.dtype)
    # |E| from abs (its gradient at 0 is 0, where sqrt(I)'s is not finite) and floored so
    # that neither the quotient nor its gradient (∝ 1/|E|², still normal in float32) overflows
    magnitude = field.abs().clamp(min=_DARK)
    return field * (torch.sqrt(above) / magnitude)


_DARK = 1e-18  # |E| below which a pixel counts as dark (the threshold makes it 0 anyway)


_CHUNK_BYTES = 2 << 20  # a chunk's field: within the L2+L3 cache, below glibc's mmap threshold


def _complex(real: torch.dtype) -> torch.dtype:
    return torch.complex64 if real == torch.float32 else torch.complex128
