"""Saturable absorption: the one place of its physics and of the gradients used to train
through it (Guo et al., arXiv:1912.12256; shared/REFERENCES.md).

A cell of optical depth OD transmits intensity I as ``I exp(-OD / (1 + I/I_sat))``: dark
for weak light, transparent once the light saturates it. With amplitude encoding the
field E (intensity E^2) leaves as ``E exp(-(OD/2) / (1 + E^2/I_sat))``.

Training through the cell needs d(out)/d(in). ``exact`` is the derivative of the
transmission above; ``optical`` is what a weak probe beside the pump measures, the
transmission itself (the derivative without its saturation term); the paper's ablations
replace it by ``zero``, ``unit`` (1) or ``negative`` (-1).
"""

from __future__ import annotations

import torch

ENCODINGS = ("intensity", "amplitude")
GRADIENTS = ("exact", "optical", "zero", "unit", "negative")


def _depth_and_load(x: torch.Tensor, od: float, i_sat: float, encoding: str) -> tuple[float, torch.Tensor]:
    # (the optical depth the variable sees, its intensity in units of I_sat)
    if encoding == "intensity":
        return od, x / i_sat
    return od / 2, x * x / i_sat


def transmitted(x: torch.Tensor, od: float, i_sat: float, encoding: str = "intensity") -> torch.Tensor:
    """What leaves the cell: intensity, or field amplitude, for what enters it."""
    depth, load = _depth_and_load(x, od, i_sat, encoding)
    return x * torch.exp(-depth / (1 + load))


def derivative(x: torch.Tensor, od: float, i_sat: float, encoding: str = "intensity",
               gradient: str = "exact") -> torch.Tensor:
    """d(out)/d(in) as training uses it: exact, the optical probe's, or an ablation."""
    if gradient == "zero":
        return torch.zeros_like(x)
    if gradient == "unit":
        return torch.ones_like(x)
    if gradient == "negative":
        return -torch.ones_like(x)
    depth, load = _depth_and_load(x, od, i_sat, encoding)
    probe = torch.exp(-depth / (1 + load))
    if gradient == "optical":
        return probe
    # both encodings: T (1 + s OD / (1 + s)^2), s the intensity over I_sat
    return probe * (1 + load * od / (1 + load) ** 2)


class SaturableAbsorption(torch.autograd.Function):
    """The cell's transmission forward, the chosen derivative backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, od: float, i_sat: float, encoding: str, gradient: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.settings = (od, i_sat, encoding, gradient)
        return transmitted(x, od, i_sat, encoding)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * derivative(x, *ctx.settings), None, None, None, None


def absorb(x: torch.Tensor, od: float, i_sat: float, encoding: str = "intensity",
           gradient: str = "exact") -> torch.Tensor:
    """Saturable absorption of ``x``, differentiable with the chosen derivative."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")
    return SaturableAbsorption.apply(x, od, i_sat, encoding, gradient)
