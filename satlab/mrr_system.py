"""The MRR weight-bank system: a rig's heaters, inputs and detectors composed into layers."""

from __future__ import annotations

import time

import numpy as np
import torch

from satlab import registry
from satlab.rig import Rig, RigError
from satlab.rigfile import LayerSpec


class MrrLayerBackend:
    """Performs ``y = W(I) x`` for one physical layer on the rig, and holds its twin."""

    def __init__(self, rig: Rig, spec: LayerSpec) -> None:
        self.rig, self.spec = rig, spec
        self.in_features, self.out_features = spec.in_features, spec.out_features
        self.n_controls = spec.in_features * spec.out_features
        source = rig.source(spec.heaters)
        self.full_scale_W = rig.modulator(spec.inputs).full_scale_W
        channels = spec.heater_channels or list(range(self.n_controls))  # checked by the Rig
        guard = rig.guards[spec.heaters]
        self.upper = torch.as_tensor(guard.max_current[channels], dtype=torch.float64)
        identity = channels == list(range(source.channels))
        self.channels = None if identity else np.asarray(channels)  # None: write all at once
        self.lower = torch.zeros_like(self.upper)
        limits = guard.limits
        self.max_sum_sq: float | None = None  # this layer's share of the source's I^2 budget
        if limits.max_total_power is not None:
            sharing = sum(layer.in_features * layer.out_features
                          for layer in rig.spec.system.layers if layer.heaters == spec.heaters)
            self.max_sum_sq = (limits.max_total_power / limits.heater_resistance_ohm
                               * self.n_controls / sharing)
        self.twin: torch.nn.Module = registry.lookup(spec.twin.driver)(**spec.twin.options)
        self.queries = 0
        self.seconds = 0.0
        self._loaded: tuple[torch.Tensor, int] | None = None

    def query(self, x: torch.Tensor, currents: np.ndarray) -> np.ndarray:
        """One rig query: apply currents (A), show inputs x (B, in), read outputs (B, out)."""
        start = time.perf_counter()
        self.rig.set_currents(self.spec.heaters, currents, self.channels)
        # The modulator holds its pattern: reload only when x changes. Holding x
        # itself (not its id) means a freed tensor's recycled id cannot fool this.
        if self._loaded is None or self._loaded[0] is not x or self._loaded[1] != x._version:
            self.rig.load_inputs(self.spec.inputs, x.detach().double().numpy())
            self._loaded = (x, x._version)
        power = self.rig.read(self.spec.detector)
        self.seconds += time.perf_counter() - start
        self.queries += 1
        return power / self.full_scale_W

    def evaluate(self, x: torch.Tensor, currents: torch.Tensor) -> torch.Tensor:
        """``query`` with torch tensors in and out."""
        return torch.from_numpy(self.query(x, currents.detach().numpy()))

    def project(self, currents: torch.Tensor, margin: float = 0.0) -> None:
        """Move currents in place into the applicable range: the box and the power budget.

        ``margin`` is room for the estimator's probes: every control stays margin
        inside its box, and a probe of +-margin on every control at once (SPSA)
        still fits the power budget.
        """
        lo, hi = self.lower + margin, self.upper - margin
        with torch.no_grad():
            currents.clamp_(lo, hi)
            if self.max_sum_sq is None:
                return
            budget = (self.max_sum_sq ** 0.5 - margin * self.n_controls ** 0.5) ** 2
            if float(lo.pow(2).sum()) > budget:
                raise RigError(f"{self.rig.path}: layer {self.spec.name}: the power limit leaves no "
                               f"room for currents of at least {margin:g} A on every ring")
            for _ in range(20):  # scale into the budget; re-clamping can add a little back
                total = float(currents.pow(2).sum())
                if total <= budget:
                    return
                currents.mul_((budget / total) ** 0.5 * (1 - 1e-9)).clamp_(lo, hi)
