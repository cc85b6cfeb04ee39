"""Simulated instruments of an MRR weight bank: thin views onto one shared MrrBench
(its heater source is ``heater_source.SimulatedHeaterSource``).

Writing currents to the simulated source changes what the simulated detectors
read, because both act on the same bench (as ophyd's simulated devices share
one simulated world).
"""

from __future__ import annotations

import numpy as np
import torch
from satlab.simulators.mrr.bank import MrrBench

from satlab.instruments import InputModulator, Photodetector
from satlab.validation import require_count


class SimulatedWdmInputs(InputModulator):
    """WDM input modulator of a simulated bank: one wavelength channel per column."""

    def __init__(self, resource: MrrBench) -> None:
        self.bench = resource
        self.channels = resource.model.cols
        self.full_scale_W = resource.model.params.input_full_scale_W

    def identify(self) -> str:
        """Name the simulated device and its size."""
        return f"simulated WDM input modulator, {self.channels} channels"

    def load(self, values: np.ndarray) -> None:
        """Set the channel powers of each input pattern."""
        self.bench.inputs = torch.as_tensor(np.asarray(values, dtype=float))


class SimulatedBalancedDetectors(Photodetector):
    """Balanced photodetectors on the bank's output waveguides."""

    def __init__(self, resource: MrrBench, averages: int = 1) -> None:
        self.bench = resource
        self.channels = resource.model.rows
        self.averages = averages

    @staticmethod
    def check_options(averages: int = 1) -> None:
        """Validate rig-file options without building detectors."""
        require_count("averages", averages, 1, highest=10_000)

    def identify(self) -> str:
        """Name the simulated device and its size."""
        return f"simulated balanced detectors, {self.channels} channels"

    def read(self) -> np.ndarray:
        """Averaged balanced readings (W), (batch, channels); (P, batch, channels) for a held stack."""
        return self.bench.read(self.averages).numpy()
