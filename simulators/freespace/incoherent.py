"""An incoherent free-space layer (the SAT paper's System 4) and its simulated bench.

Each output neuron's weights are a tile on a weight display, side x side pixels like the
input image; the input image is fanned out onto every tile, each tile's light is summed
by a lens onto one camera pixel. Weights w in [-1, 1] are shown as transmissions
(w + 1)/2 and a reference tile at 1/2 measures the offset: the outputs are
sum_j w_ij x_j / sum_j x_j (``referenced_signals``). The tiles form one displayed
picture; misalignment is an affine transform (rotation, shift along the rows, scale) of
that picture about its centre, against the fanned-out input image: a tile's place then
shows parts of its neighbours, and light leaving the picture is lost.

The bench evaluates ``IncoherentModel`` with its imperfections, the twin the same model
without, read through the same camera: without noise they agree bit for bit. The preset
``paper_system4`` swaps in the SAT paper's own geometry (``tile_frames``: signed weights
and inputs, frames of tiles, nearest-neighbour misalignment) behind the same instruments.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from satlab.simulators.freespace import optics
from satlab.simulators.freespace.alignment import AlignmentAxes
from satlab.simulators.freespace.tile_frames import TileFrameModel
from satlab.simulators.seeded_noise import SeededNoise

from satlab.camera_readout import referenced_signals, shown_as_transmissions
from satlab.instruments import Camera, InputModulator, Roi
from satlab.validation import ConfigError, OptionError, require_count

if TYPE_CHECKING:
    from satlab.calibration.store import Calibration

# The free-space system's named imperfections (also the bench's alignment axes), their units
NAMED = {"rotation_deg": "deg", "shift_px": "px", "scale": "x"}

# physical: intensities through transmissions, a reference tile (IncoherentModel);
# paper_system4: the SAT paper's arithmetic (TileFrameModel) read by an ideal camera whose
# black level (half its range) carries the sign
PRESETS = ("physical", "paper_system4")
PAPER_CAMERA = {"electrons_per_unit": 1000.0, "full_well_e": 2.0**31, "bit_depth": 31,
                "black_level_e": 2.0**30}


class IncoherentModel:
    """Tile sums of one layer: inputs (B, side²), transmissions (out + 1, side²) in [0, 1].

    The display shows the tiles (the outputs' and the reference) as one picture on a grid
    ``grid`` tiles wide: the reference in the middle, the outputs row by row around it. A
    misaligned display moves the whole picture about its centre, so a rotation or a
    magnification moves outer tiles further than central ones, and light of one tile's
    weights can fall on its neighbour's place. Every output is read against the
    reference: at a corner, a rotation one way or a shrinking picture would take it off
    the picture, and no weights could make up for that.
    """

    reference = True  # the last tile: a reference at 1/2

    def __init__(self, side: int, outputs: int) -> None:
        self.side, self.outputs = side, outputs
        self.grid = math.ceil(math.sqrt(outputs + 1))  # tiles per row of the picture
        self.rows = math.ceil((outputs + 1) / self.grid)
        middle = self.rows // 2 * self.grid + self.grid // 2
        around = [slot for slot in range(self.rows * self.grid) if slot != middle]
        self.places = torch.tensor(around[:outputs] + [middle])  # each tile's slot, the reference last

    def picture(self, transmission: torch.Tensor) -> torch.Tensor:
        """The displayed picture (rows·side, grid·side) of transmissions (tiles, side²)."""
        s = self.side
        slots = transmission.new_zeros(self.rows * self.grid, s * s)  # empty slots dark
        slots = slots.index_copy(0, self.places[:len(transmission)].to(slots.device), transmission)
        tiled = slots.reshape(self.rows, self.grid, s, s).transpose(1, 2)
        return tiled.reshape(self.rows * s, self.grid * s)

    def tiles(self, picture: torch.Tensor, count: int) -> torch.Tensor:
        """What each of the first ``count`` tiles' places of a picture shows, (count, side²)."""
        s = self.side
        slots = picture.reshape(self.rows, s, self.grid, s).transpose(1, 2).reshape(-1, s * s)
        return slots[self.places[:count]]

    @staticmethod
    def moved(pictures: torch.Tensor, rotation_deg: float, shift_px: float, scale: float) -> torch.Tensor:
        """Pictures (..., H, W) rotated, shifted along the rows and magnified by 1 + ``scale``
        about their centre."""
        return optics.affine_resample(pictures, math.radians(rotation_deg), (shift_px, 0.0), 1.0 + scale)

    def tile_sums(self, x: torch.Tensor, transmission: torch.Tensor,
                  misalignment: dict[str, float] | None = None) -> torch.Tensor:
        """Light through each tile place (B, tiles) for transmissions (tiles, side²), the
        picture misaligned by named amounts (``NAMED``; scale as a change from 1)."""
        m = misalignment or {}
        rotation, shift, scale = m.get("rotation_deg", 0.0), m.get("shift_px", 0.0), m.get("scale", 0.0)
        if rotation or shift or scale:
            transmission = self.tiles(self.moved(self.picture(transmission), rotation, shift, scale),
                                      len(transmission))
        return x.reshape(len(x), -1) @ transmission.reshape(len(transmission), -1).T


class IncoherentCameraModel:
    """One camera pixel per tile: electrons per unit of light, full well, ADC, read noise, and
    a black level (electrons added to every pixel, so a signed sum stays readable)."""

    def __init__(self, electrons_per_unit: float = 50.0, full_well_e: float = 40_000.0,
                 bit_depth: int = 16, read_noise_e: float = 0.0, black_level_e: float = 0.0) -> None:
        self.electrons_per_unit, self.full_well_e = electrons_per_unit, full_well_e
        self.bit_depth, self.read_noise_e, self.black_level_e = bit_depth, read_noise_e, black_level_e

    def counts(self, sums: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Counts (B, 1, tiles) of the tile sums (B, tiles)."""
        light = sums[:, None, :] + self.black_level_e / self.electrons_per_unit
        return optics.camera_counts(light, 1, self.electrons_per_unit, self.full_well_e,
                                    self.bit_depth, self.read_noise_e,
                                    generator if self.read_noise_e > 0 else None)

    def sums(self, counts: torch.Tensor) -> torch.Tensor:
        """The tile sums counts stand for, the black level taken off."""
        electrons = counts * (self.full_well_e / (2**self.bit_depth - 1))
        return (electrons - self.black_level_e) / self.electrons_per_unit


def _check(side: int, outputs: int, camera: dict, preset: str = "physical",
           input_normalisation: list[float] | None = None) -> None:
    require_count("side", side, 2, highest=256)
    require_count("outputs", outputs, 1, highest=4096)
    if preset not in PRESETS:
        raise OptionError("preset", f"expected one of {', '.join(PRESETS)}, got {preset!r}")
    if preset == "paper_system4" and side > 30:
        raise OptionError("side", f"paper_system4's tiles hold up to 30x30 weights, got {side}")
    if input_normalisation is not None:
        if preset != "paper_system4":
            raise OptionError("input_normalisation", "signed inputs need preset paper_system4: light "
                              "is never negative")
        if not (isinstance(input_normalisation, (list, tuple)) and len(input_normalisation) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        for v in input_normalisation) and input_normalisation[1] > 0):
            raise OptionError("input_normalisation", f"expected [mean, std > 0], got {input_normalisation!r}")
    try:
        IncoherentCameraModel(**camera)
    except TypeError as exc:
        raise OptionError("camera", str(exc)) from None


def _model(side: int, outputs: int, preset: str, input_normalisation: list[float] | None
           ) -> IncoherentModel | TileFrameModel:
    if preset == "paper_system4":
        return TileFrameModel(side, outputs, *(input_normalisation or (0.0, 1.0)))
    return IncoherentModel(side, outputs)


def _camera(preset: str, camera: dict | None) -> IncoherentCameraModel:
    return IncoherentCameraModel(**{**(PAPER_CAMERA if preset == "paper_system4" else {}), **(camera or {})})


def _misaligned_axes(misaligns: bool | list[str]) -> tuple[str, ...]:
    if isinstance(misaligns, bool):
        return tuple(NAMED) if misaligns else ()
    if not (isinstance(misaligns, list) and all(isinstance(a, str) and a in NAMED for a in misaligns)):
        raise OptionError("misaligns", f"expected true, false or a list of {', '.join(NAMED)}; got {misaligns!r}")
    return tuple(misaligns)


class IncoherentBench(SeededNoise, AlignmentAxes):
    """One simulated incoherent layer: the input image, the weight display, the camera, the
    display's alignment stages."""

    axes = NAMED

    @staticmethod
    def check_options(side: int = 28, outputs: int = 144, camera: dict | None = None,
                      noise_seed: int = 0, misaligns: bool | list[str] = True, preset: str = "physical",
                      input_normalisation: list[float] | None = None) -> None:
        """Validate rig-file options without building a bench."""
        _check(side, outputs, camera or {}, preset, input_normalisation)
        SeededNoise.check_noise_seed(noise_seed)
        _misaligned_axes(misaligns)

    def __init__(self, side: int = 28, outputs: int = 144, camera: dict | None = None,
                 noise_seed: int = 0, misaligns: bool | list[str] = True, preset: str = "physical",
                 input_normalisation: list[float] | None = None) -> None:
        """``misaligns``: whether this layer's display takes the rig's misalignment
        imperfections, or which of them (a study may misalign one layer and keep the others
        aligned; the SAT paper misaligns its second layer by scale only). ``preset``:
        ``physical`` or ``paper_system4``, whose inputs are normalised by
        ``input_normalisation`` [mean, std]."""
        self.check_options(side, outputs, camera, noise_seed, misaligns, preset, input_normalisation)
        self.misaligns = _misaligned_axes(misaligns)
        self.model, self.camera = _model(side, outputs, preset, input_normalisation), _camera(preset, camera)
        tiles = outputs + self.model.reference
        self.transmission = torch.full((tiles, side * side), 0.5, dtype=torch.float64)
        self.inputs = torch.zeros(1, side * side, dtype=torch.float64)
        self.seed_noise(noise_seed)
        self.reset_imperfections()
        self.home_axes()

    @property
    def image_side(self) -> int:
        """Side of the input image, in pixels."""
        return self.model.side

    def load(self, images: np.ndarray) -> None:
        """Input images (B, side²) in [0, 1], fanned out onto every tile."""
        self.inputs = torch.from_numpy(np.asarray(images, dtype=float))

    def reset_imperfections(self) -> None:
        """Aligned, as in the rig file."""
        self.imperfections = dict.fromkeys(NAMED, 0.0)

    def set_imperfection(self, name: str, value: float, draw: int = 0) -> None:
        """Misalign the weight display (names: the free-space system's imperfections)."""
        if name not in NAMED:
            raise KeyError(f"the incoherent bench has no imperfection {name!r}")
        if name in self.misaligns:
            # kept as offsets from the aligned bench, like the stages' positions
            self.imperfections[name] = float(value) - 1.0 if name == "scale" else float(value)

    def frames(self) -> torch.Tensor:
        """Counts (B, 1, tiles) for the loaded inputs."""
        sums = self.model.tile_sums(self.inputs, self.transmission, self.with_stages(self.imperfections))
        return self.camera.counts(sums, self.generator)


class IncoherentTwin(torch.nn.Module):
    """The aligned model through the same camera: twin(x, weights) → outputs (B, outputs)."""

    check_options = staticmethod(IncoherentBench.check_options)

    def __init__(self, side: int = 28, outputs: int = 144, camera: dict | None = None,
                 noise_seed: int = 0, misaligns: bool | list[str] = True, preset: str = "physical",
                 input_normalisation: list[float] | None = None) -> None:
        super().__init__()
        _check(side, outputs, camera or {}, preset, input_normalisation)
        self.model, self.camera = _model(side, outputs, preset, input_normalisation), _camera(preset, camera)
        # the display's own misalignment, measured by a registration (None: aligned, a preset)
        self.misalignment: dict[str, float] | None = None

    @classmethod
    def from_calibration(cls, cal: Calibration, layer: str, **options) -> IncoherentTwin:
        """The twin of layer ``layer`` with the misalignment its registration measured, under its knobs."""
        twin = cls(**options)
        layers = {k: v for k, v in cal.summary("registration").items() if isinstance(v, dict)}
        where = cal.path / "calibration.yaml"
        if layer not in layers:
            raise ConfigError(where, "steps.registration", f"measured {', '.join(layers) or 'no layer'}, "
                              f"not {layer!r}")
        if not layers[layer].get("measured", True):
            raise ConfigError(where, f"steps.registration.summary.{layer}",
                              f"not measured: {layers[layer].get('problem', 'see its problems')}")
        measured = cal.array("registration", f"{layer}.geometry", (2,))
        model = twin.model
        if tuple(int(v) for v in measured) != (model.side, model.outputs):
            raise ConfigError(cal.path / "registration.npz", f"{layer}.geometry",
                              f"measured {int(measured[1])} tiles of {int(measured[0])}x{int(measured[0])} "
                              f"pixels; the twin has {model.outputs} of {model.side}x{model.side}")
        misalignment = cal.array("registration", f"{layer}.misalignment", (3,))
        twin.misalignment = {axis: float(v) for axis, v in zip(NAMED, misalignment, strict=True)}
        return twin

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                alignment: dict[str, float] | None = None) -> torch.Tensor:
        """The layer's outputs (B, outputs), as the bench's camera reads them, with the
        display's stages at ``alignment`` (axis: position; none: all at 0)."""
        if self.misalignment is not None:
            # as on the bench: along each axis the display's own misalignment plus its knob
            knobs = alignment or {}
            alignment = {axis: v + knobs.get(axis, 0.0) for axis, v in self.misalignment.items()}
        counts = self.camera.counts(self.model.tile_sums(x.double(), self.show(weights), alignment))
        return self.readout(counts[:, 0])

    def show(self, weights: torch.Tensor) -> torch.Tensor:
        """What the weight display shows for weights (out, in) in [-1, 1]: levels in [0, 1]."""
        weights = weights.reshape(self.model.outputs, -1)
        return shown_as_transmissions(weights) if self.model.reference else (weights + 1) / 2

    def readout(self, signal: torch.Tensor) -> torch.Tensor:
        """The layer's outputs from the camera's pixels (B, tiles): against the reference tile,
        or, without one, the sums the counts stand for."""
        return referenced_signals(signal) if self.model.reference else self.camera.sums(signal)


class WeightDisplay(InputModulator):
    """The bench's weight display: every tile's transmission in [0, 1], the reference last."""

    full_scale_W = 1.0

    def __init__(self, resource: IncoherentBench) -> None:
        self.bench = resource
        self.channels = resource.transmission.numel()

    def identify(self) -> str:
        """Name and size."""
        m = self.bench.model
        tiles = f"{m.outputs} + 1 tiles" if m.reference else f"{m.outputs} signed tiles in frames"
        return f"simulated weight display, {tiles} of {m.side}x{m.side}"

    def load(self, values: np.ndarray) -> None:
        """Show one picture (1, tiles·side²) of transmissions."""
        self.bench.transmission = torch.from_numpy(np.asarray(values, dtype=float)).reshape(
            self.bench.transmission.shape)


class TileCamera(Camera):
    """The bench's camera: one pixel per tile, one frame per input image."""

    exposure_s = 1e-3

    def __init__(self, resource: IncoherentBench) -> None:
        self.bench = resource
        self.shape = (1, resource.model.outputs + resource.model.reference)
        self.roi, self.pixel_pitch_m = Roi(0, 0, *self.shape), math.nan
        self.bit_depth = resource.camera.bit_depth

    def identify(self) -> str:
        """Name and size."""
        return f"simulated tile camera, {self.shape[1]} pixels, {self.bit_depth}-bit"

    def set_exposure(self, seconds: float) -> None:
        """The simulated camera's scale is set by its electrons per unit of light."""
        raise ValueError("the simulated tile camera has a fixed exposure; set camera.electrons_per_unit")

    def grab(self, frames: int) -> np.ndarray:
        """A frame per loaded image."""
        counts = self.bench.frames()
        if frames != len(counts):
            raise ValueError(f"the input shows {len(counts)} images; grab one frame per image")
        r = self.roi
        return counts[:, r.row:r.row + r.height, r.col:r.col + r.width].numpy().astype(np.uint32)
