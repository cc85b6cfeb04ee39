"""Ring-bank calibration through the rig: wiring check and adaptive resonance sweeps.

Every measurement reads a whole bank at once: the input modulator holds one batch row
per WDM channel (a one-hot batch), so one rig query at one heater setting gives every
ring's weight. Rings are swept together in groups that share no waveguide within the
crosstalk reach and fit the heater power budget; thermal crosstalk is assumed to act
along each output waveguide (a bank's rows lie far apart), which the crosstalk step
measures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from satlab.calibration.ring_fit import OK, STATUS, TAIL, DipFit, fit_dip
from satlab.rig import Rig


@dataclass(frozen=True)
class Drive:
    """What tunes a ring: heater power I²R (``power``) or the current itself (``current``)."""

    tuning: str
    resistance: float  # ohm; 1 when the rig file does not give it (power then in A²)

    @property
    def unit(self) -> str:
        """The drive's unit."""
        return "A" if self.tuning == "current" else ("W" if self.resistance != 1.0 else "A^2")

    def of(self, currents: np.ndarray) -> np.ndarray:
        """Drive of currents (A)."""
        return currents if self.tuning == "current" else np.square(currents) * self.resistance

    def currents(self, drives: np.ndarray) -> np.ndarray:
        """Currents (A) of non-negative drives."""
        drives = np.clip(drives, 0, None)
        return drives if self.tuning == "current" else np.sqrt(drives / self.resistance)


class BankProbe:
    """Reads every ring's weight of one bank at heater settings, counting queries and time."""

    def __init__(self, rig: Rig, layer) -> None:
        self.rig, self.layer = rig, layer
        self.rows, self.cols = layer.out_features, layer.in_features
        self.n = self.rows * self.cols
        self.channels = np.asarray(layer.channels)
        guard = rig.guards[layer.heaters]
        self.max_current = guard.max_current[self.channels]
        self.resistance = guard.limits.heater_resistance_ohm
        self.power_budget = guard.limits.max_total_power
        self.full_scale_W = rig.modulator(layer.inputs).full_scale_W
        self.queries, self.seconds = 0, 0.0

    def weights(self, currents: np.ndarray) -> np.ndarray:
        """Weights (P, rows, cols) at each row of ring currents (P, rings), row-major rings."""
        start = time.perf_counter()
        currents = np.atleast_2d(currents)
        # ramp to the first setting first: the rest of a sweep then moves in small steps,
        # which a simulated source takes as one stack
        self.rig.set_currents(self.layer.heaters, currents[0], self.channels)
        power = self.rig.measure_many(self.layer.heaters, currents, self.layer.detector,
                                      self.channels, (self.layer.inputs, np.eye(self.cols)))
        self.seconds += time.perf_counter() - start
        self.queries += len(power)
        return np.transpose(power, (0, 2, 1)) / self.full_scale_W  # (P, cols, rows): W^T

    def ring(self, index: int) -> tuple[int, int]:
        """(row, column) of ring ``index``."""
        return divmod(index, self.cols)

    def name(self, index: int) -> str:
        """How a ring is named in problems: layer, position and heater channel."""
        i, j = self.ring(index)
        return f"{self.layer.name} ring ({i}, {j}) on {self.layer.heaters} channel {self.channels[index]}"

    def groups(self, rings: list[int], reach: int, peak_power: np.ndarray) -> list[list[int]]:
        """Rings that may be swept at once: none on the same waveguide within ``reach``
        columns of another, their peak heater power together within 90 % of the budget."""
        budget = None if self.power_budget is None else 0.9 * self.power_budget
        out: list[list[int]] = []
        for phase in range(reach + 1):
            group, total = [], 0.0
            for r in (r for r in rings if r % self.cols % (reach + 1) == phase):
                if budget is not None and group and total + peak_power[r] > budget:
                    out.append(group)
                    group, total = [], 0.0
                group.append(r)
                total += peak_power[r]
            if group:
                out.append(group)
        return out

    def peak_power(self, currents: np.ndarray) -> np.ndarray:
        """Heater power (W) of each ring at ``currents`` (0 where the rig knows no resistance)."""
        return np.square(currents) * (self.resistance or 0.0)


def base_noise(probe: BankProbe, repeats: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Every ring's weight with all heaters off, and one reading's std (rings,)."""
    w = probe.weights(np.zeros((repeats, probe.n))).reshape(repeats, -1)
    return w.mean(0), w.std(0, ddof=1)


def check_wiring(probe: BankProbe, steps: int = 12) -> dict:
    """Step each ring's heater channel alone through ``steps`` levels and see which ring answers.

    A ring's dip is a few linewidths wide in a range of tens: the levels, even in heater
    power, land near it at least once, where its own change outgrows any neighbour's.

    Returns responder (rings,), response (rings,), noise (rings,) and problems naming
    every dead channel (no ring answers) and every channel that moves another ring
    than the rig file maps to it.
    """
    w0, noise = base_noise(probe)
    n = probe.n
    levels = np.sqrt(np.linspace(0, 1, steps + 1)[1:])
    change = np.empty((n, n))  # (stepped ring, answering ring)
    for r in range(n):  # a channel at a time, rising: each read is a small move from the last
        settings = np.zeros((steps, n))
        settings[:, r] = levels * probe.max_current[r]
        change[r] = np.abs(probe.weights(settings).reshape(steps, n) - w0).max(0)
    responder = change.argmax(1)
    response = change[np.arange(n), responder]
    own = change[np.arange(n), np.arange(n)]
    threshold = np.maximum(8 * noise, 0.02)
    problems = []
    for r in range(n):
        if response[r] < threshold[r]:
            problems.append(f"{probe.name(r)}: dead: stepping it moves no ring (largest change "
                            f"{response[r]:.3g})")
        elif responder[r] != r and own[r] < 0.25 * response[r]:  # a hot neighbour may outdo it
            problems.append(f"{probe.name(r)}: miswired: it moves ring {probe.ring(int(responder[r]))}, "
                            f"not ring {probe.ring(r)} (check heater_channels)")
    return {"responder": responder, "response": response, "own_response": own, "noise": noise,
            "base": w0, "problems": problems}


@dataclass
class BankSweep:
    """A bank's sweeps and fits, in drive units."""

    drive: Drive
    fits: list[DipFit]
    x: list[np.ndarray]  # drives swept, per ring
    y: list[np.ndarray]  # weights read, per ring

    def array(self, field: str) -> np.ndarray:
        """One fit field of every ring, e.g. ``center``."""
        return np.array([getattr(f, field) for f in self.fits], float)

    def errors(self) -> np.ndarray:
        """(rings, 4) one-sigma errors of center, hwhm, depth, baseline."""
        return np.array([f.errors for f in self.fits], float)

    @property
    def status(self) -> np.ndarray:
        """Fit status of every ring (ring_fit.STATUS)."""
        return np.array([f.status for f in self.fits])


def _coarse_fractions(points: int) -> np.ndarray:
    """Fractions of full current: uniform in current and uniform in power, merged, so a
    dip a few linewidths wide is crossed whether current or power tunes the ring."""
    return np.unique(np.concatenate([np.linspace(0, 1, points // 2 + 1),
                                     np.sqrt(np.linspace(0, 1, points + 1))]))


def _sweep(probe: BankProbe, groups: list[list[int]], currents: dict[int, np.ndarray],
           out_x: dict[int, list], out_y: dict[int, list]) -> None:
    """Sweep each group's rings together through their own current lists (same length)."""
    for group in groups:
        points = len(currents[group[0]])
        settings = np.zeros((points, probe.n))
        for r in group:
            settings[:, r] = currents[r]
        w = probe.weights(settings).reshape(points, -1)
        for r in group:
            out_x.setdefault(r, []).append(currents[r])
            out_y.setdefault(r, []).append(w[:, r])


def _fit_all(drive: Drive, rings: range, x: dict, y: dict, noise: np.ndarray,
             min_contrast: float) -> list[DipFit]:
    return [fit_dip(drive.of(np.concatenate(x[r])), np.concatenate(y[r]), float(noise[r]), min_contrast)
            for r in rings]


def sweep_rings(probe: BankProbe, noise: np.ndarray, tuning: str = "auto", coarse: int = 64,
                dense: int = 16, reach: int = 2, min_contrast: float = 0.05) -> BankSweep:
    """Coarse sweep of every ring over its whole range, then a dense one around its dip."""
    rings = list(range(probe.n))
    groups = probe.groups(rings, reach, probe.peak_power(probe.max_current))
    fractions = _coarse_fractions(coarse)
    x: dict[int, list] = {}
    y: dict[int, list] = {}
    _sweep(probe, groups, {r: fractions * probe.max_current[r] for r in rings}, x, y)
    drives = [Drive(t, probe.resistance or 1.0) for t in ("power", "current")] if tuning == "auto" \
        else [Drive(tuning, probe.resistance or 1.0)]
    scored = []
    for drive in drives:  # the tuning law under which the dips are Lorentzian fits best
        fits = _fit_all(drive, range(probe.n), x, y, noise, min_contrast)
        rms = [f.rms for f in fits if f.status == OK]
        scored.append((np.median(rms) if rms else np.inf, -len(rms), drive))
    drive = min(scored, key=lambda s: (s[1], s[0]))[2]
    fits = _fit_all(drive, range(probe.n), x, y, noise, min_contrast)
    top = drive.of(probe.max_current)
    window = {r: drive.currents(np.linspace(max(f.center - 4 * f.hwhm, 0.0),
                                            min(f.center + 4 * f.hwhm, top[r]), dense))
              for r, f in enumerate(fits) if f.status == OK}
    dense_rings = sorted(window)
    peaks = probe.peak_power(np.array([window[r].max() if r in window else 0.0 for r in rings]))
    _sweep(probe, probe.groups(dense_rings, reach, peaks), window, x, y)
    fits = _fit_all(drive, range(probe.n), x, y, noise, min_contrast)
    good = [f for f in fits if f.status == OK]
    if good:  # rings seen only on their rising tail take the bank's dip shape
        shape = tuple(float(np.median([getattr(f, k) for f in good])) for k in ("hwhm", "depth", "baseline"))
        for r, f in enumerate(fits):
            if f.status == TAIL:
                fits[r] = fit_dip(drive.of(np.concatenate(x[r])), np.concatenate(y[r]),
                                  float(noise[r]), min_contrast, shape)
    return BankSweep(drive, fits, [drive.of(np.concatenate(x[r])) for r in rings],
                     [np.concatenate(y[r]) for r in rings])


def sweep_problems(probe: BankProbe, sweep: BankSweep) -> list[str]:
    """One line per ring whose sweep was not fitted as a dip in range."""
    return [f"{probe.name(r)}: {STATUS[f.status]}" for r, f in enumerate(sweep.fits) if f.status != OK]
