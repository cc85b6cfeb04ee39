"""Thermal crosstalk between rings on one waveguide, from the resonance shifts of neighbours.

Heating an aggressor ring by drive ``a`` moves a neighbour's resonance, seen in the
neighbour's own drive, from ``c0`` to ``c1``; the coupling is ``C = (c0 - c1) / a``
(the fraction of the aggressor's drive the neighbour feels). Aggressors are heated
``2 * reach + 1`` columns apart, so each neighbour within ``reach`` feels exactly one.
"""

from __future__ import annotations

import numpy as np

from satlab.calibration.ring_fit import USABLE, fit_dip
from satlab.calibration.rings import BankProbe, BankSweep


def measure_crosstalk(probe: BankProbe, sweep: BankSweep, noise: np.ndarray, reach: int = 2,
                      points: int = 24, aggressor_fraction: float = 0.5,
                      max_coupling: float = 0.25) -> dict:
    """Coupling matrix (rings, rings) with one-sigma errors; a mask of what was measured.

    ``aggressor_fraction``: the aggressors' drive as a fraction of their full drive;
    ``max_coupling``: the largest coupling a victim's sweep window allows for.
    """
    n, cols, drive = probe.n, probe.cols, sweep.drive
    centers, hwhm = sweep.array("center"), sweep.array("hwhm")
    top = drive.of(probe.max_current)
    coupling = np.zeros((n, n))
    error = np.zeros((n, n))
    measured = np.zeros((n, n), bool)
    problems: list[str] = []
    period = 2 * reach + 1
    for phase in range(period):
        for offset in [d for d in range(-reach, reach + 1) if d]:
            pairs = [(r, r - offset) for r in range(n)
                     if (r % cols - offset) % period == phase and 0 <= r % cols - offset < cols]
            pairs = [(v, a) for v, a in pairs if sweep.fits[v].status in USABLE]
            if not pairs:
                continue
            heat = {a: drive.currents(aggressor_fraction * top[a]) for _, a in pairs}
            windows = {}
            for v, a in pairs:
                shift = max_coupling * aggressor_fraction * top[a]
                low = max(centers[v] - shift - 4 * hwhm[v], 0.0)
                windows[v] = np.linspace(low, min(max(centers[v], 0.0) + 4 * hwhm[v], top[v]), points)
            peak = {**{a: probe.peak_power(heat[a]) for a in heat},
                    **{v: probe.peak_power(drive.currents(windows[v][-1])) for v in windows}}
            for chunk in _chunks(pairs, peak, probe.power_budget):
                settings = np.zeros((points, n))
                for v, a in chunk:
                    settings[:, v] = drive.currents(windows[v])
                    settings[:, a] = heat[a]
                w = probe.weights(settings).reshape(points, -1)
                for v, a in chunk:
                    # a neighbour's heat may push the dip below zero drive: its own shape
                    # (from its sweep) then fits the tail that is left
                    own = sweep.fits[v]
                    fit = fit_dip(windows[v], w[:, v], float(noise[v]),
                                  shape=(own.hwhm, own.depth, own.baseline))
                    if fit.status not in USABLE:
                        problems.append(f"{probe.name(v)}: crosstalk from ring {probe.ring(a)} not "
                                        "measured (its dip left the window)")
                        continue
                    applied = drive.of(heat[a])
                    coupling[v, a] = (centers[v] - fit.center) / applied
                    error[v, a] = np.hypot(sweep.fits[v].errors[0], fit.errors[0]) / applied
                    measured[v, a] = True
    return {"coupling": coupling, "coupling_error": error, "measured": measured, "problems": problems}


def _chunks(pairs: list[tuple[int, int]], peak: dict[int, float],
            budget: float | None) -> list[list[tuple[int, int]]]:
    """Pairs measured at once, their heaters together within 90 % of the power budget."""
    if budget is None:
        return [pairs]
    out: list[list[tuple[int, int]]] = [[]]
    total = 0.0
    for v, a in pairs:  # at one offset every pair has its own aggressor
        cost = peak[v] + peak[a]
        if out[-1] and total + cost > 0.9 * budget:
            out.append([])
            total = 0.0
        out[-1].append((v, a))
        total += cost
    return out
