"""SLM gray level → phase, measured through the camera of a D2NN bench, fitted, and
written as the LUT file the SLM's driver reads (``lut_file``: ``PhaseLut.from_file``).

Method: a split screen read through the system's twin (a model-based estimate). The
input shows a uniform square; every other SLM is blank (a uniform phase is a global
phase, which no camera sees); the SLM under test shows gray level 0 on its left half
and level g on its right half, so the light crossing the middle interferes with a
phase step of φ(g) − φ(0). Through this optics (lens, a second mask, an intensity
threshold, a lens onto the camera) the frame is no closed-form function of the step,
so the frame's light in blocks of pixels, normalised by its total, is matched against
the twin's frames for the same picture at a library of steps over a turn, interpolated
between them (5-point Lagrange): one phase per measured gray level and frame. A step
and its negative give mirrored frames, and frames are the same only a whole turn
apart, so the match has no ambiguity within the turn. Consecutive measured levels are
unwrapped assuming the response rises by less than 1.5π and falls by less than π/2
between them. Only pixels lit well above the camera's dark noise at every level count
(a dark frame comes first): a camera without an offset clips its read noise at zero
and so reads more than the light in dim pixels, which the noise-free twin does not.
The input is dimmed while any frame saturates.

Uncertainties, in quadrature: the spread of the phases matched in repeated frames (shot
and read noise), the camera's rounding to whole counts (propagated through the slope of
the twin's frames), and the interpolation between library steps, estimated as half the
error left when each node is matched by the library without it (largest where the
intensity threshold's kinks cross the frames). The fitted curve is
phase(g) = a + b·I_x(p, q) with x = g/(2^bits − 1) and I the regularised incomplete
beta function: smooth and monotone by construction, linear for p = q = 1, a power law
for q = 1, S-shaped for p, q > 1, as liquid-crystal responses are.

A device reaching less than 2π cannot show the phases between its top and 2π: the LUT
is the fitted curve (the driver shows the nearest level, the top one or level 0), and
a problem names the gap. A device passing 2π at level g* repeats lower levels' phases
above it: the LUT keeps levels 0 … g*−1 and parks the others 1e-9 rad apart just below
2π (a valid, strictly increasing table; only phases within ~1e-7 rad of 2π map onto
them), and a problem says so. An SLM whose phase does not reach the camera through the
optics (on the SAT System 3 preset, the mask right before the intensity threshold: the
threshold keeps only intensity) gets a problem and no LUT.

Everything is measured through the rig's public methods (``Rig.show_gray``,
``Rig.load_inputs``, ``Rig.acquire``); the bench's true response is never read. The twin
is the one the rig file names, built from its options (``system.layer.twin``), and its
frames are compared with the camera's as the camera gives them: a camera whose dark
signal or gain the twin does not model leaves frames the twin cannot reproduce, which
the step reports (χ² per block) rather than fitting silently.
"""

from __future__ import annotations

import math
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.optimize import curve_fit
from scipy.special import betainc

from satlab import registry
from satlab.calibration.store import StepResult
from satlab.instruments import Camera, InputModulator, PhaseModulator
from satlab.phase_lut import TWO_PI, PhaseLut
from satlab.rig import Rig, RigError
from satlab.validation import ConfigError

if TYPE_CHECKING:
    from satlab.systems.protocol import System

KIND = "slm_lut"
FRAMES = 8  # repeats of every picture: their spread is the camera's noise
LIBRARY = 64  # twin phase steps over a turn, interpolated between (~0.002 rad on System 3)
BLOCKS = 16  # blocks along the shorter side of the camera's ROI
HALVINGS = 10  # of the input's brightness, to get out of saturation
DIM_SIGMAS = 10.0  # a pixel counts when lit this many dark-noise sigmas above the dark level
VISIBLE = 20.0  # noise sigmas the twin's frames must move over a turn for a phase to be seen
POOR_CHI2 = 4.0  # per block: frames further from the twin's than the camera's noise explains
POOR_FIT_RAD = 0.05  # rms residual above which the fitted curve does not describe the device
PARK_RAD = 1e-9  # spacing of the levels parked below 2π on a device passing 2π
MODEL = "a + b*I_x(p, q), x = g/(2^bits - 1), I the regularised incomplete beta"


def response_curve(gray: np.ndarray, top: int, a: float, b: float, p: float, q: float) -> np.ndarray:
    """The fitted phase (rad) of gray levels ``gray`` of a device whose top level is ``top``."""
    x = np.clip(np.asarray(gray, dtype=float) / top, 0.0, 1.0)
    return a + b * betainc(p, q, x)


@dataclass
class _Roles:
    """The instruments the calibration uses, by rig-file name."""

    slms: list[str]
    inputs: str
    camera: str
    twin: torch.nn.Module
    alignment: dict[str, float]


def _roles(rig: Rig, system: System | None) -> _Roles:
    """The SLMs, input, camera and twin, or a ConfigError naming what is missing."""
    layer = getattr(getattr(system, "spec", None), "layer", None)
    slms = list(layer.slms) if layer is not None else [
        n for n, d in rig.instruments.items() if isinstance(d, PhaseModulator)]
    if not slms:
        raise ConfigError(rig.path, "instruments", "no SLM (phase_modulator) to calibrate; the rig has "
                          + (", ".join(f"{n} ({d.kind})" for n, d in rig.instruments.items()) or "no instruments"))
    cameras = [layer.camera] if layer is not None else [
        n for n, d in rig.instruments.items() if isinstance(d, Camera)]
    if not cameras:
        raise ConfigError(rig.path, "instruments", f"no camera: the phase of {', '.join(slms)} is "
                          "measured through a camera, and the rig has none")
    if layer is None:
        raise ConfigError(rig.path, "system", "SLM calibration needs a d2nn system section: its "
                          "twin models the optics from the SLMs to the camera")
    for field, names, cls in (("slms", slms, PhaseModulator), ("camera", cameras, Camera),
                              ("inputs", [layer.inputs], InputModulator)):
        for name in names:
            if not isinstance(rig.instruments.get(name), cls):
                raise ConfigError(rig.path, f"system.layer.{field}", f"{name!r} is not an open {cls.kind}")
    twin = registry.lookup(layer.twin.driver)(**layer.twin.options)
    alignment: dict[str, float] = {}
    for knob in layer.alignment:  # the twin is told where the bench's stages stand
        position = float(rig.instruments[knob.positioner].position())
        alignment[knob.axis] = alignment.get(knob.axis, 0.0) + position
    return _Roles(slms, layer.inputs, cameras[0], twin, alignment)


class _Blocks:
    """Blocks of camera pixels over the ROI, each counting only its ``keep`` pixels; a
    frame's light in each, normalised by the total."""

    def __init__(self, camera: Camera, keep: np.ndarray | None = None) -> None:
        roi = camera.roi
        self.size = max(1, min(roi.height, roi.width) // BLOCKS)
        self.rows, self.cols = roi.height // self.size, roi.width // self.size
        s = self.size
        self.keep = (np.ones((roi.height, roi.width), bool) if keep is None else keep)
        self.keep = self.keep[:self.rows * s, :self.cols * s]
        counted = self.keep.reshape(self.rows, s, self.cols, s).sum((1, 3)).ravel()
        self.used = np.flatnonzero(counted)  # blocks with no kept pixel are no outputs
        self.pixels = counted[self.used].astype(float)
        # the twin's frames are full-sensor: regions there, where the ROI puts them
        label = torch.full(tuple(camera.shape), -1, dtype=torch.long)
        r, c = torch.arange(self.rows * s), torch.arange(self.cols * s)
        inside = ((r // s)[:, None] * self.cols + (c // s)[None, :])
        label[roi.row:roi.row + len(r), roi.col:roi.col + len(c)] = torch.where(
            torch.from_numpy(self.keep), inside, -1)
        # float regions: the twin's region sums need no conversion per call
        self.regions = (label[None] == torch.from_numpy(self.used)[:, None, None]).double()

    def sums(self, frames: np.ndarray) -> np.ndarray:
        """Counts per block (..., blocks) of ROI frames (..., height, width)."""
        s, lead = self.size, frames.shape[:-2]
        cut = np.asarray(frames, dtype=float)[..., :self.rows * s, :self.cols * s] * self.keep
        return cut.reshape(*lead, self.rows, s, self.cols, s).sum((-3, -1)).reshape(*lead, -1)[..., self.used]


def _split(shape: tuple[int, int], right: float, dtype: Any) -> np.ndarray:
    """A picture: 0 on the left half, ``right`` on the right half."""
    picture = np.zeros(shape, dtype=dtype)
    picture[:, shape[1] // 2:] = right
    return picture


class _Library:
    """The twin's normalised block signals for a phase step at nodes over one turn."""

    def __init__(self, nodes: np.ndarray, signals: np.ndarray, level: float, exposure_s: float) -> None:
        self.nodes, self.signals = nodes, signals
        self.level, self.exposure_s = level, exposure_s  # the input's and the camera's

    def match(self, s: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray, float]:
        """The step (rad, in [0, 2π)) whose interpolated signals are nearest to ``s``, the
        signals' slope there (per rad) and the weighted squared residual."""
        k = int((((self.signals - s) ** 2) * weights).sum(1).argmin())
        best, slope, chi2 = self._interpolated(k, s, weights)
        return float(np.mod(best, TWO_PI)), slope, chi2

    def interpolation_errors(self, weights: np.ndarray) -> np.ndarray:
        """Each node's step as matched by the library without it, less its own (rad): the
        interpolation's error at twice the nodes' spacing."""
        out = np.empty(len(self.nodes))
        for k in range(len(self.nodes)):
            rest = _Library(np.delete(self.nodes, k), np.delete(self.signals, k, 0), self.level,
                            self.exposure_s)
            found = rest.match(self.signals[k], weights)[0]
            out[k] = np.angle(np.exp(1j * (found - self.nodes[k])))
        return out

    def near(self, phase: float, values: np.ndarray, count: int = 4) -> np.ndarray:
        """``values`` of the ``count`` nodes nearest to ``phase`` on the circle."""
        distance = np.abs(np.angle(np.exp(1j * (self.nodes - phase))))
        return values[np.argsort(distance)[:count]]

    def _node(self, i: int) -> float:
        """Node ``i`` on the unwrapped axis (any integer: whole turns added)."""
        n = len(self.nodes)
        return float(self.nodes[i % n] + TWO_PI * (i // n))

    def _interpolated(self, k: int, s: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray, float]:
        """The best step between nodes k − 1 and k + 1, interpolated through the five nodes
        centred on k; the slope and residual there."""
        around = np.arange(k - 2, k + 3)
        nodes = np.array([self._node(i) for i in around])
        values = self.signals[around % len(self.nodes)]
        x = np.linspace(self._node(k - 1), self._node(k + 1), 2001)
        cost = (((_lagrange(nodes, x) @ values - s) ** 2) * weights).sum(1)
        i = int(cost.argmin())
        best = x[i]
        if 0 < i < len(x) - 1:  # the parabola through the grid's three best points
            c0, c1, c2 = cost[i - 1:i + 2]
            if c0 - 2 * c1 + c2 > 0:
                best += 0.5 * (c0 - c2) / (c0 - 2 * c1 + c2) * (x[1] - x[0])
        at = np.array([best])
        fitted = (_lagrange(nodes, at) @ values)[0]
        slope = (_lagrange(nodes, at, derivative=True) @ values)[0]
        return float(best), slope, float((((fitted - s) ** 2) * weights).sum())


def _lagrange(nodes: np.ndarray, x: np.ndarray, derivative: bool = False) -> np.ndarray:
    """Lagrange basis (len(x), len(nodes)) at ``x``, or its derivative."""
    out = np.zeros((len(x), len(nodes)))
    for j, node in enumerate(nodes):
        others = np.delete(nodes, j)
        denom = np.prod(node - others)
        if not derivative:
            out[:, j] = np.prod(x[:, None] - others[None, :], 1) / denom
            continue
        for m in range(len(others)):
            rest = np.delete(others, m)
            out[:, j] += np.prod(x[:, None] - rest[None, :], 1) / denom
    return out


class _Sweep:
    """Pictures on one SLM, frames of the camera, at an input brightness that does not saturate."""

    def __init__(self, rig: Rig, roles: _Roles) -> None:
        self.rig, self.roles = rig, roles
        self.channels = rig.instruments[roles.inputs].channels
        self.level, self.queries = 1.0, 0

    def dark(self) -> np.ndarray:
        """Frames (FRAMES, height, width) with the input dark."""
        self.rig.load_inputs(self.roles.inputs, np.zeros((FRAMES, self.channels)))
        self.queries += 1
        return self.rig.acquire(self.roles.camera, FRAMES).signal

    def frames(self, slm: str, grays: np.ndarray) -> tuple[np.ndarray, float]:
        """Frames (levels, FRAMES, height, width) of the split screen at each gray level, and
        the exposure; dims the input until no frame saturates."""
        dev: PhaseModulator = self.rig.instruments[slm]  # type: ignore[assignment]
        for _ in range(HALVINGS + 1):
            self.rig.load_inputs(self.roles.inputs, np.full((FRAMES, self.channels), self.level))
            out, saturated = [], False
            for gray in grays:
                self.rig.show_gray(slm, _split(dev.shape, gray, dev.lut.dtype))
                shot = self.rig.acquire(self.roles.camera, FRAMES)
                self.queries += 1
                if shot.saturated.any():
                    saturated = True
                    break
                out.append(shot.signal)
            if not saturated:
                return np.stack(out), shot.exposure_s
            self.level /= 2
        raise RigError(f"{self.roles.camera} saturates even with the input at "
                       f"{self.level * 2:.2g} of full scale")


def _twin_library(roles: _Roles, blocks: _Blocks, index: int, shape: tuple[int, int],
                  level: float, exposure_s: float, channels: int, steps: int = LIBRARY) -> _Library:
    """The twin's signals for the split screen on SLM ``index`` at ``steps`` steps over a turn."""
    nodes = TWO_PI * np.arange(steps) / steps
    lut = getattr(roles.twin, "lut", None)
    if isinstance(lut, PhaseLut):  # the twin shows its own levels: use exactly those
        nodes = np.unique(lut.to_phase(lut.to_gray(nodes)))
    x = torch.full((1, channels), level, dtype=torch.float64)
    phases = torch.zeros(len(roles.slms), *shape, dtype=torch.float64)
    signals = []
    with torch.no_grad():
        for node in nodes:
            phases[index] = torch.from_numpy(_split(shape, node, float))
            signals.append(roles.twin(x, phases.flatten(), exposure_s, blocks.regions,
                                      roles.alignment)[0].numpy())
    return _Library(nodes, np.stack(signals), level, exposure_s)


def _fit(gray: np.ndarray, phase: np.ndarray, std: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Parameters (a, b, p, q) of the response curve and their standard deviations."""
    p0 = [phase[0], max(phase[-1] - phase[0], 0.1), 1.0, 1.0]
    lower, upper = [-math.pi, 0.01, 0.05, 0.05], [math.pi + TWO_PI, 4 * TWO_PI, 20.0, 20.0]
    p0 = np.clip(p0, lower, upper)
    params, cov = curve_fit(lambda g, a, b, p, q: response_curve(g, top, a, b, p, q), gray, phase,
                            p0=p0, sigma=std, bounds=(lower, upper), maxfev=20000)
    errors = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else np.full(4, np.inf)
    return params, errors


def _lut(relative: np.ndarray) -> tuple[np.ndarray, int | None]:
    """A valid LUT from the fitted phases relative to level 0, and the first level at or
    beyond 2π (None: the device stays below it)."""
    levels = len(relative)
    phases = np.maximum.accumulate(np.clip(relative, 0.0, None))
    beyond = np.flatnonzero(phases >= TWO_PI - PARK_RAD * levels)
    first = int(beyond[0]) if beyond.size else None
    if first is not None:
        phases[first:] = TWO_PI - PARK_RAD * (levels - np.arange(first, levels))
    for g in range(1, levels):  # a flat stretch of the fit: levels must still differ
        phases[g] = max(phases[g], phases[g - 1] + PARK_RAD)
    return phases, first


def _unwrap(wrapped: np.ndarray) -> np.ndarray:
    """Phases rising through the levels from wrapped ones; level 0's near 0."""
    first = float(np.angle(np.exp(1j * wrapped[0])))
    steps = np.mod(np.diff(wrapped) + math.pi / 2, TWO_PI) - math.pi / 2
    return first + np.concatenate([[0.0], np.cumsum(steps)])


def calibrate_slm_lut(rig: Rig, system: System | None, progress: bool = False,
                      levels: int = 32) -> StepResult:
    """Measure each SLM's gray level → phase response through the camera, fit it, and make its LUT."""
    roles = _roles(rig, system)
    if not (isinstance(levels, int) and levels >= 6):
        raise ValueError(f"levels: at least 6 gray levels are needed to fit the response, got {levels!r}")
    sweep = _Sweep(rig, roles)
    summary: dict[str, Any] = {"method": "split screen matched to the twin's frames", "model": MODEL,
                               "frames": FRAMES, "library_steps": LIBRARY}
    arrays: dict[str, np.ndarray] = {}
    files: dict[str, str] = {}
    problems: list[str] = []
    plotted: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    try:
        for name in roles.slms:
            _blank(rig, name)
        dark = sweep.dark()
        # below this, a pixel reads the camera's noise clipped at zero more than light: a
        # camera without an offset reads more there than the light gives, which the
        # noise-free twin does not, so such pixels are left out
        floor = float(dark.mean() + DIM_SIGMAS * math.sqrt(dark.var(0, ddof=1).mean()))
        summary["dim_counts"] = floor
        for index, name in enumerate(roles.slms):
            queries = sweep.queries
            found = _calibrate_one(rig, roles, sweep, index, name, levels, floor)
            _blank(rig, name)
            found["summary"]["queries"] = sweep.queries - queries
            summary[name] = found["summary"]
            problems += found["problems"]
            arrays.update({f"{name}.{k}": v for k, v in found["arrays"].items()})
            if "lut" in found:
                files[f"{name}.lut"] = found["lut"]
            plotted[name] = found
            if progress:
                s = found["summary"]
                print(f"slm_lut {name}: " + (f"reaches {s['max_phase_rad']:.3f} rad, fit rms "
                      f"{s['rms_fit_error_rad']:.3g} rad" if s["measured"] else "not measured")
                      + f"; {len(found['problems'])} problem(s)", file=sys.stderr, flush=True)
    finally:  # blank, as the rig leaves an SLM; dark input
        for name in roles.slms:
            if name not in rig.faulted:
                _blank(rig, name)
        if roles.inputs not in rig.faulted:
            rig.load_inputs(roles.inputs, np.zeros((1, sweep.channels)))
    summary["input_level"] = sweep.level
    return StepResult(KIND, summary, arrays, queries=sweep.queries, rig_seconds=time.perf_counter() - start,
                      problems=problems, plot=lambda out: _plot(out, plotted), files=files)


def _blank(rig: Rig, name: str) -> None:
    """Gray level 0 over the whole SLM, through the rig."""
    dev: PhaseModulator = rig.instruments[name]  # type: ignore[assignment]
    rig.show_gray(name, np.zeros(dev.shape, dtype=dev.lut.dtype))


def _calibrate_one(rig: Rig, roles: _Roles, sweep: _Sweep, index: int, name: str, levels: int,
                   floor: float) -> dict[str, Any]:
    """One SLM: sweep, match to the twin, unwrap, fit, LUT; its summary, arrays and problems."""
    dev: PhaseModulator = rig.instruments[name]  # type: ignore[assignment]
    count = 2**dev.bit_depth
    top = count - 1
    grays = np.unique(np.round(np.linspace(0, top, min(levels, count))).astype(int))
    camera: Camera = rig.instruments[roles.camera]  # type: ignore[assignment]

    def unseen(why: str) -> dict[str, Any]:
        return {"summary": {"measured": False, "problem": why, "bits": dev.bit_depth},
                "arrays": {"gray": grays}, "problems": [f"{name}: not calibrated, no LUT written: {why}"]}

    probe = _twin_library(roles, _Blocks(camera), index, dev.shape, sweep.level, camera.exposure_s,
                          sweep.channels, steps=4)
    if not np.ptp(probe.signals, axis=0).any():  # nothing to measure: spend no queries on it
        return unseen("its phase does not reach the camera through this optics (the twin's frames "
                      "do not change over a full turn of a split screen)")
    frames, exposure_s = sweep.frames(name, grays)  # (levels, FRAMES, height, width)
    keep = frames.mean(1).min(0) >= floor  # lit above the dark's noise at every level
    if not keep.any():
        return unseen(f"{roles.camera} sees no light above its dark noise ({floor:.3g} counts)")
    blocks = _Blocks(camera, keep)
    library = _twin_library(roles, blocks, index, dev.shape, sweep.level, exposure_s, sweep.channels)
    sums = blocks.sums(frames)  # (levels, FRAMES, blocks)
    totals = sums.sum(-1, keepdims=True)
    signals = sums / np.maximum(totals, 1e-300)
    # a block sum's variance: rounding to whole counts in every pixel, and the spread of
    # repeated frames pooled over all levels (shot and read noise)
    quantisation = blocks.pixels / 12.0
    spread = sums.var(axis=1, ddof=1).mean(0)
    total = float(totals.mean())
    if total <= 0:
        return unseen(f"{roles.camera} sees no light")
    weights = total**2 / (quantisation + spread)
    quant_weights = total**2 / quantisation
    seen = float(np.sqrt(((((library.signals - library.signals[0]) ** 2) * weights).sum(1)).max()))
    if seen < VISIBLE:
        return unseen(f"its phase hardly reaches the camera through this optics (the twin's frames move "
                      f"by {seen:.2g} noise sigmas over a full turn of a split screen)")
    problems: list[str] = []
    wrapped = np.empty((len(grays), FRAMES))
    fisher = np.empty(len(grays))
    chi2 = np.empty((len(grays), FRAMES))
    for j in range(len(grays)):
        for r in range(FRAMES):
            wrapped[j, r], slope, chi2[j, r] = library.match(signals[j, r], weights)
            if r == 0:
                fisher[j] = 1 / math.sqrt(max(float((slope**2 * quant_weights).sum()), 1e-300))
    centre = np.angle(np.exp(1j * wrapped).mean(1))
    scatter = np.angle(np.exp(1j * (wrapped - centre[:, None])))
    phase = _unwrap(np.mod(centre, TWO_PI))
    # the interpolation between library nodes: half the error left with every other node
    # (where the threshold's kinks cross the frames, more than the smooth parts)
    left_out = library.interpolation_errors(weights)
    interpolation = np.array([math.sqrt(float(np.mean(library.near(c, left_out) ** 2))) / 2 for c in centre])
    std = np.sqrt(scatter.var(1, ddof=1) / FRAMES + fisher**2 + interpolation**2)
    try:
        params, errors = _fit(grays, phase, std, top)
    except (RuntimeError, ValueError) as exc:  # scipy's way of saying it found no fit
        return unseen(f"the response curve could not be fitted ({exc})")
    fitted = response_curve(grays, top, *params)
    residual = phase - fitted
    rms = float(np.sqrt(np.mean(residual**2)))
    curve = response_curve(np.arange(count), top, *params)
    relative = curve - curve[0]
    lut, beyond = _lut(relative)
    PhaseLut(lut)  # a table the driver cannot load is a bug here, not a file to write
    reached = float(relative[-1])
    problems += _problems(name, grays, phase, std, rms, reached, beyond, count)
    reduced_chi2 = float(chi2.mean() / max(len(weights) - 1, 1))
    if reduced_chi2 > POOR_CHI2:
        problems.append(f"{name}: the twin does not reproduce the frames within the camera's noise (χ² per "
                        f"block {reduced_chi2:.3g}): the phases may be biased; calibrate the camera and the "
                        "alignment first")
    summary = {
        "measured": True, "bits": dev.bit_depth, "levels_measured": len(grays),
        "fit": {"a": float(params[0]), "b": float(params[1]), "p": float(params[2]), "q": float(params[3]),
                "std": [float(e) for e in errors]},
        "max_phase_rad": reached, "max_phase_std_rad": float(errors[1]), "reaches_2pi": beyond is not None,
        "first_level_past_2pi": beyond,
        "rms_fit_error_rad": rms, "median_phase_std_rad": float(np.median(std)),
        "chi2_per_block": reduced_chi2, "blocks": len(blocks.used), "pixels": int(keep.sum()),
        "input_level": sweep.level, "lut_file": f"{name}.lut"}
    header = (f"# {name}: phase (rad) of gray levels 0..{top}, measured through the camera "
              f"(satlab slm_lut); reaches {reached:.4f} rad\n")
    text = header + "".join(f"{v:.17g}\n" for v in lut)
    arrays = {"gray": grays, "phase": phase, "phase_std": std, "fitted": fitted, "lut": lut,
              "curve": curve, "params": params}
    return {"summary": summary, "arrays": arrays, "problems": problems, "lut": text}


def _problems(name: str, grays: np.ndarray, phase: np.ndarray, std: np.ndarray, rms: float,
              reached: float, beyond: int | None, count: int) -> list[str]:
    """What the LUT cannot do or the measurement cannot vouch for, one line each."""
    found = []
    falls = np.flatnonzero(np.diff(phase) < -3 * np.hypot(std[1:], std[:-1]))
    for j in falls[:3]:
        found.append(f"{name}: the phase falls from gray {grays[j]} to {grays[j + 1]} by "
                     f"{phase[j] - phase[j + 1]:.3g} rad: not a monotone response")
    if rms > POOR_FIT_RAD:
        found.append(f"{name}: the fitted curve misses the measured phases by {rms:.3g} rad rms "
                     f"(more than {POOR_FIT_RAD:g}): the response is not of the fitted shape")
    gap = TWO_PI - reached
    if beyond is None and gap > 2 * TWO_PI / count:
        found.append(f"{name}: reaches only {reached:.3f} rad ({reached / TWO_PI:.1%} of 2π): phases in "
                     f"({reached:.3f}, 2π) rad cannot be shown; the driver shows the nearest level "
                     f"(the top one or level 0), up to {gap / 2:.3f} rad off")
    if beyond is not None:
        found.append(f"{name}: passes 2π at gray level {beyond} (reaches {reached:.3f} rad): levels "
                     f"{beyond}..{count - 1} repeat lower levels' phases and are parked just below 2π in "
                     f"the LUT, so phases are shown by levels 0..{beyond - 1}")
    return found


def _plot(out: Path, plotted: dict[str, dict[str, Any]]) -> None:
    """Per SLM: measured phases with error bars and the fitted curve against the ideal line,
    and the residuals from the fit."""
    from matplotlib.figure import Figure

    columns = max(len(plotted), 1)
    fig = Figure(figsize=(5.5 * columns, 6.5))
    if not plotted:
        fig.text(0.5, 0.5, "no SLM was measured", ha="center")
    for i, (name, found) in enumerate(plotted.items()):
        ax, below = fig.add_subplot(2, columns, i + 1), fig.add_subplot(2, columns, columns + i + 1)
        arrays = found["arrays"]
        if "phase" not in arrays:
            for a in (ax, below):
                a.axis("off")
            ax.set_title(name)
            ax.text(0.5, 0.5, "not measured:\n" + textwrap.fill(found["summary"]["problem"], 50),
                    ha="center", va="center", fontsize=8, transform=ax.transAxes)
            continue
        count = len(arrays["lut"])
        every = np.arange(count)
        ax.plot(every, TWO_PI * every / count, "k:", lw=1, label="ideal linear")
        ax.plot(every, arrays["curve"], "r-", lw=1.2, label="fitted")
        ax.errorbar(arrays["gray"], arrays["phase"], yerr=arrays["phase_std"], fmt="o", ms=3, capsize=2,
                    label="measured")
        ax.axhline(TWO_PI, color="0.6", lw=0.6, ls="--")
        ax.set(xlabel="gray level", ylabel="phase (rad)", title=f"{name}: gray level → phase")
        ax.legend(fontsize=7, loc="upper left")
        below.errorbar(arrays["gray"], 1e3 * (arrays["phase"] - arrays["fitted"]),
                       yerr=1e3 * arrays["phase_std"], fmt="o", ms=3, capsize=2)
        below.axhline(0, color="r", lw=0.8)
        below.set(xlabel="gray level", ylabel="measured − fitted (mrad)",
                  title=f"rms {1e3 * found['summary']['rms_fit_error_rad']:.2g} mrad")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
