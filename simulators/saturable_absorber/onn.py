"""An all-optical network with saturable-absorber activations (Guo et al.,
arXiv:1912.12256): its physics, the simulated bench, the twin and the instruments that
are views onto the bench.

Light stays light from input to detectors. Input field amplitudes (the digit's pixels)
fan out through a weight modulator; a lens sums each output's fields coherently (the
field of n unit beams in phase is sqrt(n), so a layer divides by sqrt(n) to keep powers
in range); a saturable-absorber cell acts on every hidden unit's field; the last layer's
intensities fall on the detectors. The modulator shows every weight of every layer as a
level L in [0, 1] and transmits the field 2L - 1 (a modulator biased at null: signs are
phases 0 and pi), so weights span [-1, 1].

``nonlinearity: relu`` puts a ReLU where the cells are: the ANN the paper compares with,
on the same bench, so ONN and ANN differ in that alone.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from satlab.simulators.saturable_absorber.absorber import GRADIENTS, absorb
from satlab.simulators.seeded_noise import SeededNoise

from satlab.instruments import InputModulator, Photodetector
from satlab.validation import OptionError, require_number


class SaOnnModel:
    """Layer sizes, the cells' optical depth and saturation intensity, and the forward pass."""

    def __init__(self, sizes: list[int] | tuple[int, ...] = (784, 128, 128, 10), od: float = 10.0,
                 i_sat: float | list[float] = 1.0, nonlinearity: str = "sa", gradient: str = "optical",
                 input_full_scale_W: float = 1e-3) -> None:
        if not (isinstance(sizes, (list, tuple)) and len(sizes) >= 2
                and all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 4096 for s in sizes)):
            raise OptionError("sizes", f"expected a list of at least two layer sizes in 1..4096, got {sizes!r}")
        if nonlinearity not in ("sa", "relu"):
            raise OptionError("nonlinearity", f"expected sa or relu, got {nonlinearity!r}")
        if gradient not in GRADIENTS:
            raise OptionError("gradient", f"expected one of {', '.join(GRADIENTS)}, got {gradient!r}")
        self.sizes, self.nonlinearity, self.gradient = list(sizes), nonlinearity, gradient
        self.od = require_number("od", od, 0.0, 100.0)
        cells = len(self.sizes) - 2
        i_sat = [i_sat] * cells if isinstance(i_sat, (int, float)) and not isinstance(i_sat, bool) else i_sat
        if not (isinstance(i_sat, list) and len(i_sat) == cells):
            raise OptionError("i_sat", f"expected a number or one per hidden layer ({cells}), got {i_sat!r}")
        self.i_sat = [require_number(f"i_sat.{k}", v, 1e-12) for k, v in enumerate(i_sat)]
        self.full_scale_W = require_number("input_full_scale_W", input_full_scale_W, 1e-12, 1.0)
        self.shapes = list(zip(self.sizes[1:], self.sizes[:-1], strict=True))  # (out, in) per layer

    @property
    def n_weights(self) -> int:
        """Every weight of every layer: what the modulator shows."""
        return sum(o * i for o, i in self.shapes)

    def intensities(self, amplitudes: torch.Tensor, weights: torch.Tensor, od_scale: float = 1.0,
                    i_sat_scale: float = 1.0) -> torch.Tensor:
        """Detected intensities (..., B, out), in units of a full-scale input beam, for input
        field amplitudes (B, in) and weights (..., n_weights) in [-1, 1]."""
        h, start = amplitudes.to(weights.dtype), 0
        lead = weights.shape[:-1]
        for k, (rows, cols) in enumerate(self.shapes):
            w = weights[..., start:start + rows * cols].reshape(*lead, rows, cols)
            start += rows * cols
            h = h @ w.transpose(-1, -2) / math.sqrt(cols)
            if k < len(self.shapes) - 1:
                h = (absorb(h, self.od * od_scale, self.i_sat[k] * i_sat_scale, "amplitude", self.gradient)
                     if self.nonlinearity == "sa" else torch.relu(h))
        return h * h

    def power_W(self, amplitudes: torch.Tensor, weights: torch.Tensor, od_scale: float = 1.0,
                i_sat_scale: float = 1.0) -> torch.Tensor:
        """Detected powers (W); bench and twin both compute them here, so they agree bit for bit."""
        return self.intensities(amplitudes, weights, od_scale, i_sat_scale) * self.full_scale_W


class SaOnnTwin(torch.nn.Module):
    """Digital twin: the same network, trained through with the chosen cell derivative."""

    def __init__(self, **options) -> None:
        super().__init__()
        self.model = SaOnnModel(**options)

    @staticmethod
    def check_options(**options) -> None:
        """Validate rig-file options without building a twin."""
        SaOnnModel(**options)

    def forward(self, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Detected intensities (..., B, out) in input units."""
        return self.model.power_W(inputs, weights) / self.model.full_scale_W


class SaOnnBench(SeededNoise):
    """Shared state of one simulated all-optical network."""

    def __init__(self, noise_seed: int = 0, detector_noise_W: float = 0.0, **options) -> None:
        require_number("detector_noise_W", detector_noise_W, 0.0, 1.0)
        SeededNoise.check_noise_seed(noise_seed)
        self.model = SaOnnModel(**options)
        self.levels = torch.full((self.model.n_weights,), 0.5, dtype=torch.float64)
        self.inputs = torch.zeros(1, self.model.sizes[0], dtype=torch.float64)
        self.nominal_noise_W = float(detector_noise_W)
        self.seed_noise(noise_seed)
        self.reset_imperfections()

    @staticmethod
    def check_options(noise_seed: int = 0, detector_noise_W: float = 0.0, **options) -> None:
        """Validate rig-file options without building a bench."""
        require_number("detector_noise_W", detector_noise_W, 0.0, 1.0)
        SeededNoise.check_noise_seed(noise_seed)
        SaOnnModel(**options)

    def read(self) -> torch.Tensor:
        """Detected powers (W), (batch, outputs), for the weights shown (levels (..., n))."""
        m = self.model
        power = m.power_W(self.inputs, 2 * self.levels - 1, self.od_scale, self.i_sat_scale)
        if self.detector_noise_W:
            power = power + torch.randn(power.shape, generator=self.generator, dtype=power.dtype) * self.detector_noise_W
        return power

    def set_imperfection(self, name: str, value: float, draw: int = 0) -> None:
        """Deviate from the rig file's cells (names: the system's imperfections)."""
        if name == "od_scale":
            self.od_scale = float(value)
        elif name == "i_sat_scale":
            self.i_sat_scale = float(value)
        elif name == "detector_noise_W":
            self.detector_noise_W = float(value)
        else:
            raise KeyError(f"simulated SA network has no imperfection {name!r}")

    def reset_imperfections(self) -> None:
        """Back to the rig file's cells and detectors."""
        self.od_scale = self.i_sat_scale = 1.0
        self.detector_noise_W = self.nominal_noise_W


class SimulatedWeightModulator(InputModulator):
    """The modulator showing every weight as a level in [0, 1] (field 2L - 1)."""

    full_scale_W = 1.0
    holds_stacks = True  # a simulator shows a stack of pictures for one reading

    def __init__(self, resource: SaOnnBench) -> None:
        self.bench = resource
        self.channels = resource.model.n_weights

    def identify(self) -> str:
        """Name and size."""
        return f"simulated weight modulator, {self.channels} pixels"

    def load(self, values: np.ndarray) -> None:
        """Show one picture (1, pixels) of levels, or a stack (P, pixels) for one reading."""
        values = torch.from_numpy(np.asarray(values, dtype=float))
        self.bench.levels = values[0] if len(values) == 1 else values


class SimulatedFieldInputs(InputModulator):
    """Puts the input's field amplitudes on the first layer: a value v carries v^2 of full scale."""

    def __init__(self, resource: SaOnnBench) -> None:
        self.bench = resource
        self.channels = resource.model.sizes[0]
        self.full_scale_W = resource.model.full_scale_W

    def identify(self) -> str:
        """Name and size."""
        return f"simulated field input modulator, {self.channels} channels"

    def load(self, values: np.ndarray) -> None:
        """Set each pattern's field amplitudes."""
        self.bench.inputs = torch.as_tensor(np.asarray(values, dtype=float))


class SimulatedOutputDetectors(Photodetector):
    """Photodetectors on the last layer's outputs."""

    def __init__(self, resource: SaOnnBench) -> None:
        self.bench = resource
        self.channels = resource.model.sizes[-1]

    def identify(self) -> str:
        """Name and size."""
        return f"simulated output detectors, {self.channels} channels"

    def read(self) -> np.ndarray:
        """Powers (W), (batch, channels); (P, batch, channels) for a shown stack."""
        return self.bench.read().numpy()

