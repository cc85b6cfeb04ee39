"""A physical layer as a torch module: the rig performs it, an estimator differentiates it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from satlab.estimators import GradientEstimator, alignment_slopes
from satlab.systems.protocol import LayerBackend


class _RigFunction(torch.autograd.Function):
    """Autograd node whose forward is a rig query and whose backward asks the estimator."""

    @staticmethod
    def forward(ctx, x, controls, layer):
        y = layer.backend.evaluate(x, controls)
        ctx.layer = layer
        ctx.save_for_backward(x, controls, y)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, controls, y = ctx.saved_tensors
        layer = ctx.layer
        grad_x, grad_c = layer.estimator.backward(layer.backend, x, controls, y, grad_out)
        if layer.probe_alignment:
            layer.alignment_grad = alignment_slopes(layer.backend, x, controls, grad_out,
                                                    layer.alignment_radius > 0)
        return grad_x, grad_c, None


class PhysicalLayer(nn.Module):
    """Trainable control parameters (heater currents, phases, ...) of one physical layer."""

    def __init__(self, backend: LayerBackend, estimator: GradientEstimator,
                 controls: torch.Tensor) -> None:
        super().__init__()
        self.backend, self.estimator = backend, estimator
        self.controls = nn.Parameter(controls.to(torch.float64).clone())
        self.project()  # start applicable, whatever the initial values
        # SAT's ascent radius per alignment knob (0: the knob stays put), the knobs' slopes
        # from the last pass that probed them
        self.alignment_radius = np.zeros(len(backend.knobs))
        self.alignment_grad = np.zeros(len(backend.knobs))
        self.probe_alignment = False
        # Noise N (out, in) on the weights of a layer linear in its inputs, for one pass
        # (method noise on weights); None: the weights as the controls set them.
        self.weight_noise: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training uses the estimator's forward; evaluation always runs on the rig."""
        if self.training and not self.estimator.forward_on_rig:
            y = self.backend.twin_output(x, self.controls).to(x.dtype)
        else:
            y = _RigFunction.apply(x, self.controls, self)
        if self.weight_noise is not None:
            # (W + N) x = W x + N x exactly, as the layer is linear in x; autograd adds N's
            # share of the input gradient, the controls' gradient sees the noisy upstream one
            y = y + x @ self.weight_noise.to(x.dtype).T
        return y

    def alignment_ascent(self, only: int | None = None) -> np.ndarray:
        """SAT's worst-case knob offsets to first order within the ellipsoid of the knobs'
        radii r: eps = r² g / ||r g||, each knob's radius in its own unit; or, given ``only``,
        that knob alone at ±r (the corner of the radii's L1 ball); kept in the travel."""
        r, g = self.alignment_radius, self.alignment_grad
        if only is not None:
            eps = np.zeros_like(r)
            eps[only] = r[only] * np.sign(g[only])
        else:
            norm = float(np.linalg.norm(r * g))
            eps = r * (r * g / norm) if norm > 0 and np.isfinite(norm) else np.zeros_like(r)
        low, high = np.array([k.travel for k in self.backend.knobs]).reshape(-1, 2).T
        return np.clip(eps, low, high)

    def project(self, margin: float | None = None) -> None:
        """Keep the controls applicable (and, by default, the estimator's margin inside)."""
        self.backend.project(self.controls, self.estimator.margin if margin is None else margin)

    def extra_repr(self) -> str:
        c = self.backend.controls
        return (f"{self.backend.in_features} -> {self.backend.out_features}, {self.backend.name}, "
                f"{c.size} x {c.quantity} ({c.unit}), estimator={self.estimator.name}")
