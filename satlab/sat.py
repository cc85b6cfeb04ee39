"""The SAT controller: one sharpness-aware (or plain) training step over a hybrid network."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from satlab.optim import SAM
from satlab.optim.bn import frozen_bn_stats
from satlab.physical_layer import PhysicalLayer

METHODS = ("sat", "plain", "noise", "prune")


class SatController:
    """Runs training steps: SAT = SAM over control parameters with projection into limits.

    g at theta; eps = rho*g/||g|| (adaptive: scaled per control); theta+eps
    projected into the safe range; g' at theta+eps; base optimizer steps with
    g'; theta projected into limits. Layers with alignment knobs and ascent radii
    also move the knobs to their worst side (``PhysicalLayer.alignment_ascent``,
    slopes by central differences on the rig) for g', and back: all of them within each
    layer's ellipsoid of radii, or (``knobs_at_once="worst"``) only the worst single knob. ``method="plain"``
    is one pass with the same estimator and base optimizer: the baseline; ``method="noise"``
    takes that pass at controls plus the step's noise (``noise_on="weights"``: at weights
    plus noise, for layers linear in their inputs) and updates the clean controls;
    ``method="prune"`` is the plain pass plus ``prune_lambda`` times every layer's weight
    sensitivity (``LayerBackend.weight_sensitivity``), whose gradient autograd takes
    through the twin.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer, method: str = "sat", knobs_at_once: str = "all",
                 noise_on: str = "controls", prune_lambda: float = 0.0) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
        if (method == "sat") != isinstance(optimizer, SAM):
            raise TypeError("method 'sat' needs a satlab.optim.SAM optimizer, 'plain', 'noise' and "
                            "'prune' a base optimizer")
        if knobs_at_once not in ("all", "worst"):
            raise ValueError(f"knobs_at_once must be 'all' or 'worst', got {knobs_at_once!r}")
        if noise_on not in ("controls", "weights"):
            raise ValueError(f"noise_on must be 'controls' or 'weights', got {noise_on!r}")
        if method == "prune" and not prune_lambda > 0:
            raise ValueError(f"method 'prune' needs prune_lambda > 0, got {prune_lambda!r}")
        self.model, self.loss_fn, self.optimizer, self.method = model, loss_fn, optimizer, method
        self.knobs_at_once, self.noise_on, self.prune_lambda = knobs_at_once, noise_on, prune_lambda
        self.physical = [m for m in model.modules() if isinstance(m, PhysicalLayer)]
        if method == "noise" and noise_on == "weights":
            for layer in self.physical:
                if layer.backend.weights_of(layer.controls) is None:
                    raise ValueError(f"noise on weights: layer {layer.backend.name} has no weights")

    def _pass(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        loss.backward()
        return loss.detach(), logits.detach()

    def _knob_ascents(self, knobbed: list[PhysicalLayer]) -> list[np.ndarray]:
        """Each knobbed layer's offsets: every knob within its layer's ellipsoid, or only the
        one knob of all layers whose radius times slope is largest (the worst single
        misalignment, as the SAT paper's combined model perturbed one parameter per batch)."""
        if self.knobs_at_once == "all":
            return [layer.alignment_ascent() for layer in knobbed]
        rise = [np.abs(layer.alignment_radius * layer.alignment_grad) for layer in knobbed]
        worst = int(np.argmax([r.max(initial=0.0) for r in rise]))
        return [layer.alignment_ascent(only=int(np.argmax(rise[i]))) if i == worst
                else np.zeros(len(layer.backend.knobs)) for i, layer in enumerate(knobbed)]

    def step(self, x: torch.Tensor, y: torch.Tensor, knob_fraction: float = 1.0,
             noise: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One update on a batch; returns the loss and logits at the unperturbed point (for
        method noise: at the noisy one). The knobs' offsets are their ascent times
        ``knob_fraction``; ``noise`` (method noise) is added to each physical layer's controls."""
        self.model.train()
        self.optimizer.zero_grad()
        knobbed = [layer for layer in self.physical
                   if self.method == "sat" and layer.alignment_radius.any()]
        for layer in knobbed:
            layer.probe_alignment = True
        try:
            if self.method == "noise":
                loss, logits = self._noisy_pass(x, y, noise)
            elif self.method == "prune":
                loss, logits = self._pruning_pass(x, y)
            else:
                loss, logits = self._pass(x, y)
        finally:
            for layer in knobbed:
                layer.probe_alignment = False
        if self.method == "sat":
            self.optimizer.first_step(zero_grad=True)
            for layer in self.physical:
                layer.project()  # theta+eps stays applicable, perturbation margin included
            try:
                for layer, eps in zip(knobbed, self._knob_ascents(knobbed), strict=True):
                    layer.backend.align(knob_fraction * eps)  # the bench's misalignment, to the worst side
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

    def _pruning_pass(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain pass, then the gradient of prune_lambda x the layers' weight sensitivity
        added to the controls' (estimated) one; returns the whole loss."""
        loss, logits = self._pass(x, y)
        controls = [layer.controls for layer in self.physical]
        with torch.enable_grad():
            penalty = self.prune_lambda * sum(layer.backend.weight_sensitivity(layer.controls)
                                              for layer in self.physical)
            grads = torch.autograd.grad(penalty, controls)
        for c, g in zip(controls, grads, strict=True):
            c.grad = g.to(c.dtype) if c.grad is None else c.grad + g.to(c.dtype)
        return loss + penalty.detach().to(loss.dtype), logits

    def _noisy_pass(self, x: torch.Tensor, y: torch.Tensor, noise: list[torch.Tensor] | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pass at the controls (or weights) plus ``noise``, which leaves the clean controls
        in place (their gradient: the one at the noisy point)."""
        if noise is None or len(noise) != len(self.physical):
            raise ValueError("method noise needs one noise vector per physical layer")
        if self.noise_on == "weights":
            return self._noisy_weights_pass(x, y, noise)
        clean = [layer.controls.detach().clone() for layer in self.physical]
        try:
            with torch.no_grad():
                for layer, n in zip(self.physical, noise, strict=True):
                    layer.controls.add_(n.to(layer.controls.dtype))
                    layer.project()  # noise never takes a control past its limits
            return self._pass(x, y)
        finally:
            with torch.no_grad():
                for layer, c in zip(self.physical, clean, strict=True):
                    layer.controls.copy_(c)

    def _noisy_weights_pass(self, x: torch.Tensor, y: torch.Tensor, noise: list[torch.Tensor]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pass with every layer's weights W + N (N: (out, in)); none of N stays after it."""
        for layer, n in zip(self.physical, noise, strict=True):
            shape = (layer.backend.out_features, layer.backend.in_features)
            if tuple(n.shape) != shape:
                raise ValueError(f"noise on weights of layer {layer.backend.name} must have shape "
                                 f"{shape}, got {tuple(n.shape)}")
        try:
            for layer, n in zip(self.physical, noise, strict=True):
                layer.weight_noise = n
            return self._pass(x, y)
        finally:
            for layer in self.physical:
                layer.weight_noise = None
