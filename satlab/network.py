"""The hybrid network: a digital front end feeding physical layers performed by the rig."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from satlab.config import ModelConfig, feature_map_size
from satlab.estimators import GradientEstimator
from satlab.physical_layer import PhysicalLayer
from satlab.systems.protocol import LayerBackend


def _bounded(features: int, activation: str = "hardtanh", between: str = "batchnorm") -> list[nn.Module]:
    # Optical powers are non-negative and the modulator saturates: inputs in [0, 1].
    squash = nn.Sigmoid() if activation == "sigmoid" else nn.Hardtanh(0.0, 1.0)
    return [nn.BatchNorm1d(features) if between == "batchnorm" else Bias(features), squash]


class Bias(nn.Module):
    """A trained offset per feature, added electronically."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + bias."""
        return x + self.bias


class ImageFront(nn.Module):
    """The digit itself as an optical input: resized to side x side, in [0, 1], flattened."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> (B, side²)."""
        resized = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        return resized.clamp(0, 1).flatten(1)


def lenet_front(cfg: ModelConfig) -> nn.Sequential:
    """Convolutions and a linear layer into the first physical layer's inputs, in [0, 1]."""
    layers: list[nn.Module] = []
    channels = 1
    for i, out in enumerate(cfg.conv_channels):
        layers += [nn.Conv2d(channels, out, 5, padding=2 if i == 0 else 0),
                   nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
        channels = out
    size = feature_map_size(len(cfg.conv_channels))
    layers += [nn.Flatten(), nn.Linear(channels * size * size, cfg.physical[0]),
               *_bounded(cfg.physical[0])]
    return nn.Sequential(*layers)


class HybridNet(nn.Module):
    """MNIST -> digital front end -> physical layers -> logits."""

    def __init__(self, cfg: ModelConfig, backends: list[LayerBackend],
                 estimator: GradientEstimator, generator: torch.Generator) -> None:
        super().__init__()
        self.cfg = cfg
        self.front = (ImageFront(math.isqrt(cfg.physical[0])) if cfg.front == "image"
                      else lenet_front(cfg))
        self.readout_scale = cfg.readout_scale
        self.physical = nn.ModuleList()
        self.between = nn.ModuleList()
        for i, backend in enumerate(backends):
            start = backend.initial_controls(generator, cfg.init_weight_range)
            self.physical.append(PhysicalLayer(backend, estimator, start))
            last = i == len(backends) - 1
            if last:
                self.between.append(Bias(backend.out_features) if cfg.between == "bias" else nn.Identity())
            else:
                self.between.append(nn.Sequential(*_bounded(backend.out_features, cfg.activation, cfg.between)))

    def forward(self, x: torch.Tensor, twin: bool = False) -> torch.Tensor:
        """Logits for a batch of images (B, 1, 28, 28); ``twin``: every physical layer computed
        by its digital twin instead of the rig.

        The twin path exists for second derivatives (satlab.sharpness): the rig path is a
        custom autograd Function whose backward asks an estimator for one gradient and
        records no graph, so it cannot be differentiated twice; the twin can.
        """
        h = self.front(x)
        for layer, after in zip(self.physical, self.between):
            out = layer.backend.twin_output(h, layer.controls).to(h.dtype) if twin else layer(h)
            h = after(out)
        return h * self.readout_scale if self.readout_scale != 1.0 else h

    def control_parameters(self) -> list[nn.Parameter]:
        """The controls of every physical layer."""
        return [layer.controls for layer in self.physical]

    def digital_parameters(self) -> list[nn.Parameter]:
        """Everything trained by autograd alone."""
        controls = {id(p) for p in self.control_parameters()}
        return [p for p in self.parameters() if id(p) not in controls]
