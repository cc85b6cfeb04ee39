"""Free-space optics in one place: angular-spectrum propagation, thin lenses, phase masks
on SLM pixels, and cameras with detector regions.

Fields are complex tensors (..., H, W) sampled on a square grid of pitch ``pitch`` (m),
row 0 at the top. Everything here is differentiable in torch and runs on whatever
device and dtype the field has; the D2NN and free-space systems, their digital twins
and their simulated instruments all use these functions, so none of them can disagree
about the physics.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from satlab.phase_lut import PhaseLut

TWO_PI = 2 * math.pi


@functools.lru_cache(maxsize=64)
def transfer_function(shape: tuple[int, int], pitch: float, wavelength: float, distance: float,
                      dtype: torch.dtype = torch.complex128,
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """exp(i kz z) on the FFT's own frequency order (no fftshift needed).

    kz = sqrt((2π)²(1/λ² − fx² − fy²)); beyond the light cone kz is imaginary, so
    evanescent components decay instead of being cut off.
    """
    rows, cols = shape
    fy = torch.fft.fftfreq(rows, d=pitch, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(cols, d=pitch, dtype=torch.float64)[None, :]
    radicand = (1 / wavelength**2 - fx**2 - fy**2).to(torch.complex128)
    kz = TWO_PI * torch.sqrt(radicand)  # principal root: +i|kz| where the radicand is negative
    return torch.exp(1j * kz * distance).to(dtype=dtype, device=device)


def propagate(field: torch.Tensor, pitch: float, wavelength: float, distance: float,
              pad: int = 0) -> torch.Tensor:
    """The field ``distance`` further on (angular spectrum); ``pad`` zero pixels on each
    side keep light that leaves the grid from wrapping around into it."""
    if pad:
        field = F.pad(field, (pad, pad, pad, pad))
    shape = tuple(field.shape[-2:])
    h = transfer_function(shape, float(pitch), float(wavelength), float(distance), field.dtype,
                          field.device)
    out = torch.fft.ifft2(torch.fft.fft2(field) * h)
    return out[..., pad:pad + shape[0] - 2 * pad, pad:pad + shape[1] - 2 * pad] if pad else out


def grid_coordinates(shape: tuple[int, int], pitch: float,
                     dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x) of every pixel centre (m), the optical axis at the grid's centre."""
    rows, cols = shape
    y = (torch.arange(rows, dtype=dtype) - (rows - 1) / 2) * pitch
    x = (torch.arange(cols, dtype=dtype) - (cols - 1) / 2) * pitch
    return y[:, None].expand(rows, cols), x[None, :].expand(rows, cols)


@functools.lru_cache(maxsize=16)
def lens(shape: tuple[int, int], pitch: float, wavelength: float, focal_length: float,
         dtype: torch.dtype = torch.complex128, device: str | torch.device = "cpu") -> torch.Tensor:
    """Transmission exp(−iπ(x² + y²)/(λf)) of a thin lens of focal length ``focal_length``."""
    y, x = grid_coordinates(shape, pitch)
    return torch.exp(-1j * math.pi * (x**2 + y**2) / (wavelength * focal_length)).to(dtype=dtype,
                                                                                      device=device)


def gaussian_beam(shape: tuple[int, int], pitch: float, waist: float,
                  dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """A Gaussian beam at its waist: amplitude exp(−r²/w0²)."""
    y, x = grid_coordinates(shape, pitch)
    return torch.exp(-(x**2 + y**2) / waist**2).to(dtype)


def quantise_phase(phase: torch.Tensor, lut: PhaseLut) -> torch.Tensor:
    """The phase an SLM shows for ``phase``: the LUT's nearest level; gradients pass straight
    through (the controls stay continuous, the device shows the levels)."""
    shown = torch.from_numpy(lut.to_phase(lut.to_gray(phase.detach().cpu().numpy())))
    shown = shown.to(dtype=phase.dtype, device=phase.device)
    return shown + (phase - phase.detach())  # exactly the shown levels, the identity's gradient


def slm_pixels(phase: torch.Tensor, upsample: int, fill_factor: float = 1.0,
               fringing_px: float = 0.0) -> torch.Tensor:
    """The modulation an SLM puts on a grid ``upsample`` times finer than its pixels.

    Each device pixel covers ``upsample``² grid pixels; outside its fill factor (the
    inter-pixel gap, along both axes) the light is not modulated; fringing smooths the
    phase across pixel edges with a Gaussian of ``fringing_px`` grid pixels. Returns the
    complex transmission (..., H·upsample, W·upsample).
    """
    fine = phase  # one grid pixel per device pixel: no copy on the D2NN's hot path
    if upsample > 1:
        fine = phase.repeat_interleave(upsample, -2).repeat_interleave(upsample, -1)
    if fringing_px > 0:
        fine = _gaussian_blur(fine, fringing_px)
    transmission = torch.polar(torch.ones_like(fine), fine)
    if fill_factor < 1.0:
        gap = _gap_mask(upsample, fill_factor, fine.shape[-2:], fine.device)
        transmission = torch.where(gap, torch.ones_like(transmission), transmission)
    return transmission


def _gap_mask(upsample: int, fill_factor: float, shape: torch.Size, device) -> torch.Tensor:
    # the active width of a pixel is fill_factor of its pitch along each axis (rounded to grid pixels)
    active = max(1, round(upsample * math.sqrt(fill_factor)))
    inside = torch.zeros(upsample, dtype=torch.bool)
    inside[(upsample - active) // 2:(upsample - active) // 2 + active] = True
    rows = inside.repeat(shape[0] // upsample)
    cols = inside.repeat(shape[1] // upsample)
    return ~(rows[:, None] & cols[None, :]).to(device)


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-taps**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    lead = image.shape[:-2]
    flat = image.reshape(-1, 1, *image.shape[-2:])
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(*lead, *image.shape[-2:])


def affine_resample(image: torch.Tensor, rotation_rad: float = 0.0, shift_px: tuple[float, float] = (0.0, 0.0),
                    scale: float = 1.0, mode: str = "bilinear") -> torch.Tensor:
    """``image`` (..., H, W) rotated about its centre (positive: anticlockwise as displayed,
    row 0 at the top), scaled and shifted by (rows, cols) pixels, sampled bilinearly (or
    ``mode="nearest"``); what falls outside is zero. Differentiable in ``image``."""
    rows, cols = image.shape[-2:]
    cos, sin = math.cos(rotation_rad), -math.sin(rotation_rad)  # rows grow downwards
    # grid_sample maps output coordinates to input ones: the inverse transform, in
    # normalised units (-1..1 across each axis, align_corners=False)
    inverse = torch.tensor([[cos / scale, sin / scale * rows / cols, 0.0],
                            [-sin / scale * cols / rows, cos / scale, 0.0]], dtype=image.real.dtype)
    inverse[0, 2] = -(inverse[0, 0] * shift_px[1] * 2 / cols + inverse[0, 1] * shift_px[0] * 2 / rows)
    inverse[1, 2] = -(inverse[1, 0] * shift_px[1] * 2 / cols + inverse[1, 1] * shift_px[0] * 2 / rows)
    lead = image.shape[:-2]
    flat = image.reshape(-1, 1, rows, cols)
    grid = F.affine_grid(inverse[None].expand(flat.shape[0], 2, 3).to(image.device), list(flat.shape),
                         align_corners=False)
    if flat.is_complex():
        out = torch.complex(F.grid_sample(flat.real, grid, mode=mode, align_corners=False),
                            F.grid_sample(flat.imag, grid, mode=mode, align_corners=False))
    else:
        out = F.grid_sample(flat, grid, mode=mode, align_corners=False)
    return out.reshape(*lead, rows, cols)


def camera_counts(intensity: torch.Tensor, binning: int, electrons_per_unit: float,
                  full_well_e: float, bit_depth: int, read_noise_e: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """What a camera reads from an intensity on the grid: each camera pixel integrates
    ``binning``² grid pixels into electrons (shot noise and read noise when a
    ``generator`` is given), clipped at the full well and digitised to ``bit_depth`` bits.
    Returns counts as an integer-valued float tensor (..., H/binning, W/binning); below
    the full well its gradient is that of the unrounded level, so a twin can train
    through the same camera the bench reads."""
    lead = intensity.shape[:-2]
    flat = intensity.reshape(-1, 1, *intensity.shape[-2:])
    electrons = F.avg_pool2d(flat, binning) * (binning**2 * electrons_per_unit)
    if generator is not None:
        electrons = torch.poisson(electrons.clamp(min=0), generator=generator)
        if read_noise_e > 0:
            noise = torch.randn(electrons.shape, generator=generator, dtype=electrons.dtype)
            electrons = electrons + read_noise_e * noise
    top = 2**bit_depth - 1
    level = electrons.clamp(0, full_well_e) * (top / full_well_e)
    counts = torch.round(level.detach()) + (level - level.detach())  # rounded; slope passes through
    return counts.reshape(*lead, *counts.shape[-2:])
