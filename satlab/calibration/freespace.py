"""Registration of the incoherent free-space bench: where each layer's weight picture sits
on the camera's tile places.

A layer's weight display shows its tiles as one picture; a misaligned display moves that
picture about its centre (rotation, shift along the rows, magnification) against the
input image fanned onto every tile. The calibration shows known pictures on the weight
display and known images on the image display, reads every tile, and fits the three
numbers by least squares against the layer's own model (``IncoherentModel.tile_sums``),
with the camera's gain and offset as free linear terms. What it measures, less the
layer's knobs where they stood, is what the twin adds to its knobs
(``IncoherentTwin.from_calibration``).

The pictures (each displayed in full, empty tile slots dark):

- dark and uniform: the camera's offset and gain, and light lost off the picture's edge;
- ramps down the rows and along the columns of the whole picture: each tile place reads
  where the picture sits at it, without ambiguity (a ramp has one value per position),
  so a rotation, a magnification and a shift move the places' readings differently;
- a bright upper half (left half) in every tile, read through an image that is bright
  in a band across the middle of the tile: the edge moves inside the band, so a tile
  reads its displacement along the rows (columns) with the sign, as many times more
  steeply than through the ramps as the picture has tiles down (across), but only
  within about a quarter tile.

The ramps alone are fitted first from the aligned position; every picture is fitted
from there, when the edges are inside their bands. A fit that leaves residuals well
above the camera's noise starts again from a few places around (a picture moved far off
its place can leave a false minimum). Uncertainties come from the fit's Jacobian and
residuals. Ramps and edges alike assume the display's transmission is what it is told
to show, as the system itself does.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.optimize import least_squares

from satlab import registry
from satlab.calibration.store import StepResult
from satlab.instruments import Camera, InputModulator, Positioner
from satlab.validation import ConfigError

if TYPE_CHECKING:
    from satlab.rig import Rig
    from satlab.systems.protocol import System

# the free-space system's alignment axes and units, in the order the twin takes them
NAMED = {"rotation_deg": "deg", "shift_px": "px", "scale": "x"}

KIND = "registration"


def layer_model(layer: Any) -> Any:
    """The layer's physics (an ``IncoherentModel``), from its twin as the rig file names it."""
    return registry.lookup(layer.twin.driver)(**layer.twin.options).model
PICTURES = ("dark", "uniform", "row ramp", "column ramp", "upper halves", "left halves")
COARSE = 4  # the first pictures: the ones read without ambiguity
IMAGES = ("uniform", "row band", "column band")
FRAMES = 4  # repeats of every image: the spread between them is the camera's noise
RESOLUTION_PX = 0.01  # a fitted misalignment moving no corner further is "aligned"
IDENTIFIED_PX = 0.2  # a parameter whose ±1σ moves a corner further is not identified
POOR_CHI2, POOR_RESIDUAL = 4.0, 0.002  # residuals above noise and above a share of a tile
DIMMEST = 0.01  # of the camera's full scale: the least light a uniform picture must give
HALVINGS = 10  # of the input's brightness, to get out of saturation
MAX_STEPS = 50  # of each least-squares fit


@dataclass
class _Geometry:
    """One layer's tile layout, as its model has it."""

    model: Any

    @property
    def height(self) -> int:
        """Rows of the picture, in pixels."""
        return self.model.rows * self.model.side

    @property
    def width(self) -> int:
        """Columns of the picture, in pixels."""
        return self.model.grid * self.model.side

    @property
    def corner_px(self) -> float:
        """Distance from the picture's centre to its corners: a radian or a unit of scale
        moves a corner this far."""
        return math.hypot(self.height / 2, self.width / 2)

    def levers(self) -> np.ndarray:
        """Pixels a corner moves per unit of (rotation_deg, shift_px, scale)."""
        return np.array([math.radians(1.0) * self.corner_px, 1.0, self.corner_px])


def pictures(model: Any) -> torch.Tensor:
    """The calibration's weight pictures (``PICTURES``) as display transmissions
    (pictures, tiles, side²), the reference tile last."""
    s, height, width = model.side, model.rows * model.side, model.grid * model.side
    rows = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
    full = [torch.zeros(height, width, dtype=torch.float64), torch.ones(height, width, dtype=torch.float64),
            (rows + 0.5) / height, (cols + 0.5) / width,
            ((rows % s) < s / 2).double(), ((cols % s) < s / 2).double()]
    return torch.stack([model.tiles(p, model.outputs + 1) for p in full])


def images(side: int) -> torch.Tensor:
    """The calibration's input images (``IMAGES``), (images, side²) at full brightness."""
    band = torch.zeros(side, side, dtype=torch.float64)
    band[side // 4:side - side // 4] = 1.0
    return torch.stack([torch.ones(side, side, dtype=torch.float64), band, band.T]).reshape(3, -1)


class Prediction:
    """Tile sums (pictures, images, tiles) of transmissions ``shown`` (pictures, tiles, side²)
    through ``inputs`` (images, side²) for a misalignment (rotation_deg, shift_px, scale − 1):
    what ``IncoherentModel.tile_sums`` gives for each picture, with the pictures drawn once
    and moved in one resampling (a fit evaluates it some hundred times)."""

    def __init__(self, model: Any, shown: torch.Tensor, inputs: torch.Tensor) -> None:
        self.model, self.shown = model, shown
        self.drawn = torch.stack([model.picture(t) for t in shown])
        self.inputs = inputs.reshape(len(inputs), -1).T.contiguous()

    def __call__(self, misalignment: np.ndarray) -> np.ndarray:
        """The tile sums for one misalignment."""
        rotation, shift, scale = (float(v) for v in misalignment)
        shown = self.shown
        if rotation or shift or scale:
            m, s = self.model, self.model.side
            moved = self.model.moved(self.drawn, rotation, shift, scale)
            # every picture's tile places at once, as IncoherentModel.tiles takes one picture's
            slots = moved.reshape(len(moved), m.rows, s, m.grid, s).transpose(2, 3).reshape(len(moved), -1, s * s)
            shown = slots[:, m.places[:shown.shape[1]]]
        return (shown @ self.inputs).transpose(1, 2).numpy()


def predict(model: Any, shown: torch.Tensor, inputs: torch.Tensor,
            misalignment: np.ndarray) -> np.ndarray:
    """Tile sums (pictures, images, tiles) of ``shown`` through ``inputs`` for one misalignment."""
    return Prediction(model, shown, inputs)(misalignment)


def _gain_offset(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The camera's counts ≈ gain · sums + offset, solved in closed form: (coefficients, fit)."""
    design = np.stack([sums.ravel(), np.ones(sums.size)], axis=1)
    coef = np.linalg.lstsq(design, counts.ravel(), rcond=None)[0]
    return coef, (design @ coef).reshape(counts.shape)


def _fit(model: Any, shown: torch.Tensor, inputs: torch.Tensor, counts: np.ndarray,
         start: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]):
    """Least squares of (rotation_deg, shift_px, scale − 1) with gain and offset projected out."""
    units = np.array([1.0, 1.0, 0.01])  # scale in per cent: every parameter of order one

    sums_of = Prediction(model, shown, inputs)

    def residual(q: np.ndarray) -> np.ndarray:
        sums = sums_of(q * units)
        return (_gain_offset(sums, counts)[1] - counts).ravel()

    def jacobian(q: np.ndarray) -> np.ndarray:
        # central differences of a fixed size: steps relative to q vanish near the aligned
        # position, and the bilinear resampling has kinks finer steps would straddle unevenly
        step = 1e-4
        return np.stack([(residual(q + step * e) - residual(q - step * e)) / (2 * step)
                         for e in np.eye(len(q))], axis=1)

    found = least_squares(residual, start / units, jac=jacobian, bounds=(bounds[0] / units, bounds[1] / units),
                          x_scale=1.0, xtol=1e-10, ftol=1e-10, gtol=1e-10, max_nfev=MAX_STEPS)
    return found.x * units, found.jac / units, found


def _check_layer(rig: Rig, system: System, i: int, layer: Any) -> None:
    """ConfigError at the layer's field unless its instruments are open on ``rig`` and its
    twin models a picture read against a reference tile."""
    where = f"system.layers.{i}"
    if not getattr(layer_model(layer), "reference", False):
        raise ConfigError(system.path, f"{where}.twin", "registration fits a picture of tiles read against "
                          "a reference tile; this layer's twin has none (paper_system4 is arithmetic, "
                          "with nothing to register)")
    for role, kind in (("weights", InputModulator), ("inputs", InputModulator), ("camera", Camera)):
        name = getattr(layer, role)
        dev = rig.instruments.get(name)
        if dev is None:
            raise ConfigError(system.path, f"{where}.{role}", f"no instrument {name!r} open on the rig "
                              f"{rig.path} (registration measures through the open rig)")
        if not isinstance(dev, kind):
            raise ConfigError(system.path, f"{where}.{role}", f"{name!r} on the rig {rig.path} must be "
                              f"a {kind.kind}, it is a {dev.kind}")
    for j, knob in enumerate(layer.alignment):
        if not isinstance(rig.instruments.get(knob.positioner), Positioner):
            raise ConfigError(system.path, f"{where}.alignment.{j}.positioner",
                              f"no positioner {knob.positioner!r} open on the rig {rig.path}")


class _Layer:
    """One layer's measurement: the pictures shown, the images read, the camera's counts."""

    def __init__(self, rig: Rig, layer: Any) -> None:
        self.rig, self.layer = rig, layer
        self.model = layer_model(layer)
        self.shown, self.images = pictures(self.model), images(self.model.side)
        self.full_scale = 2 ** rig.instruments[layer.camera].bit_depth - 1
        self.level, self.queries, self.saturated = 1.0, 0, False
        self.seconds = 0.0  # at the rig: loading and acquiring, not fitting

    def _show(self, transmission: torch.Tensor) -> np.ndarray:
        """Counts (images, frames, tiles) of one weight picture, the inputs already loaded."""
        start = time.perf_counter()
        self.rig.load_inputs(self.layer.weights, transmission.reshape(1, -1).numpy())
        shot = self.rig.acquire(self.layer.camera, len(self.images) * FRAMES)
        self.seconds += time.perf_counter() - start
        self.queries += 1
        self.saturated = bool(shot.saturated.any())
        return shot.signal[:, 0].reshape(len(self.images), FRAMES, -1)

    def _load_images(self) -> None:
        batch = (self.images * self.level).repeat_interleave(FRAMES, dim=0)
        self.rig.load_inputs(self.layer.inputs, batch.numpy())

    def measure(self) -> tuple[np.ndarray | None, str | None]:
        """Counts (pictures, images, frames, tiles), or None and why not."""
        uniform = self.shown[PICTURES.index("uniform")]
        for _ in range(HALVINGS + 1):
            self._load_images()
            first = self._show(uniform)
            if not self.saturated:
                break
            self.level /= 2
        else:
            return None, (f"{self.layer.camera} saturates with the image display at "
                          f"{self.level * 2:.2g} of full brightness: lower the light on the tiles")
        counts = []
        for name, shown in zip(PICTURES, self.shown, strict=True):
            counts.append(first if name == "uniform" else self._show(shown))
            if self.saturated:
                return None, f"{self.layer.camera} saturated showing the {name} picture"
        counts = np.stack(counts)
        light = float(np.median(counts[1, 0].mean(0) - counts[0, 0].mean(0)))
        if light < DIMMEST * self.full_scale:
            return None, (f"{self.layer.camera} reads {light:.3g} counts from a bright tile over a dark "
                          f"one, under {DIMMEST:.0%} of its full scale: is the light on?")
        return counts, None


def _knob_positions(rig: Rig, layer: Any) -> dict[str, tuple[str, float]]:
    """Where the layer's knobs stand (positioner: (axis, position)); the twin adds them itself."""
    return {k.positioner: (k.axis, float(rig.instruments[k.positioner].position()))
            for k in layer.alignment}


def _register(model: Any, shown: torch.Tensor, inputs: torch.Tensor,
              counts: np.ndarray) -> dict:
    """Fit one layer's counts (pictures, images, frames, tiles): values, stds and diagnostics."""
    geometry = _Geometry(model)
    mean = counts.mean(2)
    frames = counts.shape[2]
    # noise of a mean over frames: their spread, but never below the ADC's own step
    spread = float(np.sqrt(counts.var(2, ddof=1).mean())) if frames > 1 else 0.0
    noise = max(spread / math.sqrt(frames), 1 / math.sqrt(12))
    half_picture = max(geometry.height, geometry.width) / 2
    bounds = (np.array([-45.0, -half_picture, -0.5]), np.array([45.0, half_picture, 0.5]))
    bright = float(np.median(mean[1, 0] - mean[0, 0]))

    def poor(found) -> bool:
        rss = 2 * found.cost
        return (rss / max(found.fun.size - 5, 1) > POOR_CHI2 * noise**2
                and math.sqrt(rss / found.fun.size) > POOR_RESIDUAL * bright)

    def attempt(start: np.ndarray):
        coarse = _fit(model, shown[:COARSE], inputs, mean[:COARSE], start, bounds)[0]
        return _fit(model, shown, inputs, mean, coarse, bounds)

    fitted, jac, found = attempt(np.zeros(3))
    if poor(found):
        # a false minimum near the aligned picture, or a model that misses: start again
        # around it and keep the best (the problems report a model that still misses)
        starts = itertools.product((-5.0, 0.0, 5.0), (-half_picture / 2, 0.0, half_picture / 2), (-0.1, 0.0, 0.1))
        fitted, jac, found = min([(fitted, jac, found), *(attempt(np.array(s)) for s in starts)],
                                 key=lambda t: t[2].cost)
    sums = predict(model, shown, inputs, fitted)
    (gain, offset), predicted = _gain_offset(sums, mean)
    rss = float(np.sum((predicted - mean) ** 2))
    dof = max(mean.size - 5, 1)  # three misalignments, gain and offset
    try:
        cov = np.linalg.inv(jac.T @ jac) * rss / dof
        std = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        std = np.full(3, np.inf)
    return {"fitted": fitted, "std": std, "measured": mean, "predicted": predicted,
            "gain_offset": np.array([gain, offset]), "noise": noise,
            "residual": math.sqrt(rss / mean.size) / bright, "chi2": rss / dof / noise**2,
            "converged": bool(found.success), "levers": geometry.levers(),
            "corner_px": geometry.corner_px, "poor": poor(found),
            "at_bound": bool(np.any(np.isclose(fitted, bounds[0]) | np.isclose(fitted, bounds[1])))}


def _problems(name: str, fit: dict) -> list[str]:
    """What makes a layer's registration untrustworthy, one line each."""
    found = []
    for axis, std, lever in zip(NAMED, fit["std"], fit["levers"], strict=True):
        if not (math.isfinite(std) and std * lever <= IDENTIFIED_PX):
            found.append(f"{name}: {axis} not identified: ±{std:.3g} {NAMED[axis]} moves the picture's "
                         f"corner by ±{std * lever:.3g} px (more than {IDENTIFIED_PX:g})")
    if fit["poor"]:
        found.append(f"{name}: the affine model leaves residuals of {fit['residual']:.2%} of a bright "
                     f"tile, {math.sqrt(fit['chi2']):.3g} times the camera's noise: the display or "
                     "the optics move the picture in another way")
    if not fit["converged"]:
        found.append(f"{name}: the fit did not converge")
    if fit["at_bound"]:
        found.append(f"{name}: the fit stopped at the edge of its search (±45°, ±half the picture, "
                     "±50 % of scale): the picture is not where the model can find it")
    return found


def calibrate_registration(rig: Rig, system: System, progress: bool = False) -> StepResult:
    """Measure each free-space layer's display misalignment (rotation, shift, scale) through ``rig``."""
    if system.spec.type != "incoherent_freespace":
        raise ConfigError(system.path, "system.type", "registration calibrates an incoherent_freespace "
                          f"system's weight displays, got {system.spec.type!r}")
    for i, layer in enumerate(system.spec.layers):
        _check_layer(rig, system, i, layer)
    system.check_open(rig)  # channel counts and pixels against each layer's size
    summary: dict = {"pictures": list(PICTURES), "images": list(IMAGES), "frames": FRAMES}
    arrays: dict[str, np.ndarray] = {}
    problems: list[str] = []
    fits: dict[str, dict] = {}
    queries, seconds = 0, 0.0
    for layer in system.spec.layers:
        run = _Layer(rig, layer)
        try:
            counts, why = run.measure()
        finally:  # dark, as the rig leaves a modulator
            for name in (layer.weights, layer.inputs):
                rig.load_inputs(name, np.zeros((1, rig.instruments[name].channels)))
        queries, seconds = queries + run.queries, seconds + run.seconds
        if counts is None:
            problems.append(f"{layer.name}: {why}")
            summary[layer.name] = {"measured": False, "queries": run.queries, "problem": why}
            continue
        fit = _register(run.model, run.shown, run.images * run.level, counts)
        knobs = _knob_positions(rig, layer)
        at = np.array([sum(p for axis, p in knobs.values() if axis == a) for a in NAMED])
        fit["fitted"] = fit["fitted"] - at  # the misalignment with the knobs at 0
        aligned = bool(np.all(np.abs(fit["fitted"]) * fit["levers"] <= RESOLUTION_PX))
        fit["aligned"] = aligned
        layer_problems = _problems(layer.name, fit)
        problems += layer_problems
        fits[layer.name] = fit
        values = [*fit["fitted"][:2], 1.0 + fit["fitted"][2]]
        summary[layer.name] = {
            "measured": True, **{axis: {"value": float(v), "std": float(s)}
               for axis, v, s in zip(NAMED, values, fit["std"], strict=True)},
            "aligned": aligned, "residual": float(fit["residual"]), "chi2": float(fit["chi2"]),
            "corner_px": float(fit["corner_px"]), "input_level": float(run.level),
            "knobs": {k: float(p) for k, (_, p) in knobs.items()}, "queries": run.queries}
        p = f"{layer.name}."
        arrays.update({
            # what the twin adds to its knobs: none where the fit cannot tell from aligned
            p + "misalignment": np.zeros(3) if aligned else fit["fitted"].copy(),
            p + "fitted": fit["fitted"], p + "std": fit["std"],
            p + "measured": fit["measured"], p + "predicted": fit["predicted"],
            p + "gain_offset": fit["gain_offset"],
            p + "geometry": np.array([run.model.side, run.model.outputs])})
        if progress:
            s = summary[layer.name]
            print(f"registration {layer.name}: rotation {s['rotation_deg']['value']:+.4f} ± "
                  f"{s['rotation_deg']['std']:.2g} deg, shift {s['shift_px']['value']:+.4f} ± "
                  f"{s['shift_px']['std']:.2g} px, scale {s['scale']['value']:.5f} ± "
                  f"{s['scale']['std']:.2g}{' (aligned)' if aligned else ''}; "
                  f"{len(layer_problems)} problem(s)", file=sys.stderr, flush=True)
    return StepResult(KIND, summary, arrays, queries=queries, rig_seconds=seconds,
                      problems=problems, plot=lambda out: _plot(out, system.spec.layers, fits))


def _outline(height: int, width: int, misalignment: np.ndarray, exaggerate: float) -> np.ndarray:
    """Corners (5, 2) as (col, row) of the picture moved by a misalignment, enlarged by ``exaggerate``."""
    rotation, shift, scale = misalignment * exaggerate
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]]) * [width / 2, height / 2]
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    x, y = corners[:, 0], corners[:, 1]  # rows grow downwards: anticlockwise as displayed
    moved = np.stack([x * c + y * s, -x * s + y * c], axis=1) * (1 + scale)
    return moved + [width / 2, height / 2 + shift]


def _plot(out: Path, layers: list[Any], fits: dict[str, dict]) -> None:
    """Measured against predicted tile counts, and the fitted picture over the nominal one."""
    from matplotlib.figure import Figure

    rows = max(len(fits), 1)
    fig = Figure(figsize=(10, 4 * rows))
    if not fits:
        fig.text(0.5, 0.5, "no layer was measured", ha="center")
    for r, (name, fit) in enumerate(fits.items()):
        scatter, frame = fig.add_subplot(rows, 2, 2 * r + 1), fig.add_subplot(rows, 2, 2 * r + 2)
        for p, picture in enumerate(PICTURES):
            scatter.plot(fit["predicted"][p].ravel(), fit["measured"][p].ravel(), ".", ms=3, label=picture)
        top = float(fit["measured"].max())
        scatter.plot([0, top], [0, top], "k-", lw=0.5)
        scatter.set(xlabel="predicted counts", ylabel="measured counts",
                    title=f"{name}: residual {fit['residual']:.2%} of a bright tile")
        scatter.legend(fontsize=7)
        layer = next(spec for spec in layers if spec.name == name)
        model = layer_model(layer)
        height, width = model.rows * model.side, model.grid * model.side
        moved = float(np.max(np.abs(fit["fitted"]) * fit["levers"]))
        # a misalignment of a pixel or less shows only enlarged; an aligned one not at all
        exaggerate = 1.0 if fit["aligned"] else max(1.0, 0.05 * max(height, width) / moved)
        nominal, fitted = _outline(height, width, np.zeros(3), 1.0), _outline(height, width, fit["fitted"],
                                                                              exaggerate)
        frame.plot(nominal[:, 0], nominal[:, 1], "k--", label="nominal")
        frame.plot(fitted[:, 0], fitted[:, 1], "r-", label="fitted")
        frame.set(xlabel="column (px)", ylabel="row (px)", aspect="equal",
                  title=f"{name}: picture outline, " + ("aligned" if fit["aligned"] else
                                                         f"moves ×{exaggerate:.3g}"))
        frame.invert_yaxis()
        frame.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
