"""Training in weight space: a physical layer trained in silico as its weight matrix W, and
evaluated on the rig deployed through the layer's weight-to-control map.

:class:`WeightSpace` wraps a layer backend whose layer is linear in its inputs (y = W x).
Its "controls" are W flattened (out, in), bounded to the system's weight range; its twin is
x W^T, so the twin_autograd estimator trains W with any method (SAT: SAM over the weights)
and a checkpoint holds W itself. A query (evaluation always runs on the rig) deploys the
weights first: the wrapped backend's ``controls_for_weights``, projected into its limits,
then that backend's own measurement. Training, ``satlab evaluate`` and ``weights.pt`` thus
share one model and one code path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from satlab.systems.protocol import ControlSpace, LayerBackend


class WeightTwin(nn.Module):
    """y = x W^T with W given flat (out * in,), row-major."""

    def __init__(self, out_features: int, in_features: int) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Layer output (B, out) for inputs (B, in)."""
        return x.to(weights.dtype) @ weights.reshape(self.out_features, self.in_features).T


class WeightSpace(LayerBackend):
    """A layer's weights as its trained parameters, deployed onto ``inner`` when queried."""

    def __init__(self, inner: LayerBackend, weight_range: tuple[float, float]) -> None:
        super().__init__()
        self.inner = inner
        self.rig = getattr(inner, "rig", None)
        self.name, self.in_features, self.out_features = inner.name, inner.in_features, inner.out_features
        n = self.in_features * self.out_features
        lo, hi = weight_range
        self.controls = ControlSpace("weight", "1", torch.full((n,), float(lo), dtype=torch.float64),
                                     torch.full((n,), float(hi), dtype=torch.float64))
        self.control_outputs = np.repeat(np.arange(self.out_features), self.in_features)
        self.twin = WeightTwin(self.out_features, self.in_features)
        self._deployed: tuple[torch.Tensor, torch.Tensor] | None = None

    def control_grid(self) -> tuple[int, int]:
        """The weight matrix: (out_features, in_features)."""
        return self.out_features, self.in_features

    def camera_regions(self) -> tuple[str, list[list[int]]] | None:
        """The wrapped layer's camera and regions: it performs the queries."""
        return self.inner.camera_regions()

    def initial_controls(self, generator: torch.Generator, scale: float) -> torch.Tensor:
        """The wrapped layer's weights at its own initial controls (the same draws)."""
        return self.inner.weights_of(self.inner.initial_controls(generator, scale)).flatten()

    def weights_of(self, controls: torch.Tensor) -> torch.Tensor:
        """The weights (out, in) themselves."""
        return controls.detach().double().reshape(self.out_features, self.in_features).clone()

    def twin_weights(self, controls: torch.Tensor) -> torch.Tensor:
        """The weights (out, in), differentiable."""
        return controls.reshape(self.out_features, self.in_features)

    def controls_for_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Weights (out, in) as this layer's flat parameters."""
        return weights.detach().double().flatten().clone()

    def deployed(self, weights: torch.Tensor) -> torch.Tensor:
        """The wrapped layer's controls that show these flat weights, within its limits."""
        weights = weights.detach().double()
        if self._deployed is None or not torch.equal(self._deployed[0], weights):
            target = weights.reshape(self.out_features, self.in_features)
            controls = self.inner.controls_for_weights(target).to(torch.float64)
            self.inner.project(controls)
            self._deployed = (weights.clone(), controls)  # evaluation queries one W many times
        return self._deployed[1]

    def measure(self, x: torch.Tensor, settings: np.ndarray) -> np.ndarray:
        """Each row of weights deployed, then measured by the wrapped layer on the rig."""
        controls = np.stack([self.deployed(torch.from_numpy(row)).numpy() for row in settings])
        return self.inner.measure(x, controls)


def deployment_summary(model: nn.Module) -> list[dict]:
    """Per weight-space layer: the deployed controls' range and their twin weights' distance from W."""
    rows = []
    for layer in model.physical:
        backend = layer.backend
        if not isinstance(backend, WeightSpace):
            continue
        controls = backend.deployed(layer.controls)
        shown = backend.inner.weights_of(controls)
        error = (shown - backend.weights_of(layer.controls)).abs()
        space = backend.inner.controls
        rows.append({"layer": backend.name, "quantity": space.quantity, "unit": space.unit,
                     "min": float(controls.min()), "max": float(controls.max()),
                     "mean": float(controls.mean()), "count": controls.numel(),
                     "max_weight_error": float(error.max()), "mean_weight_error": float(error.mean())})
    return rows
