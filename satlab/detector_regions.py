"""Detector regions on a camera: which pixels make up each output of an imaging system.

A camera-read system's outputs are the light on a few regions of its frames (a D2NN's
ten class detectors); the same regions serve the real camera, the simulated one and the
twin, so all three turn frames into outputs the same way.
"""

from __future__ import annotations

import torch


def square_regions(shape: tuple[int, int], size: int, layout: tuple[int, ...],
                   spacing: int | None = None) -> torch.Tensor:
    """Boolean masks (regions, H, W) of square detectors of ``size`` pixels in centred rows
    of ``layout`` (e.g. (3, 4, 3): ten detectors), ``spacing`` pixels apart centre to centre."""
    rows, cols = shape
    spacing = spacing or 2 * size
    masks = []
    top = rows // 2 - (len(layout) - 1) * spacing // 2
    for r, count in enumerate(layout):
        cy = top + r * spacing
        left = cols // 2 - (count - 1) * spacing // 2
        for c in range(count):
            cx = left + c * spacing
            mask = torch.zeros(rows, cols, dtype=torch.bool)
            y0, x0 = cy - size // 2, cx - size // 2
            if y0 < 0 or x0 < 0 or y0 + size > rows or x0 + size > cols:
                raise ValueError(f"detector {len(masks)} at ({cy}, {cx}) leaves the {rows}x{cols} grid")
            mask[y0:y0 + size, x0:x0 + size] = True
            masks.append(mask)
    return torch.stack(masks)


def region_sums(intensity: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """The light on each detector region: (..., H, W) → (..., regions)."""
    weights = regions.to(intensity.dtype).flatten(1)
    return intensity.flatten(-2) @ weights.T


def normalised_signals(frames: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Region sums divided by their total per frame (a dark frame gives zeros, not NaN)."""
    signals = region_sums(frames, regions)
    return signals / signals.sum(-1, keepdim=True).clamp(min=torch.finfo(signals.dtype).tiny)
