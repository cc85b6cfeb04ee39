"""Calibration: sweep a heater through the rig and fit the ring's Lorentzian response."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import curve_fit

if TYPE_CHECKING:
    from satlab.rig import Rig


@dataclass(frozen=True)
class LorentzFit:
    """y = baseline - depth / (1 + ((x - center) / hwhm)^2)."""

    center: float
    hwhm: float
    depth: float
    baseline: float


def lorentz_dip(x: np.ndarray, center: float, hwhm: float, depth: float, baseline: float) -> np.ndarray:
    """A Lorentzian dip (the through-minus-drop response of a ring vs detuning)."""
    return baseline - depth / (1 + ((x - center) / hwhm) ** 2)


def fit_lorentzian(x: np.ndarray, y: np.ndarray) -> LorentzFit:
    """Least-squares fit of a Lorentzian dip; x may be current, power or wavelength."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    baseline = float(np.max(y))
    depth = baseline - float(np.min(y))
    center = float(x[np.argmin(y)])
    below = x[y < baseline - depth / 2]
    hwhm = max(float(np.ptp(below)) / 2, float(np.ptp(x)) / len(x)) if below.size else float(np.ptp(x)) / 4
    popt, _ = curve_fit(lorentz_dip, x, y, p0=[center, hwhm, depth, baseline], maxfev=20000)
    return LorentzFit(float(popt[0]), abs(float(popt[1])), float(popt[2]), float(popt[3]))


def sweep_ring(rig: Rig, heaters: str, inputs: str, detector: str, ring: tuple[int, int],
               currents: np.ndarray, base: np.ndarray | None = None,
               channel: int | None = None) -> np.ndarray:
    """Weight of ring (row, col) vs its heater current, others held at ``base`` (default 0).

    Lights only the ring's WDM channel and reads its output row, so the reading
    divided by the channel power is that ring's balanced weight. ``channel`` is
    the ring's heater channel (default: row-major, as without a heater_channels map).
    """
    row, col = ring
    mod = rig.modulator(inputs)
    pattern = np.zeros((1, mod.channels))
    pattern[0, col] = 1.0
    rig.load_inputs(inputs, pattern)
    applied = np.zeros(rig.source(heaters).channels) if base is None else np.array(base, float)
    channel = row * mod.channels + col if channel is None else channel
    out = []
    for current in currents:
        applied[channel] = current
        rig.set_currents(heaters, applied)
        out.append(rig.read(detector)[0, row] / mod.full_scale_W)
    return np.asarray(out)
