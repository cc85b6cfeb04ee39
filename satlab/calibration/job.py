"""``satlab calibrate``: which steps a rig's system has, run them on the open rig, in order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satlab.calibration.store import StepResult
from satlab.rig import Rig
from satlab.rigfile import RigSpec
from satlab.validation import ConfigError

# step → the system type it calibrates, in the order steps run
STEPS = {"wiring": "mrr_weight_bank", "rings": "mrr_weight_bank", "crosstalk": "mrr_weight_bank",
         "weight_map": "mrr_weight_bank", "slm_lut": "d2nn", "camera": "d2nn",
         "registration": "incoherent_freespace"}


@dataclass
class BankOptions:
    """Settings of the ring-bank steps."""

    tuning: str = "auto"
    coarse: int = 64
    dense: int = 16
    reach: int = 2
    linewidth_nm: float | None = None  # the rings' optical FWHM, to state tuning in nm


def plan(spec: RigSpec, path: Path, only: list[str] | None) -> list[str]:
    """The steps to run on this rig (all of its system's, or ``only``); ConfigError if a
    step does not apply, before anything opens."""
    if spec.system is None:
        raise ConfigError(path, "system", "calibration needs a system section (what to calibrate)")
    kind = spec.system.type
    mine = [s for s, t in STEPS.items() if t == kind]
    if not mine:
        raise ConfigError(path, "system.type", f"satlab calibrate has no steps for {kind!r} systems")
    for step in only or []:
        if STEPS[step] != kind:
            raise ConfigError(path, "system.type", f"--only {step} calibrates a {STEPS[step]} system; "
                              f"this rig's is {kind} (its steps: {', '.join(mine)})")
    chosen = [s for s in mine if only is None or s in only]
    if {"rings", "crosstalk", "weight_map"} & set(chosen):
        chosen = [s for s in mine if s in chosen or s in ("rings", "weight_map")]  # a map needs fits
    return chosen


def check_budget(spec: RigSpec, path: Path, system) -> None:
    """Refuse, before any write, a bank whose power budget cannot hold one ring at full current."""
    for i, layer in enumerate(system.spec.layers):
        limits = spec.instruments[layer.heaters].limits
        if limits.max_total_power is not None:
            one = max(limits.max_current) ** 2 * limits.heater_resistance_ohm
            if one > limits.max_total_power:
                raise ConfigError(path, f"instruments.{layer.heaters}.limits.max_total_power",
                                  f"{limits.max_total_power:g} W cannot hold one ring at max_current "
                                  f"({one:.3g} W): a sweep of layer {layer.name} would leave the limits")


def run(rig: Rig, system, steps: list[str], options: BankOptions, say=print) -> list[StepResult]:
    """Run ``steps`` on the open rig; a miswired bank stops after the wiring step."""
    results: list[StepResult] = []
    if system.spec.type == "mrr_weight_bank":
        from satlab.calibration.bank_steps import WiringError, ring_steps, wiring_step
        from satlab.calibration.rings import BankProbe

        probes = [BankProbe(rig, layer) for layer in system.spec.layers]
        noise: dict[str, np.ndarray] = {}
        if "wiring" in steps:
            say("wiring: stepping every heater channel alone")
            wiring, noise = wiring_step(probes)
            if wiring.problems:
                raise WiringError("; ".join(wiring.problems[:3]) + (
                    f" (and {len(wiring.problems) - 3} more)" if len(wiring.problems) > 3 else ""))
            results.append(wiring)
        if "rings" in steps:
            say("rings: coarse and dense sweeps" + (", then crosstalk" if "crosstalk" in steps else ""))
            results += ring_steps(probes, noise, options.tuning, options.coarse, options.dense,
                                  options.reach, "crosstalk" in steps, options.linewidth_nm)
    if "slm_lut" in steps:  # first: the camera's spot patterns trust the SLMs' tables
        from satlab.calibration.slm import calibrate_slm_lut

        say("slm_lut: each SLM's gray level -> phase response through the camera")
        results.append(calibrate_slm_lut(rig, system))
    if "camera" in steps:
        from satlab.calibration.camera import calibrate_camera

        say("camera: dark frame, spots of single-class patterns, registration, flat field")
        results.append(calibrate_camera(rig, system))
    if "registration" in steps:
        from satlab.calibration.freespace import calibrate_registration

        say("registration: each weight display's misalignment against its camera")
        results.append(calibrate_registration(rig, system))
    return results


def summary_plot(rig_name: str, steps: list[StepResult]):
    """A one-page summary: every step's cost, headline numbers and problems by reason."""

    def plot(path: Path) -> None:
        import textwrap
        from collections import Counter

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lines = [f"calibration of {rig_name}", ""]
        for step in steps:
            lines.append(f"{step.kind}: {step.queries} rig queries, {step.rig_seconds:.1f} s at the rig, "
                         f"{len(step.problems)} problems")
            for key, value in step.summary.items():
                lines += textwrap.wrap(f"{key}: {_short(value)}", 120, initial_indent="    ",
                                       subsequent_indent="        ")
            # problems are "what: why"; the same reason for many rings is one line
            for reason, count in Counter(p.rsplit(": ", 1)[-1] for p in step.problems).most_common():
                lines += textwrap.wrap(f"! {count} x {reason}", 120, initial_indent="    ",
                                       subsequent_indent="        ")
            lines.append("")
        fig = plt.figure(figsize=(8.27, max(3.0, 0.14 * len(lines) + 0.6)))
        fig.text(0.02, 0.99, "\n".join(lines), va="top", family="monospace", fontsize=6.5)
        fig.savefig(path, dpi=110)
        plt.close(fig)

    return plot


def _short(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)
