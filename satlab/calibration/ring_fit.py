"""One ring's swept response: classify it (dip, tail, none, two, saturated) and fit it.

A ring's balanced weight against its heater drive (current, or power I²R) is a
Lorentzian dip ``w = baseline - depth / (1 + ((d - center) / hwhm)^2)``. A sweep that
shows no dip, two dips, a clipped bottom or too little contrast is classified as such
and never fitted as if it were a dip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit

from satlab.calibration.lorentz import lorentz_dip

# status of a ring's fit; "tail": the dip's centre lies below zero drive (the ring is on
# its rising branch from the start), fitted with the bank's depth and width
OK, TAIL, NO_RESONANCE, TWO_RESONANCES, SATURATED, LOW_CONTRAST, BAD_FIT = range(7)
STATUS = {OK: "ok", TAIL: "resonance below zero drive (tail fitted with the bank's depth and width)",
          NO_RESONANCE: "no resonance in range", TWO_RESONANCES: "two resonances in range",
          SATURATED: "detector saturated at the dip", LOW_CONTRAST: "low contrast",
          BAD_FIT: "the Lorentzian does not fit"}
USABLE = (OK, TAIL)


@dataclass(frozen=True)
class DipFit:
    """A ring's fitted dip with one-sigma uncertainties, in drive units."""

    center: float
    hwhm: float
    depth: float
    baseline: float
    errors: tuple[float, float, float, float]  # of center, hwhm, depth, baseline
    rms: float  # residual of the fit, weight units
    status: int

    @property
    def params(self) -> np.ndarray:
        """(center, hwhm, depth, baseline)."""
        return np.array([self.center, self.hwhm, self.depth, self.baseline])


def failed(status: int) -> DipFit:
    """A ring that could not be fitted."""
    nan = float("nan")
    return DipFit(nan, nan, nan, nan, (nan,) * 4, nan, status)


def _below_runs(y: np.ndarray, level: float, margin: float) -> int:
    """How many separate runs of the sweep dip below ``level - margin``, a run ending only
    once the sweep climbs above ``level + margin`` (noise at the level is not a new dip)."""
    runs, inside = 0, False
    for value in y:
        if not inside and value < level - margin:
            runs, inside = runs + 1, True
        elif inside and value > level + margin:
            inside = False
    return runs


def _clipped(x: np.ndarray, y: np.ndarray, contrast: float) -> bool:
    """A bottom cut flat by the detector: several drives read exactly the lowest value, and
    the dip the other readings describe goes well below it. (A coarse ADC also repeats
    its lowest step near a round bottom, but the dip then ends within a step or two.)"""
    at_min = np.unique(x[y == y.min()])
    if len(at_min) < 3 or np.count_nonzero((x >= at_min[0]) & (x <= at_min[-1]) & (y > y.min())):
        return False
    outside = (x < at_min[0]) | (x > at_min[-1])
    try:
        popt, _ = curve_fit(lorentz_dip, x[outside], y[outside],
                            p0=[at_min.mean(), max(np.ptp(at_min), 1e-12), contrast, y.max()],
                            maxfev=5000)
    except (RuntimeError, ValueError):
        return True  # the readings outside do not describe a dip that ends at the floor
    return popt[3] - abs(popt[2]) < y.min() - 0.1 * contrast


def classify(x: np.ndarray, y: np.ndarray, noise: float, min_contrast: float) -> int | None:
    """Why a sweep cannot be fitted as one dip (a status), or None if it can.

    ``x`` ascending drives, ``y`` the weights read, ``noise`` one reading's std.
    """
    contrast = float(y.max() - y.min())
    if int(np.argmin(y)) == len(y) - 1 and contrast > 4 * noise:
        return NO_RESONANCE  # still falling at the top of the range: the dip lies above it
    if contrast < max(min_contrast, 8 * noise):
        return LOW_CONTRAST
    if _clipped(x, y, contrast):
        return SATURATED
    if _below_runs(y, y.max() - contrast / 2, max(3 * noise, 0.05 * contrast)) > 1:
        return TWO_RESONANCES
    return None


def fit_dip(x: np.ndarray, y: np.ndarray, noise: float, min_contrast: float = 0.05,
            shape: tuple[float, float, float] | None = None) -> DipFit:
    """Classify and fit one ring's sweep (drives ``x`` ascending, weights ``y``).

    ``shape`` = (hwhm, depth, baseline) of the bank: used, fixed, for a ring whose dip
    lies below zero drive (only its rising tail is seen).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    status = classify(x, y, noise, min_contrast)
    if status is not None:
        return failed(status)
    lowest = int(np.argmin(y))
    fit = _fit_full(x, y, noise, lowest)
    if fit is not None:
        return fit
    if lowest > len(x) // 10:
        return failed(BAD_FIT)
    # rising from the first point, the centre below zero drive: only the tail is seen
    return failed(TAIL) if shape is None else _fit_tail(x, y, shape)


def _fit_full(x: np.ndarray, y: np.ndarray, noise: float, lowest: int) -> DipFit | None:
    """All four parameters, if the dip's centre lies in the sweep and the fit is sound."""
    baseline = float(y.max())
    depth = baseline - float(y.min())
    below = x[y < baseline - depth / 2]
    span = float(np.ptp(x))
    hwhm = max(float(np.ptp(below)) / 2, span / len(x)) if below.size > 1 else span / len(x)
    try:
        popt, pcov = curve_fit(lorentz_dip, x, y, p0=[x[lowest], hwhm, depth, baseline],
                               maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    popt[1] = abs(popt[1])
    residual = float(np.sqrt(np.mean((lorentz_dip(x, *popt) - y) ** 2)))
    errors = tuple(float(e) for e in np.sqrt(np.clip(np.diag(pcov), 0, None)))
    if (not np.all(np.isfinite(errors)) or errors[0] > popt[1] or residual > max(4 * noise, 0.02)
            or not x[0] <= popt[0] <= x[-1]):
        return None
    return DipFit(*(float(p) for p in popt), errors, residual, OK)


def _fit_tail(x: np.ndarray, y: np.ndarray, shape: tuple[float, float, float]) -> DipFit:
    """Fit only the centre of a dip whose bottom lies below the sweep (width, depth fixed)."""
    hwhm, depth, baseline = shape
    model = lambda d, center: lorentz_dip(d, center, hwhm, depth, baseline)  # noqa: E731
    # the centre that reproduces the first reading on the rising branch
    first = np.clip(depth / max(baseline - y[0], 1e-9) - 1, 0, None)
    try:
        popt, pcov = curve_fit(model, x, y, p0=[x[0] - hwhm * np.sqrt(first)], maxfev=20000)
    except (RuntimeError, ValueError):
        return failed(BAD_FIT)
    residual = float(np.sqrt(np.mean((model(x, *popt) - y) ** 2)))
    error = float(np.sqrt(max(pcov[0, 0], 0)))
    if not np.isfinite(error) or popt[0] > x[0] + hwhm:  # a dip at the edge may sit just inside
        return failed(BAD_FIT)
    return DipFit(float(popt[0]), hwhm, depth, baseline, (error, 0.0, 0.0, 0.0), residual, TAIL)
