"""The ring-bank steps of ``satlab calibrate``: wiring, rings, crosstalk, weight_map.

Each returns a StepResult covering every MRR layer of the rig. Wiring runs first: a
dead or miswired channel stops the calibration before any sweep.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from satlab.calibration.crosstalk import measure_crosstalk
from satlab.calibration.rings import BankProbe, base_noise, check_wiring, sweep_problems, sweep_rings
from satlab.calibration.store import StepResult
from satlab.calibration.weight_map import BankMap


class WiringError(RuntimeError):
    """The rig file's channel map does not match what the heaters move."""


def _figure(rows: int, cols: int, size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return plt, fig, axes


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _per_layer(path: Path, probes: list[BankProbe], height: float, draw) -> None:
    """One panel per bank side by side: ``draw(fig, ax, probe)`` fills each."""
    plt, fig, axes = _figure(1, len(probes), (5 * len(probes), height))
    for ax, probe in zip(axes[0], probes):
        draw(fig, ax, probe)
    _save(plt, fig, path)


def wiring_step(probes: list[BankProbe]) -> tuple[StepResult, dict[str, np.ndarray]]:
    """Step every heater channel alone; StepResult and each layer's noise per ring."""
    arrays, summary, problems, noise = {}, {}, [], {}
    start = [(p.queries, p.seconds) for p in probes]
    for probe in probes:
        found = check_wiring(probe)
        name = probe.layer.name
        noise[name] = found["noise"]
        problems += found["problems"]
        arrays.update({f"{name}.{k}": v for k, v in found.items() if k != "problems"})
        summary[name] = {"rings": probe.n, "dead_or_miswired": len(found["problems"]),
                         "median_noise": float(np.median(found["noise"]))}

    def panel(fig, ax, probe: BankProbe) -> None:
        name = probe.layer.name
        wired = arrays[f"{name}.responder"] == np.arange(probe.n)
        ax.bar(np.arange(probe.n), arrays[f"{name}.response"], width=1.0,
               color=np.where(wired, "tab:blue", "tab:red"))
        ax.set(title=f"{name}: largest weight change per heater step", xlabel="ring (row-major)",
               ylabel="|Δw|")

    return (StepResult("wiring", summary, arrays, *_cost(probes, start), problems,
                       lambda path: _per_layer(path, probes, 4, panel)), noise)


def _cost(probes: list[BankProbe], start: list[tuple[int, float]]) -> tuple[int, float]:
    return (sum(p.queries - q for p, (q, _) in zip(probes, start)),
            sum(p.seconds - s for p, (_, s) in zip(probes, start)))


def ring_steps(probes: list[BankProbe], noise: dict[str, np.ndarray], tuning: str, coarse: int,
               dense: int, reach: int, crosstalk: bool,
               linewidth_nm: float | None = None) -> list[StepResult]:
    """Sweep and fit every ring, measure crosstalk (if asked), and build the weight maps."""
    start = [(p.queries, p.seconds) for p in probes]
    sweeps, ring_arrays, ring_summary, ring_problems = {}, {}, {}, []
    for probe in probes:
        name = probe.layer.name
        if name not in noise:
            noise[name] = base_noise(probe)[1]
        floor = np.maximum(noise[name], 1e-6)  # an ideal detector still quantises the fit
        sweep = sweeps[name] = sweep_rings(probe, floor, tuning, coarse, dense, reach)
        ring_problems += sweep_problems(probe, sweep)
        for field in ("center", "hwhm", "depth", "baseline"):
            ring_arrays[f"{name}.{field}"] = sweep.array(field)
        ring_arrays[f"{name}.errors"] = sweep.errors()
        ring_arrays[f"{name}.status"] = sweep.status
        ring_arrays[f"{name}.max_current"] = probe.max_current
        # a sweep of weights sees the line in drive units only: tuning in linewidths (FWHM)
        # per unit of drive, in nm only where the ring's optical linewidth is known
        efficiency = 1 / (2 * sweep.array("hwhm"))
        ring_arrays[f"{name}.tuning_linewidths_per_unit"] = efficiency
        ok = sweep.status == 0
        ring_summary[name] = {
            "tuning": sweep.drive.tuning, "drive_unit": sweep.drive.unit, "rings": probe.n,
            "fitted": int(ok.sum()), "tails": int((sweep.status == 1).sum()),
            "not_fitted": int((sweep.status > 1).sum()),
            "median_hwhm": float(np.median(sweep.array("hwhm")[ok])) if ok.any() else None,
            "median_center_error": float(np.median(sweep.errors()[ok, 0])) if ok.any() else None,
            "median_depth": float(np.median(sweep.array("depth")[ok])) if ok.any() else None,
            "median_tuning_linewidths_per_unit": float(np.median(efficiency[ok])) if ok.any() else None,
            **({"median_tuning_nm_per_unit": float(linewidth_nm * np.median(efficiency[ok]))}
               if linewidth_nm and ok.any() else {}),
        }
    rings = StepResult("rings", ring_summary, ring_arrays, *_cost(probes, start), ring_problems,
                       lambda path: _plot_sweeps(path, probes, sweeps))
    steps = [rings]
    couplings = {}
    if crosstalk:
        start = [(p.queries, p.seconds) for p in probes]
        x_arrays, x_summary, x_problems = {}, {}, []
        for probe in probes:
            name = probe.layer.name
            found = measure_crosstalk(probe, sweeps[name], np.maximum(noise[name], 1e-6), reach)
            couplings[name] = found["coupling"]
            x_problems += found["problems"]
            x_arrays.update({f"{name}.{k}": v for k, v in found.items() if k != "problems"})
            x_summary[name] = _coupling_summary(probe, found, reach)
        steps.append(StepResult("crosstalk", x_summary, x_arrays, *_cost(probes, start), x_problems,
                                lambda path: _plot_crosstalk(path, probes, x_arrays)))
    map_arrays, map_summary = {}, {}
    for probe in probes:
        name, sweep = probe.layer.name, sweeps[probe.layer.name]
        bank = BankMap(probe.rows, probe.cols, sweep.drive.tuning, sweep.drive.resistance,
                       sweep.array("center"), sweep.array("hwhm"), sweep.array("depth"),
                       sweep.array("baseline"), probe.max_current, sweep.status,
                       couplings.get(name, np.zeros((probe.n, probe.n))))
        low, high = bank.reachable()
        map_arrays.update(bank.arrays(name))
        map_arrays[f"{name}.reachable_low"], map_arrays[f"{name}.reachable_high"] = low, high
        use = bank.usable
        map_summary[name] = {"rows": probe.rows, "cols": probe.cols, "tuning": bank.tuning,
                             "resistance_ohm": bank.resistance, "crosstalk_compensated": bool(crosstalk),
                             "usable_rings": int(use.sum()),
                             "common_weight_range": [float(low[use].max()), float(high[use].min())]
                             if use.any() else None}
    steps.append(StepResult("weight_map", map_summary, map_arrays, 0, 0.0, [],
                            lambda path: _plot_ranges(path, probes, map_arrays)))
    return steps


def _coupling_summary(probe: BankProbe, found: dict, reach: int) -> dict:
    """Mean coupling and its spread at each distance along a waveguide."""
    out = {}
    ring = np.arange(probe.n)
    distance = (ring[None, :] % probe.cols) - (ring[:, None] % probe.cols)
    for d in [d for d in range(-reach, reach + 1) if d]:
        m = found["measured"] & (distance == d)
        if m.any():
            c = found["coupling"][m]
            out[f"distance_{d:+d}"] = {"mean": float(c.mean()), "std": float(c.std()),
                                       "median_error": float(np.median(found["coupling_error"][m])),
                                       "pairs": int(m.sum())}
    return out


def _plot_sweeps(path: Path, probes: list[BankProbe], sweeps: dict) -> None:
    from satlab.calibration.lorentz import lorentz_dip

    shown = 4
    plt, fig, axes = _figure(len(probes), shown, (4 * shown, 3 * len(probes)))
    for row, probe in zip(axes, probes):
        sweep = sweeps[probe.layer.name]
        for ax, r in zip(row, np.linspace(0, probe.n - 1, shown).astype(int)):
            x, y, f = sweep.x[r], sweep.y[r], sweep.fits[r]
            ax.plot(x, y, ".", ms=3, label="measured")
            if f.status in (0, 1):
                grid = np.linspace(x.min(), x.max(), 400)
                ax.plot(grid, lorentz_dip(grid, *f.params), "-", lw=1, label="fit")
            ax.set(title=f"{probe.name(r).split(' on ')[0]}", xlabel=f"drive ({sweep.drive.unit})",
                   ylabel="weight")
        row[0].legend(fontsize=7)
    _save(plt, fig, path)


def _plot_crosstalk(path: Path, probes: list[BankProbe], arrays: dict) -> None:
    def panel(fig, ax, probe: BankProbe) -> None:
        name = probe.layer.name
        image = ax.imshow(np.where(arrays[f"{name}.measured"], arrays[f"{name}.coupling"], np.nan),
                          cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="coupling (fraction of drive)")
        ax.set(title=f"{name}: crosstalk (victim row, aggressor column)",
               xlabel="aggressor ring", ylabel="victim ring")

    _per_layer(path, probes, 4, panel)


def _plot_ranges(path: Path, probes: list[BankProbe], arrays: dict) -> None:
    def panel(fig, ax, probe: BankProbe) -> None:
        name = probe.layer.name
        ax.vlines(np.arange(probe.n), arrays[f"{name}.reachable_low"], arrays[f"{name}.reachable_high"], lw=1)
        ax.set(title=f"{name}: reachable weight per ring", xlabel="ring (row-major)", ylabel="weight",
               ylim=(-1.05, 1.05))

    _per_layer(path, probes, 3.5, panel)
