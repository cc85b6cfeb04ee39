"""Camera calibration of a camera-read system (the D2NN): dark frame, flat field, the
camera's registration to the optical grid, and detector regions where each class's light
lands.

Everything is measured through the rig (``Rig.load_inputs``, ``Rig.show_phase``,
``Rig.acquire``) and compared with the layer's twin evaluated on the optical grid, never
with the bench's internals. Coordinates are (row, col) pixels; the registration maps a
point q of the optical grid to p = L (q − c) + c + shift on the sensor, c the centre of the
sensor, L = scale·[[cos θ, −sin θ], [sin θ, cos θ]] (θ anticlockwise as displayed). The
2x3 ``affine`` stored is [L | c − L c + shift].
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import ndimage

from satlab import registry
from satlab.calibration.store import StepResult
from satlab.camera_readout import square_regions
from satlab.instruments import Camera, PhaseModulator, Roi
from satlab.rig import RigError
from satlab.validation import ConfigError

if TYPE_CHECKING:
    from satlab.rig import Rig
    from satlab.systems.protocol import System

DARK_FRAMES = 32
SPOT_FRAMES = 8
FLAT_PATTERNS = 16
FLAT_FRAMES = 4
DESIGN_STEPS = 60
SPOT_WIDTH_PX = 1.5  # the centroid's Gaussian window (σ): about a spot's core
FLAT_MAX_STD = 0.03  # a pixel's flat is kept where its relative uncertainty is below this
FLAT_MAX_EXPOSURE_GAIN = 32.0


@dataclass(frozen=True)
class RegistrationFit:
    """A least-squares similarity from the optical grid to the sensor."""

    affine: np.ndarray  # (2, 3): [L | c − L c + shift]
    rotation_deg: float
    scale: float
    shift_px: tuple[float, float]
    covariance: np.ndarray  # (4, 4) of (a, b, shift_row, shift_col), L = [[a, −b], [b, a]]
    residuals: np.ndarray  # (points, 2) measured − fitted, pixels

    @property
    def linear(self) -> np.ndarray:
        """L, the 2x2 part."""
        return self.affine[:, :2]

    def std(self) -> dict[str, Any]:
        """One-sigma uncertainties of rotation (deg), scale and shift (px)."""
        a, b = self.affine[0, 0], self.affine[1, 0]
        s2 = a * a + b * b
        jac_rot = np.array([-b / s2, a / s2, 0, 0])
        jac_scale = np.array([a, b, 0, 0]) / math.sqrt(s2)
        c = self.covariance
        return {"rotation_deg": math.degrees(math.sqrt(max(jac_rot @ c @ jac_rot, 0.0))),
                "scale": math.sqrt(max(jac_scale @ c @ jac_scale, 0.0)),
                "shift_px": [math.sqrt(max(c[2, 2], 0.0)), math.sqrt(max(c[3, 3], 0.0))]}

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Optical-grid points (n, 2) on the sensor."""
        return np.asarray(points, float) @ self.linear.T + self.affine[:, 2]


def affine_of(rotation_deg: float, shift_px: tuple[float, float], scale: float,
              shape: tuple[int, int]) -> np.ndarray:
    """The 2x3 affine of a registration (rotation about the sensor's centre, then shift)."""
    t = math.radians(rotation_deg)
    linear = scale * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    centre = (np.asarray(shape, float) - 1) / 2
    return np.column_stack([linear, centre - linear @ centre + np.asarray(shift_px, float)])


def registration_of(affine: np.ndarray, shape: tuple[int, int]) -> tuple[float, tuple[float, float], float]:
    """(rotation_deg, shift_px, scale) of a 2x3 affine on a sensor of ``shape`` (its
    similarity part: the mean of the two columns' rotations and scales)."""
    affine = np.asarray(affine, float)
    linear = affine[:, :2]
    a = (linear[0, 0] + linear[1, 1]) / 2
    b = (linear[1, 0] - linear[0, 1]) / 2
    centre = (np.asarray(shape, float) - 1) / 2
    shift = affine[:, 2] - centre + linear @ centre
    return math.degrees(math.atan2(b, a)), (float(shift[0]), float(shift[1])), math.hypot(a, b)


def fit_registration(intended: np.ndarray, measured: np.ndarray, shape: tuple[int, int]) -> RegistrationFit:
    """Least squares of a similarity (rotation, scale, shift) taking ``intended`` points on the
    optical grid to ``measured`` ones on the sensor (both (n, 2), n ≥ 2); the covariance from
    the residuals (none with n = 2)."""
    intended, measured = np.asarray(intended, float), np.asarray(measured, float)
    centre = (np.asarray(shape, float) - 1) / 2
    q, p = intended - centre, measured - centre
    design = np.zeros((2 * len(q), 4))
    design[0::2] = np.column_stack([q[:, 0], -q[:, 1], np.ones(len(q)), np.zeros(len(q))])
    design[1::2] = np.column_stack([q[:, 1], q[:, 0], np.zeros(len(q)), np.ones(len(q))])
    target = p.reshape(-1)
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    residuals = (target - design @ solution).reshape(-1, 2)
    dof = design.shape[0] - 4
    variance = float(residuals.ravel() @ residuals.ravel()) / dof if dof > 0 else 0.0
    covariance = variance * np.linalg.inv(design.T @ design)
    a, b, shift_r, shift_c = solution
    rotation = math.degrees(math.atan2(b, a))
    affine = affine_of(rotation, (shift_r, shift_c), math.hypot(a, b), shape)
    return RegistrationFit(affine, rotation, math.hypot(a, b), (float(shift_r), float(shift_c)),
                           covariance, residuals)


def spot_centroid(frame: np.ndarray, start: tuple[float, float], width: float = SPOT_WIDTH_PX,
                  iterations: int = 50) -> tuple[float, float] | None:
    """The spot's centre near ``start``: Gaussian-weighted centroids iterated to a fixed point
    (the peak of the frame smoothed at ``width``), so the same light moved, turned or scaled
    gives the same point moved; None if there is no light there."""
    rows, cols = frame.shape
    reach = math.ceil(4 * width)
    y, x = float(start[0]), float(start[1])
    for _ in range(iterations):
        r0, r1 = max(round(y) - reach, 0), min(round(y) + reach + 1, rows)
        c0, c1 = max(round(x) - reach, 0), min(round(x) + reach + 1, cols)
        if r0 >= r1 or c0 >= c1:
            return None
        yy, xx = np.mgrid[r0:r1, c0:c1]
        weights = np.clip(frame[r0:r1, c0:c1], 0, None) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2)
                                                                 / (2 * width**2))
        total = weights.sum()
        if total <= 0:
            return None
        ny, nx = float((weights * yy).sum() / total), float((weights * xx).sum() / total)
        if math.hypot(ny - y, nx - x) < 1e-5:
            return ny, nx
        y, x = ny, nx
    return y, x


def region_masks(centres: np.ndarray, size: int, linear: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean regions (n, H, W): the nominal ``size``-pixel squares as the registration's
    linear part shows them (turned, scaled), centred on ``centres`` (n, 2)."""
    inverse = np.linalg.inv(linear)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    out = np.zeros((len(centres), *shape), dtype=bool)
    for k, centre in enumerate(np.asarray(centres, float)):
        local = np.stack([yy - centre[0], xx - centre[1]], -1) @ inverse.T
        # strictly inside: a square of odd size centred on a pixel takes exactly size² pixels
        out[k] = (np.abs(local[..., 0]) < size / 2) & (np.abs(local[..., 1]) < size / 2)
    return out


def corrected_frames(counts: Any, dark: Any, flat: Any) -> Any:
    """Counts with the dark frame subtracted, divided by the flat field (numpy or torch)."""
    return (counts - dark) / flat


class _Session:
    """The rig's instruments for one layer, with the queries and rig time they cost."""

    def __init__(self, rig: Rig, layer: Any, progress: bool) -> None:
        self.rig, self.layer, self.progress = rig, layer, progress
        self.camera: Camera = rig.instruments[layer.camera]  # type: ignore[assignment]
        self.slms: list[PhaseModulator] = [rig.instruments[n] for n in layer.slms]  # type: ignore[misc]
        self.queries, self.seconds = 0, 0.0
        self.full_scale = 2**self.camera.bit_depth - 1
        self.pixels = layer.image**2

    def say(self, text: str) -> None:
        if self.progress:
            print(f"camera: {text}", file=sys.stderr, flush=True)

    def show(self, masks: np.ndarray) -> np.ndarray:
        """Show one mask per SLM; returns the phases the SLMs show (their LUT's levels)."""
        start = time.perf_counter()
        shown = []
        for name, slm, mask in zip(self.layer.slms, self.slms, masks, strict=True):
            gray = self.rig.show_phase(name, mask)
            shown.append(slm.lut.to_phase(gray))
        self.seconds += time.perf_counter() - start
        return np.stack(shown)

    def frames(self, level: float, frames: int) -> np.ndarray:
        """``frames`` frames (counts) of a uniform input at ``level`` (0: dark)."""
        start = time.perf_counter()
        self.rig.load_inputs(self.layer.inputs, np.full((frames, self.pixels), level))
        shot = self.rig.acquire(self.layer.camera, frames)
        self.seconds += time.perf_counter() - start
        self.queries += 1
        return shot.counts.astype(np.float64)

    def exposure(self, seconds: float) -> None:
        self.camera.set_exposure(seconds)


def _layer_of(rig: Rig, system: System) -> Any:
    """The system's camera-read layer, or a ConfigError naming what is missing."""
    spec = getattr(system, "spec", None)
    layer = getattr(spec, "layer", None)
    name = getattr(layer, "camera", None)
    if name is None:
        kind = getattr(spec, "type", None)
        raise ConfigError(rig.path, "system.layer.camera", "a camera calibration needs a camera-read system "
                          f"(d2nn) with a camera; this rig's system is {kind or 'missing'}")
    if not isinstance(rig.instruments.get(name), Camera):
        raise ConfigError(rig.path, "system.layer.camera", f"no camera named {name!r} is open on this rig")
    return layer


def _twin_of(rig: Rig, layer: Any) -> Any:
    """The layer's twin from the rig file's preset (never from an older calibration)."""
    twin = registry.lookup(layer.twin.driver)(**layer.twin.options)
    if not callable(getattr(twin, "light", None)):
        raise ConfigError(rig.path, "system.layer.twin", f"{layer.twin.driver} cannot predict the camera's "
                          "light (light(x, masks, registration=...)); a camera calibration needs it")
    return twin


_GRID = (0.0, (0.0, 0.0), 1.0)  # the optical grid itself: no registration


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the twin on one thread: its FFTs are small (128²), and beside another busy
    process a second thread's spinning made the spot design 30 times slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
_DESIGNED: dict[tuple, np.ndarray] = {}


def _predict(twin: Any, masks: np.ndarray, pixels: int) -> np.ndarray:
    """The twin's light (H, W) on the optical grid for a uniform input at level 1 and the
    masks shown."""
    x = torch.ones(1, pixels, dtype=torch.float64)
    with torch.no_grad(), _one_thread():
        return twin.light(x, torch.from_numpy(masks), registration=_GRID)[0].numpy()


def on_sensor(light: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Light on the optical grid as a sensor registered by ``affine`` sees it: bilinear, zero
    outside the grid (the twin's own resampling, ``optics.affine_resample``, to rounding)."""
    inverse = np.linalg.inv(affine[:, :2])
    return ndimage.affine_transform(light, inverse, offset=-inverse @ affine[:, 2], order=1,
                                    mode="grid-constant", cval=0.0)


def _design_spots(twin: Any, targets: np.ndarray, masks: int, shape: tuple[int, int],
                  pixels: int, window: float) -> np.ndarray:
    """For each target point, masks that send a uniform input's light there: optimised on the
    twin (optical grid), all classes at once. Returns phases (targets, masks, H, W)."""
    from torch.func import vmap

    yy, xx = torch.meshgrid(torch.arange(shape[0], dtype=torch.float32),
                            torch.arange(shape[1], dtype=torch.float32), indexing="ij")
    t = torch.from_numpy(targets).float()
    dy, dx = yy[None] - t[:, 0, None, None], xx[None] - t[:, 1, None, None]
    disc = ((dy**2 + dx**2) <= 2.0**2).float()
    box = ((dy.abs() <= window) & (dx.abs() <= window)).float()
    generator = torch.Generator().manual_seed(0)  # the same patterns every time: comparable calibrations
    phases = (0.5 * torch.rand(len(targets), masks, *shape, generator=generator)).requires_grad_(True)
    x = torch.ones(1, pixels, dtype=torch.float32)

    def light(p: torch.Tensor) -> torch.Tensor:
        return twin.light(x, p, registration=_GRID)[0]

    optimiser = torch.optim.Adam([phases], lr=0.1)
    for _ in range(DESIGN_STEPS):
        out = vmap(light)(phases)
        spot = (out * disc).sum((1, 2))
        # the light in the spot against all the light, and against its own window (clean spots)
        loss = -(torch.log(spot / out.sum((1, 2))) + torch.log(spot / (out * box).sum((1, 2)))).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return phases.detach().double().remainder(2 * math.pi).numpy()


def _flat_patterns(count: int, masks: int, shape: tuple[int, int]) -> np.ndarray:
    """Smooth random phases: speckle spread over the sensor, on features a few pixels wide so a
    small error of the registration moves the predicted light little."""
    rng = np.random.default_rng(1)
    raw = rng.uniform(0, 2 * math.pi, (count, masks, *shape))
    smooth = ndimage.gaussian_filter(raw, (0, 0, 2.0, 2.0), mode="wrap")
    smooth = (smooth - smooth.mean((-2, -1), keepdims=True)) / smooth.std((-2, -1), keepdims=True)
    return np.remainder(smooth * 1.5, 2 * math.pi)


def _local_peaks(image: np.ndarray, floor: float, margin: int) -> list[tuple[int, int]]:
    smooth = ndimage.gaussian_filter(image, 1.0)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=7)) & (smooth >= floor)
    peaks[:margin], peaks[-margin:], peaks[:, :margin], peaks[:, -margin:] = False, False, False, False
    return [tuple(p) for p in np.argwhere(peaks)]


@dataclass
class _FlatFrames:
    """The frames a flat field is fitted to: dark-subtracted means, their own noise (variance
    of the mean), where they are valid, the twin's light on the optical grid, each frame's
    input level times relative exposure, and which dark (of ``dark_var``: the variance of the
    mean dark frame, shared by every frame it was subtracted from) each frame lost."""

    measured: list[np.ndarray]
    variance: list[np.ndarray]
    valid: list[np.ndarray]
    light: list[np.ndarray]
    scales: list[float]
    dark: list[int]
    dark_var: list[np.ndarray]


def _gain_lsq(frames: _FlatFrames, predicted: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the gain g minimising Σ (m − g t)² over the frames where it is valid, and
    its variance from the frames' noise and their darks'."""
    num = np.zeros_like(frames.measured[0])
    den = np.zeros_like(num)
    noise = np.zeros_like(num)
    # a dark's error is common to every frame it was subtracted from: it adds as (Σ t)²
    dark_weight = [np.zeros_like(num) for _ in frames.dark_var]
    for m, v, ok, t, d in zip(frames.measured, frames.variance, frames.valid, predicted, frames.dark,
                              strict=True):
        t = np.where(ok, t, 0.0)
        num += m * t
        den += t * t
        noise += t * t * v
        dark_weight[d] += t
    noise += sum(w * w * v for w, v in zip(dark_weight, frames.dark_var, strict=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where(den > 0, num / den, np.nan)
        var = np.where(den > 0, noise / den**2, np.inf)
    return gain, var


def calibrate_camera(rig: Rig, system: System, progress: bool = False) -> StepResult:
    """Dark frame, flat field, registration to the optical grid and detector regions of the
    camera of a camera-read layer, measured through ``rig``.

    - Dark: the input dark, ``DARK_FRAMES`` frames averaged (at every exposure used).
    - Spots: for each class, masks optimised on the twin (on the optical grid) to send a
      uniform input's light into a small disc at the nominal detector's centre; each is
      shown and ``SPOT_FRAMES`` frames averaged, the input's level lowered until nothing
      saturates. A spot's centre is the fixed point of Gaussian-weighted centroids on the
      dark-subtracted, flat-corrected frame; the twin's frame, through the same procedure,
      gives where it was meant to be. A class whose spot is not found above the noise, is
      saturated, or has a second spot in its window is reported and its region placed by
      the registration instead.
    - Registration: a least-squares similarity (rotation, scale, shift) from the intended to
      the measured points (each class's spot, plus every other bright peak of its frame,
      e.g. the zero order), its uncertainties from the residuals.
    - Flat field: the D2NN cannot light the sensor uniformly (a D2NN's output plane always
      holds its zero order), so the flat is the per-pixel least-squares ratio of measured
      frames to the twin's predicted light, through the measured registration, for smooth
      random masks (a longer exposure, saturated pixels left out) and the flat-mask frame.
      Limits: it is only measured where light falls (``flat_valid``; elsewhere 1); its
      large-scale shape is only as right as the twin's model of the optics (a mismatch of
      the optics reads as gain); its uncertainty (``flat_std``) includes the frames' noise
      and the registration's uncertainty carried through the prediction.
    - Regions: the nominal squares (rig file: ``detectors.size_px``), turned and scaled as
      the registration says, centred where each class's spot landed (corrected for where the
      twin's spot lies off the nominal centre).
    """
    layer = _layer_of(rig, system)
    twin = _twin_of(rig, layer)
    session = _Session(rig, layer, progress)
    camera = session.camera
    shape = tuple(camera.shape)
    camera.set_roi(Roi(0, 0, *shape))
    exposure = float(layer.exposure_s)
    session.exposure(exposure)
    for knob in getattr(layer, "alignment", []):  # the aligned bench
        rig.move(knob.positioner, 0.0)
    masks = len(layer.slms)
    pixels = session.pixels
    flat_masks = np.zeros((masks, *shape))
    problems: list[str] = []

    # -- dark ---------------------------------------------------------------------------
    session.show(flat_masks)
    darks = session.frames(0.0, DARK_FRAMES)
    dark = darks.mean(0)
    # a reading's rounding to a count is noise too, even on a camera without read noise
    dark_noise = np.maximum(darks.std(0, ddof=1), math.sqrt(1 / 12))
    session.say(f"dark {dark.mean():.2f} counts, fixed pattern {dark.std():.2f}, "
                f"noise {np.median(dark_noise):.2f}")

    # -- spots ----------------------------------------------------------------------------
    nominal_regions = square_regions(shape, layer.detectors.size_px, tuple(layer.detectors.layout),
                                     layer.detectors.spacing_px).numpy()
    nominal = np.array([np.argwhere(r).mean(0) for r in nominal_regions])
    classes = len(nominal)
    spacing = float(layer.detectors.spacing_px)
    session.say(f"designing {classes} spot patterns on the twin")
    # the same twin and detectors give the same patterns: designed once per process
    key = (layer.twin.driver, repr(sorted(layer.twin.options.items())), masks, shape, pixels,
           nominal.tobytes(), spacing, DESIGN_STEPS)
    if key not in _DESIGNED:
        with _one_thread():
            _DESIGNED[key] = _design_spots(twin, nominal, masks, shape, pixels, spacing / 2)
    designed = _DESIGNED[key]
    level = 1.0
    shown_masks, spot_mean, spot_ok, spot_level = [], [], [], []
    for k in range(classes + 1):  # the classes' spots, then the flat masks (the zero order alone)
        shown = session.show(designed[k] if k < classes else flat_masks)
        while True:
            counts = session.frames(level, SPOT_FRAMES)
            if counts.max() < session.full_scale or level < 1e-3:
                break
            level /= 4  # the output is linear in the input's intensity (the threshold too)
        if counts.max() >= session.full_scale:
            problems.append(f"class {k}: saturated even at input level {level:.2g}" if k < classes
                            else f"zero order: saturated even at input level {level:.2g}")
        shown_masks.append(shown)
        spot_mean.append(counts.mean(0) - dark)
        spot_ok.append(counts.max(0) < session.full_scale)
        spot_level.append(level)
    intended_light = [_predict(twin, m, pixels) for m in shown_masks]

    # -- flat-field frames (a longer exposure: the outer sensor gets little light) ----------
    patterns = _flat_patterns(FLAT_PATTERNS, masks, shape)
    session.show(patterns[0])
    probe = session.frames(1.0, 1)[0] - dark
    gain = float(np.clip(0.2 * session.full_scale / max(np.percentile(probe, 75), 1e-9),
                         1.0, FLAT_MAX_EXPOSURE_GAIN))
    flat_exposure = exposure * gain
    session.exposure(flat_exposure)
    flat_darks = session.frames(0.0, DARK_FRAMES)
    flat_dark = flat_darks.mean(0)
    flat_dark_var = np.maximum(flat_darks.var(0, ddof=1), 1 / 12)
    flat_shown, flat_mean, flat_spread, flat_ok = [], [], [], []
    for pattern in patterns:
        flat_shown.append(session.show(pattern))
        counts = session.frames(1.0, FLAT_FRAMES)
        flat_mean.append(counts.mean(0) - flat_dark)
        flat_spread.append(counts.var(0, ddof=1))
        flat_ok.append(counts.max(0) < session.full_scale)
    session.exposure(exposure)
    session.show(flat_masks)  # leave the bench as the readout expects it: flat masks, the input dark
    rig.load_inputs(layer.inputs, np.zeros((1, pixels)))
    session.say(f"flat field: {FLAT_PATTERNS} patterns at {flat_exposure:g} s")
    # the noise of a frame from the photon transfer: variance = dark variance + K·signal, K
    # (counts per electron) fitted over every lit, unsaturated pixel; a few frames' own
    # spread would be a poor weight
    lit = [ok & (m > 0) for m, ok in zip(flat_mean, flat_ok, strict=True)]
    signal = np.concatenate([m[ok] for m, ok in zip(flat_mean, lit, strict=True)])
    excess = np.concatenate([(v - flat_dark_var)[ok] for v, ok in zip(flat_spread, lit, strict=True)])
    per_electron = max(float(signal @ excess / (signal @ signal)), 0.0) if signal.size else 0.0
    spot_var = [(dark_noise**2 + per_electron * np.clip(m, 0, None)) / SPOT_FRAMES for m in spot_mean]
    flat_var = [(flat_dark_var + per_electron * np.clip(m, 0, None)) / FLAT_FRAMES for m in flat_mean]
    # the flat's frames: the zero order at the readout's exposure, then the random patterns
    flat_frames = _FlatFrames([spot_mean[-1], *flat_mean], [spot_var[-1], *flat_var],
                              [spot_ok[-1], *flat_ok],
                              [intended_light[-1]] + [_predict(twin, m, pixels) for m in flat_shown],
                              [spot_level[-1]] + [flat_exposure / exposure] * len(patterns),
                              [0] + [1] * len(patterns),
                              [dark_noise**2 / DARK_FRAMES, flat_dark_var / DARK_FRAMES])

    # -- registration and flat, alternately (the centroids want the flat, the flat the registration)
    fit, *_ = _register(spot_mean, spot_var, np.ones(shape), intended_light, nominal, spacing, shape,
                        classes, problems=None)
    flat, flat_std = _flat_field(fit, flat_frames)
    fit, points, found, centroids, intended = _register(
        spot_mean, spot_var, flat, intended_light, nominal, spacing, shape, classes, problems=problems)
    flat, flat_std = _flat_field(fit, flat_frames)
    valid = np.isfinite(flat_std) & (flat_std < FLAT_MAX_STD)
    spread = float(flat[valid].std()) if valid.any() else 0.0
    # where no light fell the gain is not known: 1, uncertain by the spread seen elsewhere
    flat = np.where(valid, flat, 1.0)
    flat_std = np.where(valid, flat_std, spread)

    # -- regions ---------------------------------------------------------------------------
    predicted = fit.apply(nominal)
    # where the twin's own spot lies off the nominal centre, the region does not follow it
    centres = np.where(found[:, None], centroids + (nominal - intended) @ fit.linear.T, predicted)
    regions = region_masks(centres, layer.detectors.size_px, fit.linear, shape)
    expected = round((layer.detectors.size_px * fit.scale) ** 2)
    for k in range(classes):
        if regions[k].sum() < 0.8 * expected:
            problems.append(f"class {k}: region at ({centres[k][0]:.1f}, {centres[k][1]:.1f}) leaves "
                            "the sensor")
    for k in range(classes):
        unknown = int((regions[k] & ~valid).sum())
        if unknown:
            problems.append(f"class {k}: the flat field is not known on {unknown} of its region's "
                            f"{int(regions[k].sum())} pixels (too little light there)")
    off = np.hypot(*(centres - predicted).T)
    for k in np.flatnonzero(found & (off > 1.0)):
        problems.append(f"class {k}: spot {off[k]:.2f} px off the registration fit")

    std = fit.std()
    rms = float(np.sqrt((fit.residuals**2).sum(1).mean()))
    summary = {
        "layer": layer.name, "camera": layer.camera, "exposure_s": exposure,
        "dark": {"level_counts": round(float(dark.mean()), 4),
                 "fixed_pattern_std_counts": round(float(dark.std()), 4),
                 "temporal_noise_counts": round(float(np.median(dark_noise)), 4), "frames": DARK_FRAMES},
        "counts_per_electron": round(per_electron, 5),
        "flat": {"spread": round(spread, 5) if valid.any() else None,
                 "valid_fraction": round(float(valid.mean()), 4),
                 "median_std": round(float(np.median(flat_std[valid])), 5) if valid.any() else None,
                 "exposure_s": flat_exposure, "patterns": FLAT_PATTERNS + 1},
        "registration": {"rotation_deg": round(fit.rotation_deg, 5),
                         "rotation_deg_std": round(std["rotation_deg"], 5),
                         "scale": round(fit.scale, 6), "scale_std": round(std["scale"], 6),
                         "shift_px": [round(v, 4) for v in fit.shift_px],
                         "shift_px_std": [round(v, 4) for v in std["shift_px"]],
                         "residual_rms_px": round(rms, 4),
                         "residual_max_px": round(float(np.hypot(*fit.residuals.T).max()), 4),
                         "points": len(points[0])},
        "regions": {"size_px": layer.detectors.size_px,
                    "centres": [[round(float(r), 3), round(float(c), 3)] for r, c in centres],
                    "placed_by": ["centroid" if f else "registration" for f in found]},
        "input_level": spot_level[:classes],
        "queries": session.queries,
    }
    arrays = {
        "dark": dark, "dark_noise": dark_noise, "flat": flat, "flat_std": flat_std, "flat_valid": valid,
        "regions": regions, "centres": centres, "centroids": np.where(found[:, None], centroids, predicted),
        "found": found, "intended": intended, "nominal": nominal, "affine": fit.affine,
        "affine_covariance": fit.covariance, "points_intended": points[0], "points_measured": points[1],
        "residuals": fit.residuals, "spots": np.stack(spot_mean[:classes]).astype(np.float32),
    }
    session.say(f"rotation {fit.rotation_deg:.3f}° ± {std['rotation_deg']:.3f}, scale {fit.scale:.4f}, "
                f"shift ({fit.shift_px[0]:.2f}, {fit.shift_px[1]:.2f}) px, residual {rms:.3f} px")

    def plot(path: Path) -> None:
        _plot(path, arrays, fit)

    return StepResult("camera", summary, arrays, queries=session.queries, rig_seconds=session.seconds,
                      problems=problems, plot=plot)


def _merged(meant: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One point per feature: the same peak seen in several frames (the zero order is in
    every one) is averaged, so a feature counts once and its centroid's bias, common to every
    frame, shows in the residuals instead of hiding behind repeats."""
    groups: list[list[int]] = []
    for i, point in enumerate(meant):
        for group in groups:
            if np.hypot(*(meant[group[0]] - point)) < 1.0:
                group.append(i)
                break
        else:
            groups.append([i])
    return (np.array([meant[g].mean(0) for g in groups]), np.array([seen[g].mean(0) for g in groups]))


def _inside(point: Any, shape: tuple[int, int]) -> bool:
    """Whether a spot centred at ``point`` lies whole on the sensor (its centroid's window)."""
    margin = 3 * SPOT_WIDTH_PX
    return all(margin <= v <= n - 1 - margin for v, n in zip(point, shape, strict=True))


def _register(spot_mean: list[np.ndarray], spot_var: list[np.ndarray], flat: np.ndarray,
              intended_light: list[np.ndarray], nominal: np.ndarray, spacing: float,
              shape: tuple[int, int], classes: int, problems: list[str] | None
              ) -> tuple[RegistrationFit, tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Centroids of every class's spot (and of the other bright peaks), the registration fitted
    to them. ``problems``, if given, collects what went wrong by class."""
    frames = [m / flat for m in spot_mean]
    noise = [np.sqrt(v) / flat for v in spot_var]
    # a first shift from the zero order (the last frame: flat masks), so the search windows
    # follow a sensor that sits a few pixels off: the whole frame against the twin's, since
    # after the thresholds the zero order is a pattern, not one spot
    seen, meant = frames[-1] - frames[-1].mean(), intended_light[-1] - intended_light[-1].mean()
    correlation = np.fft.ifft2(np.fft.fft2(seen) * np.conj(np.fft.fft2(meant))).real
    peak = np.array(np.unravel_index(np.argmax(correlation), shape))
    offset = np.where(peak > np.array(shape) // 2, peak - np.array(shape), peak).astype(float)
    radius = min(spacing / 2, 10.0)
    found = np.zeros(classes, dtype=bool)
    centroids = np.zeros((classes, 2))
    intended = nominal.copy()
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    for k in range(classes):
        meant = spot_centroid(intended_light[k], nominal[k])
        if meant is None:
            if problems is not None:
                problems.append(f"class {k}: the twin puts no light at its detector; region placed by "
                                "the registration")
            continue
        intended[k] = meant
        guess = np.asarray(meant) + offset
        window = np.hypot(yy - guess[0], xx - guess[1]) <= radius
        if window.sum() < 9:
            if problems is not None:
                problems.append(f"class {k}: its spot would land off the sensor, near ({guess[0]:.1f}, "
                                f"{guess[1]:.1f}); region placed by the registration")
            continue
        smooth = ndimage.gaussian_filter(frames[k], 1.0)
        masked = np.where(window, smooth, -np.inf)
        peak = np.unravel_index(np.argmax(masked), shape)
        level_noise = float(np.median(noise[k][window]))
        background = float(np.median(smooth[window]))
        if smooth[peak] - background < 10 * level_noise:
            if problems is not None:
                problems.append(f"class {k}: no spot above the noise near ({guess[0]:.1f}, {guess[1]:.1f}) "
                                f"(peak {smooth[peak] - background:.1f} counts, noise {level_noise:.1f}); "
                                "region placed by the registration")
            continue
        others = [p for p in _local_peaks(np.where(window, frames[k], 0.0), 0.5 * smooth[peak], 1)
                  if math.hypot(p[0] - peak[0], p[1] - peak[1]) > 4]
        if others:
            if problems is not None:
                problems.append(f"class {k}: ambiguous, {len(others) + 1} spots in its window "
                                f"(at {[tuple(map(int, peak))] + [tuple(map(int, p)) for p in others]}); "
                                "region placed by the registration")
            continue
        seen = spot_centroid(frames[k], peak)
        if seen is None or not _inside(seen, shape):
            if problems is not None:
                where = f"at ({seen[0]:.1f}, {seen[1]:.1f}) " if seen is not None else ""
                problems.append(f"class {k}: its spot {where}is cut by the sensor's edge; region placed "
                                "by the registration")
            continue
        found[k], centroids[k] = True, seen
    if found.sum() < 2:
        raise RigError(f"camera calibration found {int(found.sum())} of {classes} spots: too few to "
                           "register the camera (is the light path open, the exposure long enough?)")
    first = fit_registration(intended[found], centroids[found], shape)
    # a spot the others' registration misses by more than a pixel was another peak taken for
    # it: left out, worst first, while four remain
    while found.sum() > 3:
        distance = np.hypot(*first.residuals.T)
        if distance.max() <= 1.0:
            break
        k = int(np.flatnonzero(found)[np.argmax(distance)])
        found[k] = False
        if problems is not None:
            problems.append(f"class {k}: its spot lies {distance.max():.1f} px off the other spots' "
                            "registration; region placed by the registration")
        first = fit_registration(intended[found], centroids[found], shape)
    # every other bright peak of the frames (the zero order, mirror images) adds a point
    meant_pts, seen_pts = [intended[found]], [centroids[found]]
    for k, (light, frame) in enumerate(zip(intended_light, frames, strict=True)):
        for peak in _local_peaks(light, 0.25 * light.max(), 6):
            if k < classes and math.hypot(peak[0] - intended[k][0], peak[1] - intended[k][1]) < 4:
                continue  # the class's own spot, counted above
            meant = spot_centroid(light, peak)
            if meant is None:
                continue
            guess = first.apply(np.asarray(meant)[None])[0]
            if not _inside(guess, shape):
                continue
            seen = spot_centroid(frame, guess)
            if (seen is None or not _inside(seen, shape)
                    or math.hypot(seen[0] - guess[0], seen[1] - guess[1]) > 1.5):
                continue
            meant_pts.append(np.asarray(meant)[None])
            seen_pts.append(np.asarray(seen)[None])
    meant_all, seen_all = _merged(np.concatenate(meant_pts), np.concatenate(seen_pts))
    fit = fit_registration(meant_all, seen_all, shape)
    # leave out points far off the fit (a peak mistaken for another), once
    distance = np.hypot(*fit.residuals.T)
    rms = float(np.sqrt((distance**2).mean()))
    keep = distance <= max(0.5, 4 * rms)
    if not keep.all() and keep.sum() >= 3:
        meant_all, seen_all = meant_all[keep], seen_all[keep]
        fit = fit_registration(meant_all, seen_all, shape)
    return fit, (meant_all, seen_all), found, centroids, intended


def _flat_field(fit: RegistrationFit, frames: _FlatFrames) -> tuple[np.ndarray, np.ndarray]:
    """The flat (normalised to a median of 1 where it is known) and its one-sigma uncertainty,
    the registration's uncertainty carried through the prediction."""
    shape = frames.measured[0].shape

    def gains(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        predicted = [scale * on_sensor(light, affine) for light, scale in zip(frames.light, frames.scales,
                                                                               strict=True)]
        return _gain_lsq(frames, predicted)

    gain, var = gains(fit.affine)
    # the registration's uncertainty: derivatives in (a, b, shift_row, shift_col)
    steps = [1e-3, 1e-3, 0.05, 0.05]
    jacobian = []
    a, b = fit.affine[0, 0], fit.affine[1, 0]
    for i, step in enumerate(steps):
        params = np.array([a, b, *fit.shift_px])
        params[i] += step
        rotation = math.degrees(math.atan2(params[1], params[0]))
        moved = affine_of(rotation, (params[2], params[3]), math.hypot(params[0], params[1]),
                          shape)
        jacobian.append((gains(moved)[0] - gain) / step)
    jac = np.stack(jacobian, -1)
    reg_var = np.einsum("...i,ij,...j->...", np.nan_to_num(jac), fit.covariance, np.nan_to_num(jac))
    known = np.isfinite(gain) & np.isfinite(var)
    norm = float(np.median(gain[known])) if known.any() else 1.0
    flat = np.where(known, gain / norm, 1.0)
    std = np.where(known, np.sqrt(var + reg_var) / abs(norm), np.inf)
    return flat, std


def _plot(path: Path, arrays: dict[str, np.ndarray], fit: RegistrationFit) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    spots = arrays["spots"].sum(0)
    axes[0].imshow(np.log10(np.clip(spots, 1, None)), cmap="gray")
    for k, region in enumerate(arrays["regions"]):
        axes[0].contour(region, levels=[0.5], colors="tab:orange", linewidths=0.8)
        r, c = arrays["centres"][k]
        axes[0].text(c, r, str(k), color="tab:orange", ha="center", va="center", fontsize=8)
    axes[0].set_title("spot frames (log counts) and detector regions")
    meant, seen = arrays["points_intended"], arrays["points_measured"]
    fitted = fit.apply(meant)
    axes[1].scatter(meant[:, 1], meant[:, 0], marker="o", facecolors="none", edgecolors="tab:blue",
                    label="intended (optical grid)")
    axes[1].scatter(seen[:, 1], seen[:, 0], marker="x", color="tab:red", label="measured")
    exaggerate = 20
    axes[1].quiver(fitted[:, 1], fitted[:, 0], exaggerate * (seen - fitted)[:, 1],
                   exaggerate * (seen - fitted)[:, 0], angles="xy", scale_units="xy", scale=1,
                   color="tab:green", width=0.004, label=f"residual ×{exaggerate}")
    shape = arrays["flat"].shape
    axes[1].set_xlim(0, shape[1])
    axes[1].set_ylim(shape[0], 0)
    axes[1].set_aspect("equal")
    axes[1].legend(loc="lower right", fontsize=7)
    axes[1].set_title(f"registration: {fit.rotation_deg:.3f}°, ×{fit.scale:.4f}, "
                      f"shift ({fit.shift_px[0]:.2f}, {fit.shift_px[1]:.2f}) px")
    flat = np.where(arrays["flat_valid"], arrays["flat"], np.nan)
    image = axes[2].imshow(flat, cmap="viridis")
    fig.colorbar(image, ax=axes[2], fraction=0.046)
    axes[2].set_title(f"flat field ({arrays['flat_valid'].mean():.0%} of pixels measured)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
