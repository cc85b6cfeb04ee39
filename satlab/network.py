"""The hybrid network: a digital front end feeding physical layers performed by the rig."""

from __future__ import annotations

import torch
from torch import nn

from satlab.config import ModelConfig, feature_map_size
from satlab.estimators import GradientEstimator
from satlab.physical_layer import PhysicalLayer
from satlab.systems.protocol import LayerBackend


def _bounded(features: int) -> list[nn.Module]:
    # Optical powers are non-negative and the modulator saturates: inputs in [0, 1].
    return [nn.BatchNorm1d(features), nn.Hardtanh(0.0, 1.0)]


class HybridNet(nn.Module):
    """MNIST -> digital conv front end -> physical layers -> logits."""

    def __init__(self, cfg: ModelConfig, backends: list[LayerBackend],
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
            start = backend.initial_controls(generator, cfg.init_weight_range)
            self.physical.append(PhysicalLayer(backend, estimator, start))
            last = i == len(backends) - 1
            self.between.append(nn.Identity() if last else nn.Sequential(*_bounded(backend.out_features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images (B, 1, 28, 28)."""
        h = self.front(x)
        for layer, after in zip(self.physical, self.between):
            h = after(layer(h))
        return h

    def control_parameters(self) -> list[nn.Parameter]:
        """The controls of every physical layer."""
        return [layer.controls for layer in self.physical]

    def digital_parameters(self) -> list[nn.Parameter]:
        """Everything trained by autograd alone."""
        controls = {id(p) for p in self.control_parameters()}
        return [p for p in self.parameters() if id(p) not in controls]
