"""Physics of a microring (MRR) weight bank: heater currents -> resonances -> signed weights.

This module is the one place where MRR physics lives. The simulated
instruments (``mrr_instruments``) are views onto an :class:`MrrBench`, and
the digital twin (:class:`MrrBankTwin`) is the same :class:`MrrBankModel`
evaluated without noise, so the twin and the simulated rig cannot disagree
about the physics.

Layout: a bank of ``rows x cols`` rings. Ring ``(i, j)`` sits on output
waveguide ``i`` and filters WDM channel ``j``; heater ``i*cols + j`` tunes it.
Balanced detection on output ``i`` reads ``sum_j w_ij * P_j`` with
``w = T_through - T_drop`` (``-1`` on resonance, ``+1`` far from it, shrunk by
finite extinction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import torch

from satlab.calibration.store import Calibration
from satlab.calibration.weight_map import BankMap, CalibratedBankTwin
from satlab.validation import OptionError, require_count


@dataclass(frozen=True)
class MrrBankParams:
    """Physical parameters of one ring bank and its balanced detectors."""

    fwhm_nm: float = 0.3
    tuning: Literal["power", "current"] = "power"
    # nm per W of heater power (tuning="power") or nm per A (tuning="current").
    tuning_efficiency: float = 100.0
    heater_resistance_ohm: float = 500.0
    # Fraction of a heater's own shift that reaches the ring k positions away
    # on the same waveguide (k = 1, 2, ...); positive = red-shift as well.
    crosstalk: tuple[float, ...] = ()
    drift_nm_per_K: float = 0.08
    fabrication_std_nm: float = 0.0
    through_min: float = 0.0  # through-port transmission on resonance
    drop_max: float = 1.0  # drop-port transmission on resonance
    max_current_A: float = 0.024
    input_full_scale_W: float = 1e-3  # optical power of an input value of 1
    detector_noise_W: float = 0.0  # signal-independent noise per reading (thermal, readout)
    shot_noise_bandwidth_Hz: float = 0.0  # > 0: shot noise of both photodiodes' current
    responsivity_A_per_W: float = 1.0
    adc_bits: int | None = None  # detector quantisation, None = ideal
    detector_full_scale_W: float | None = None  # ADC range (+/-); default from inputs

    @property
    def weight_range(self) -> tuple[float, float]:
        """Lowest (on resonance) and highest (far off resonance) reachable weight."""
        return self.through_min - self.drop_max, 1.0


# Presets. ``paper_system1`` reproduces the SAT paper's System 1 map
# w(I) = A - 2A/(1+((I-x0)/gamma)^2), A=1, gamma=0.15, x0~N(0, 0.08^2), drift
# as a current offset -0.08*dT, with one paper current unit = 10 mA: linear
# tuning of 0.1 nm/mA and a 0.3 nm linewidth give gamma = 1.5 mA; 80 pm/K drift
# is 0.8 mA/K; the reference code's sign convention (offset -0.08*dT) is kept.
PRESETS: dict[str, MrrBankParams] = {
    "paper_system1": MrrBankParams(
        fwhm_nm=0.3,
        tuning="current",
        tuning_efficiency=100.0,
        crosstalk=(),
        drift_nm_per_K=-0.08,
        fabrication_std_nm=0.08,
        max_current_A=0.024,
    ),
    # A physically fuller bank after Tait et al.: heater power tuning, thermal
    # crosstalk to neighbours, finite extinction, noisy 12-bit detection.
    "tait_bank": MrrBankParams(
        fwhm_nm=0.3,
        tuning="power",
        tuning_efficiency=100.0,  # 0.1 nm/mW
        heater_resistance_ohm=500.0,
        crosstalk=(0.05, 0.01),
        drift_nm_per_K=0.08,
        fabrication_std_nm=0.08,
        through_min=0.03,
        drop_max=0.92,
        max_current_A=0.012,
        detector_noise_W=1e-6,
        shot_noise_bandwidth_Hz=1e9,
        adc_bits=12,
    ),
}


def preset_params(name: str, **overrides) -> MrrBankParams:
    """Look up a named parameter preset, optionally overriding fields."""
    if name not in PRESETS:
        raise KeyError(f"unknown MRR preset {name!r}; known: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# physical range of each numeric parameter: (lowest, highest, whether lowest is allowed)
_RANGES = {
    "fwhm_nm": (0.0, math.inf, False), "tuning_efficiency": (0.0, math.inf, False),
    "heater_resistance_ohm": (0.0, math.inf, False), "fabrication_std_nm": (0.0, math.inf, True),
    "through_min": (0.0, 1.0, True), "drop_max": (0.0, 1.0, True),
    "max_current_A": (0.0, math.inf, False), "input_full_scale_W": (0.0, math.inf, False),
    "detector_noise_W": (0.0, math.inf, True), "shot_noise_bandwidth_Hz": (0.0, math.inf, True),
    "responsivity_A_per_W": (0.0, math.inf, False),
}


def _checked_override(key: str, value: object) -> object:
    """One MrrBankParams override from a rig file, in the dataclass's own types and ranges."""
    if key == "tuning":
        if value not in ("power", "current"):
            raise OptionError(key, f"expected 'power' or 'current', got {value!r}")
    elif key == "crosstalk":
        if (not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value)
                or 2 * sum(abs(v) for v in value) >= 1):
            raise OptionError(key, "expected coupling fractions of the neighbours (a negative one "
                                   "cools), of magnitudes together (both sides) below 1, "
                                   f"got {value!r}")
        return tuple(float(v) for v in value)
    elif key == "adc_bits":
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                      and 1 <= value <= 32):
            raise OptionError(key, f"expected an integer from 1 to 32 or null, got {value!r}")
    elif key == "detector_full_scale_W":
        if value is not None and not (_is_number(value) and value > 0):
            raise OptionError(key, f"expected a positive number or null, got {value!r}")
    elif not _is_number(value):
        raise OptionError(key, f"expected a finite number, got {value!r}")
    elif key in _RANGES:
        low, high, low_ok = _RANGES[key]
        if not ((value >= low if low_ok else value > low) and value <= high):
            what = ("a non-negative number" if low_ok and high == math.inf else
                    "a positive number" if high == math.inf else f"a number in [{low:g}, {high:g}]")
            raise OptionError(key, f"expected {what}, got {value!r}")
    return value


MAX_SIDE = 4096  # rings per bank side: larger is a typo, and would allocate gigabytes


def bank_model(rows: int, cols: int, preset: str = "paper_system1", seed: int = 0,
               **overrides) -> MrrBankModel:
    """The bank model that rig-file options describe; OptionError names a bad option."""
    for key, value in (("rows", rows), ("cols", cols)):
        require_count(key, value, 1, highest=MAX_SIDE)
    if preset not in PRESETS:
        raise OptionError("preset", f"expected one of {', '.join(sorted(PRESETS))}, got {preset!r}")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32):
        raise OptionError("seed", f"expected an integer from 0 to 2**32 - 1, got {seed!r}")
    known = {f.name for f in fields(MrrBankParams)}
    for key in overrides:
        if key not in known:
            raise OptionError(key, "unknown option; expected rows, cols, preset, seed or one of "
                                   + ", ".join(sorted(known)))
    params = replace(PRESETS[preset], **{k: _checked_override(k, v) for k, v in overrides.items()})
    return MrrBankModel(rows, cols, params, seed)


@dataclass
class MrrBankModel:
    """Differentiable map from heater currents and inputs to detector outputs."""

    rows: int
    cols: int
    params: MrrBankParams = field(default_factory=MrrBankParams)
    seed: int = 0

    def __post_init__(self) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        self.fabrication_nm = (
            torch.randn(self.rows, self.cols, generator=gen, dtype=torch.float64)
            * self.params.fabrication_std_nm
        )
        self._one = torch.ones((), dtype=torch.float64)
        self._offset_key: tuple | None = None

    def set_fabrication_nm(self, offsets: torch.Tensor) -> None:
        """Replace every ring's fabrication offset (nm), e.g. to model another chip."""
        self.fabrication_nm = offsets
        self._offset_key = None

    @property
    def channels(self) -> int:
        """Number of heaters (one per ring)."""
        return self.rows * self.cols

    def heater_power(self, currents: torch.Tensor) -> torch.Tensor:
        """Electrical power dissipated in each heater (W)."""
        return currents**2 * self.params.heater_resistance_ohm

    def resonance_shift_nm(self, currents: torch.Tensor) -> torch.Tensor:
        """Heater-induced resonance shift of every ring, crosstalk included (nm)."""
        p = self.params
        drive = self.heater_power(currents) if p.tuning == "power" else currents
        own = drive.reshape(*drive.shape[:-1], self.rows, self.cols) * p.tuning_efficiency
        shift = own
        for k, c in enumerate(p.crosstalk, start=1):
            if k >= self.cols:
                break
            pad = torch.zeros_like(own[..., :k])
            from_left = torch.cat([pad, own[..., :-k]], dim=-1)
            from_right = torch.cat([own[..., k:], pad], dim=-1)
            shift = shift + c * (from_left + from_right)
        return shift

    def _detuning_offset(self, drift_K: float, dtype: torch.dtype) -> torch.Tensor:
        """Fabrication + drift detuning in nm; cached because it is constant between drifts."""
        key = (drift_K, dtype)
        if self._offset_key != key:
            self._offset = (self.fabrication_nm + self.params.drift_nm_per_K * drift_K).to(dtype)
            self._offset_key = key
        return self._offset

    def _lorentzian(self, currents: torch.Tensor, drift_K: float) -> torch.Tensor:
        """Drop-port response L = 1/(1+u^2) of every ring, u = detuning in half-linewidths."""
        # Few fused ops on purpose: this runs once per rig query.
        u = torch.add(self._detuning_offset(drift_K, currents.dtype),
                      self.resonance_shift_nm(currents), alpha=1.0).mul_(2.0 / self.params.fwhm_nm)
        return torch.addcmul(self._one, u, u).reciprocal()

    def weights(self, currents: torch.Tensor, drift_K: float = 0.0) -> torch.Tensor:
        """Signed balanced-detection weights, shape (..., rows, cols)."""
        p = self.params
        # T_through - T_drop = (1 - (1 - t_min) L) - d_max L
        return torch.add(self._one, self._lorentzian(currents, drift_K),
                         alpha=-(1.0 - p.through_min + p.drop_max))

    def photodiode_power(self, inputs: torch.Tensor, currents: torch.Tensor,
                         drift_K: float = 0.0) -> torch.Tensor:
        """Power on both photodiodes of each balanced pair together (W): sets the shot noise."""
        p = self.params
        # T_through + T_drop = 1 - (1 - t_min - d_max) L
        both = torch.add(self._one, self._lorentzian(currents, drift_K),
                         alpha=-(1.0 - p.through_min - p.drop_max))
        return (inputs.to(both.dtype) @ both.transpose(-1, -2)) * p.input_full_scale_W

    def optical_output(
        self, inputs: torch.Tensor, currents: torch.Tensor, drift_K: float = 0.0
    ) -> torch.Tensor:
        """Balanced photocurrent-equivalent power (W) for input values in [0, 1]."""
        w = self.weights(currents, drift_K)
        return (inputs.to(w.dtype) @ w.transpose(-1, -2)) * self.params.input_full_scale_W

    def detect(self, power_W: torch.Tensor, generator: torch.Generator | None,
               photodiode_W: torch.Tensor | None = None) -> torch.Tensor:
        """Add detector noise (thermal/readout; shot noise from ``photodiode_W``) and ADC steps."""
        p = self.params
        out = power_W
        if p.detector_noise_W > 0 or photodiode_W is not None:
            variance = p.detector_noise_W ** 2
            if photodiode_W is not None:
                # i_n^2 = 2 q I df with I = R P; referred back to optical power: divide by R^2
                variance = variance + 2 * 1.602176634e-19 * photodiode_W.clamp(min=0) \
                    * p.shot_noise_bandwidth_Hz / p.responsivity_A_per_W
            std = torch.as_tensor(variance, dtype=out.dtype).sqrt()
            out = out + torch.randn(out.shape, generator=generator, dtype=out.dtype) * std
        if p.adc_bits:
            full = p.detector_full_scale_W or p.input_full_scale_W * self.cols
            lsb = 2 * full / 2**p.adc_bits
            out = torch.clamp(torch.round(out / lsb) * lsb, -full, full - lsb)
        return out


class MrrBankTwin(torch.nn.Module):
    """Digital twin of a weight bank: noise-free ``y = W(I) x`` in input units."""

    def __init__(self, rows: int, cols: int, preset: str = "paper_system1", seed: int = 0,
                 **overrides) -> None:
        super().__init__()
        self.model = bank_model(rows, cols, preset, seed, **overrides)

    check_options = staticmethod(bank_model)  # validates rig-file options, builds nothing real

    @classmethod
    def from_calibration(cls, cal: Calibration, layer: str, **options) -> CalibratedBankTwin:
        """The bank as calibrated (measured dips, crosstalk), not as the preset says."""
        return CalibratedBankTwin(BankMap.from_calibration(cal, layer))

    def forward(self, inputs: torch.Tensor, currents: torch.Tensor,
                drift_K: float = 0.0) -> torch.Tensor:
        """Layer output for inputs (B, cols) and currents (rows*cols,) in amps."""
        scale = self.model.params.input_full_scale_W
        return self.model.optical_output(inputs, currents, drift_K) / scale


class MrrBench:
    """Shared state of one simulated bank: what the simulated instruments act on.

    ``currents`` is one vector, or a stack (P, channels) that a simulated source
    holds for one reading: that reading evaluates every row in one vectorised
    call, draws noise row by row in the order a one-at-a-time loop would, and
    leaves the last row applied.
    """

    def __init__(self, rows: int, cols: int, preset: str = "paper_system1",
                 seed: int = 0, noise_seed: int | None = None, **overrides) -> None:
        self.model = bank_model(rows, cols, preset, seed, **overrides)
        self.seed = seed
        self.nominal_params = self.model.params
        self.nominal_fabrication_nm = self.model.fabrication_nm
        self.currents = torch.zeros(self.model.channels, dtype=torch.float64)
        self.inputs = torch.zeros(1, cols, dtype=torch.float64)
        self.drift_K = 0.0
        self.generator = torch.Generator().manual_seed(seed + 1 if noise_seed is None
                                                       else noise_seed)

    device = "MRR"

    @property
    def heater_channels(self) -> int:
        """Heaters of the bank, one per ring."""
        return self.model.channels

    @property
    def max_current_A(self) -> float:
        """The heaters' current range."""
        return self.model.params.max_current_A

    @staticmethod
    def check_options(noise_seed: int | None = None, **options) -> None:
        """Validate rig-file options without building a bench."""
        if noise_seed is not None and not (isinstance(noise_seed, int) and not isinstance(noise_seed, bool)
                                           and 0 <= noise_seed < 2**32):
            raise OptionError("noise_seed", f"expected an integer from 0 to 2**32 - 1, got {noise_seed!r}")
        bank_model(**options)

    def read(self, averages: int = 1) -> torch.Tensor:
        """Balanced detector powers (W), each the mean of ``averages`` noisy readings.

        (batch, rows) for one current vector; (P, batch, rows) for a held stack.
        """
        model, currents = self.model, self.currents
        power = model.optical_output(self.inputs, currents, self.drift_K)
        shot = (model.photodiode_power(self.inputs, currents, self.drift_K)
                if model.params.shot_noise_bandwidth_Hz > 0 else None)
        if currents.ndim == 1:
            return self._averaged(power, shot, averages)
        self.currents = currents[-1]
        if shot is None and model.params.detector_noise_W == 0:
            return self._averaged(power, None, averages)  # no random draws: all rows at once
        return torch.stack([self._averaged(power[p], None if shot is None else shot[p], averages)
                            for p in range(len(power))])

    def _averaged(self, power: torch.Tensor, shot: torch.Tensor | None, averages: int) -> torch.Tensor:
        total = self.model.detect(power, self.generator, shot)
        for _ in range(averages - 1):
            total = total + self.model.detect(power, self.generator, shot)
        return total / averages if averages > 1 else total

    def set_imperfection(self, name: str, value: float, draw: int = 0) -> None:
        """Deviate from the rig file's bank (names: the MRR system's imperfections)."""
        if name == "drift_K":
            self.drift_K = float(value)
        elif name == "fabrication_std_nm":
            gen = torch.Generator().manual_seed(self.seed * 7919 + 104729 * (draw + 1))
            extra = torch.randn(self.model.rows, self.model.cols, generator=gen, dtype=torch.float64)
            self.model.set_fabrication_nm(self.nominal_fabrication_nm + extra * value)
        elif name == "crosstalk_scale":
            self.model.params = replace(self.model.params, crosstalk=tuple(
                c * value for c in self.nominal_params.crosstalk))
        elif name == "detector_noise_W":
            self.model.params = replace(self.model.params, detector_noise_W=float(value))
        else:
            raise KeyError(f"simulated MRR bench has no imperfection {name!r}")

    def reset_imperfections(self) -> None:
        """Back to the rig file's bank: calibration temperature, nominal chip and detectors."""
        self.drift_K = 0.0
        self.model.params = self.nominal_params
        self.model.set_fabrication_nm(self.nominal_fabrication_nm)

    def state_dict(self) -> dict:
        """Noise RNG state, so a resumed simulated run draws the same noise."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""
        self.generator.set_state(state["generator"])
