"""The hybrid network: a digital front end feeding physical layers performed by the rig."""

from __future__ import annotations

import torch
from torch import nn

from satlab.config import ModelConfig, feature_map_size
from satlab.estimators import GradientEstimator
from satlab.mrr_system import MrrLayerBackend
from satlab.physical_layer import PhysicalLayer


def currents_for_weights(backend: MrrLayerBackend, target: torch.Tensor, iters: int = 40,
                         grid: int = 256) -> torch.Tensor:
    """Currents whose twin weights match ``target`` (rows, cols), ring by ring.

    Heating moves a ring through its resonance (lowest weight) and then away
    from it (weight rising towards +1); the search uses that rising branch: it
    finds each ring's resonance current on a grid, then bisects above it.
    Targets out of reach end at the edge of the range.
    """
    eye = torch.eye(backend.in_features, dtype=torch.float64)
    weights = lambda currents: backend.twin(eye, currents).T.flatten()  # twin(eye) = W^T
    with torch.no_grad():
        levels = torch.linspace(0, 1, grid, dtype=torch.float64)
        swept = torch.stack([weights(backend.lower + f * (backend.upper - backend.lower))
                             for f in levels])
        lo = backend.lower + levels[swept.argmin(0)] * (backend.upper - backend.lower)
        hi = backend.upper.clone()
        target = target.flatten().to(torch.float64)
        for _ in range(iters):
            mid = (lo + hi) / 2
            above = weights(mid) > target
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
    return (lo + hi) / 2


def _bounded(features: int) -> list[nn.Module]:
    # Optical powers are non-negative and the modulator saturates: inputs in [0, 1].
    return [nn.BatchNorm1d(features), nn.Hardtanh(0.0, 1.0)]


class HybridNet(nn.Module):
    """MNIST -> digital conv front end -> physical MRR layers -> logits."""

    def __init__(self, cfg: ModelConfig, backends: list[MrrLayerBackend],
                 estimator: GradientEstimator, generator: torch.Generator) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for i, out in enumerate(cfg.conv_channels):
            layers += [nn.Conv2d(channels, out, 5, padding=2 if i == 0 else 0),
                       nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            channels = out
        size = feature_map_size(len(cfg.conv_channels))
        layers += [nn.Flatten(), nn.Linear(channels * size * size, cfg.physical[0]),
                   *_bounded(cfg.physical[0])]
        self.front = nn.Sequential(*layers)
        self.physical = nn.ModuleList()
        self.between = nn.ModuleList()
        for i, backend in enumerate(backends):
            a = cfg.init_weight_range
            target = (torch.rand(backend.out_features, backend.in_features, generator=generator,
                                 dtype=torch.float64) * 2 - 1) * a
            self.physical.append(PhysicalLayer(backend, estimator,
                                               currents_for_weights(backend, target)))
            last = i == len(backends) - 1
            self.between.append(nn.Identity() if last else nn.Sequential(*_bounded(backend.out_features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images (B, 1, 28, 28)."""
        h = self.front(x)
        for layer, after in zip(self.physical, self.between):
            h = after(layer(h))
        return h

    def control_parameters(self) -> list[nn.Parameter]:
        """The heater currents of every physical layer."""
        return [layer.currents for layer in self.physical]

    def digital_parameters(self) -> list[nn.Parameter]:
        """Everything trained by autograd alone."""
        controls = {id(p) for p in self.control_parameters()}
        return [p for p in self.parameters() if id(p) not in controls]
