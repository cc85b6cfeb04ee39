"""The MRR weight-bank system: a rig's heaters, inputs and detectors composed into layers."""

from __future__ import annotations

import time

import numpy as np
import torch

from satlab import registry
from satlab.rig import Rig
from satlab.rigfile import LayerSpec


class MrrLayerBackend:
    """Performs ``y = W(I) x`` for one physical layer on the rig, and holds its twin."""

    def __init__(self, rig: Rig, spec: LayerSpec) -> None:
        self.rig, self.spec = rig, spec
        self.in_features, self.out_features = spec.in_features, spec.out_features
        self.n_controls = spec.in_features * spec.out_features
        source = rig.source(spec.heaters)
        self.full_scale_W = rig.modulator(spec.inputs).full_scale_W
        channels = spec.heater_channels or list(range(self.n_controls))
        if max(channels) >= source.channels:
            raise ValueError(f"{rig.path}: system layer {spec.name}: heater channel "
                             f"{max(channels)} does not exist on {spec.heaters} "
                             f"({source.channels} channels)")
        guard = rig.guards[spec.heaters]
        self.upper = torch.as_tensor(guard.max_current[channels], dtype=torch.float64)
        identity = channels == list(range(source.channels))
        self.channels = None if identity else np.asarray(channels)  # None: write all at once
        self.lower = torch.zeros_like(self.upper)
        limits = guard.limits
        self.max_sum_sq = (limits.max_total_power / limits.heater_resistance_ohm
                           if limits.max_total_power is not None else None)
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
        """Move currents in place into the applicable range (box and total power)."""
        with torch.no_grad():
            currents.clamp_(self.lower + margin, self.upper - margin)
            if self.max_sum_sq is not None:
                total = float(currents.pow(2).sum())
                if total > self.max_sum_sq:
                    currents.mul_((self.max_sum_sq / total) ** 0.5 * (1 - 1e-9))
