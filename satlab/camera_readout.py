"""Camera readouts: which pixels make up each output of an imaging system, and how
their light becomes outputs.

A camera-read system's outputs are the light on a few regions of its frames (a D2NN's
ten class detectors) or on single pixels against a reference (an incoherent layer's
tiles); the same functions serve the real camera, the simulated one and the twin, so
all three turn frames into outputs the same way.
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


def referenced_signals(frames: torch.Tensor) -> torch.Tensor:
    """(S_i − S_ref) / S_ref for pixel sums (..., n + 1) whose last one is the reference.

    A layer showing weights w as transmissions (w + 1)/2 and a reference at 1/2 gives
    sum_j w_ij x_j / sum_j x_j: signed, and free of the light's absolute scale.
    """
    reference = frames[..., -1:]
    return (frames[..., :-1] - reference) / reference.clamp(min=torch.finfo(frames.dtype).tiny)


def shown_as_transmissions(weights: torch.Tensor) -> torch.Tensor:
    """What a weight display shows for weights (out, n) in [-1, 1]: every row as
    transmissions (w + 1)/2, then a reference row at 1/2 (read by ``referenced_signals``)."""
    return torch.cat([(weights + 1) / 2, torch.full_like(weights[:1], 0.5)])
