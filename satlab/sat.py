"""The SAT controller: one sharpness-aware (or plain) training step over a hybrid network."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from satlab.optim import SAM
from satlab.optim.bn import frozen_bn_stats
from satlab.physical_layer import PhysicalLayer


class SatController:
    """Runs training steps: SAT = SAM over control parameters with projection into limits.

    g at theta; eps = rho*g/||g|| (adaptive: scaled per control); theta+eps
    projected into the safe range; g' at theta+eps; base optimizer steps with
    g'; theta projected into limits. Layers with alignment knobs and ascent radii
    also move the knobs to their worst side (``PhysicalLayer.alignment_ascent``,
    slopes by central differences on the rig) for g', and back. ``method="plain"``
    is one pass with the same estimator and base optimizer: the baseline.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer, method: str = "sat") -> None:
        if method not in ("sat", "plain"):
            raise ValueError(f"method must be 'sat' or 'plain', got {method!r}")
        if (method == "sat") != isinstance(optimizer, SAM):
            raise TypeError("method 'sat' needs a satlab.optim.SAM optimizer, 'plain' a base optimizer")
        self.model, self.loss_fn, self.optimizer, self.method = model, loss_fn, optimizer, method
        self.physical = [m for m in model.modules() if isinstance(m, PhysicalLayer)]

    def _pass(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        loss.backward()
        return loss.detach(), logits.detach()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One update on a batch; returns the loss and logits at the unperturbed point."""
        self.model.train()
        self.optimizer.zero_grad()
        knobbed = [layer for layer in self.physical
                   if self.method == "sat" and layer.alignment_radius.any()]
        for layer in knobbed:
            layer.probe_alignment = True
        try:
            loss, logits = self._pass(x, y)
        finally:
            for layer in knobbed:
                layer.probe_alignment = False
        if self.method == "sat":
            self.optimizer.first_step(zero_grad=True)
            for layer in self.physical:
                layer.project()  # theta+eps stays applicable, perturbation margin included
            try:
                for layer in knobbed:  # the bench's own misalignment, to the worst side
                    layer.backend.align(layer.alignment_ascent())
                with frozen_bn_stats(self.model):  # BN statistics count each batch once
                    self._pass(x, y)
            finally:
                for layer in knobbed:
                    layer.backend.align(np.zeros(len(layer.backend.knobs)))
            self.optimizer.second_step(zero_grad=True)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad()
        for layer in self.physical:
            layer.project()
        return loss, logits
