"""Hardware interfaces that satlab's core talks to (SI units: A, W, s, m, rad).

Concrete drivers (``satlab.drivers``) and simulated instruments
(``satlab.simulators``) implement these; the core never imports them by name.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from satlab.phase_lut import PhaseLut


class InstrumentFault(RuntimeError):
    """An instrument did not do what it was told (error reply, garbage, timeout, lost port)."""

    def __init__(self, instrument: str, command: str, reply: str, transient: bool = False) -> None:
        self.instrument, self.command, self.reply = instrument, command, reply
        self.transient = transient  # a lost or garbled reply: asking again may succeed
        self.role: str | None = None  # the rig file's name for the instrument, set by the rig
        super().__init__(instrument, command, reply)

    def __str__(self) -> str:
        where = f"{self.role}: " if self.role else ""
        return f"{where}{self.instrument}: {self.command!r} -> {self.reply}"


def shown(reply: object) -> str:
    """A reply as a fault shows it: a text quoted, its first 40 printable characters."""
    if not isinstance(reply, (str, bytes)):
        return repr(reply)
    text = reply.decode("ascii", "replace") if isinstance(reply, bytes) else reply
    printable = "".join(c for c in text if c.isprintable())
    return repr(printable[:40] + ("..." if len(printable) > 40 else ""))


@dataclass
class WireTime:
    """Time an instrument's line has taken: writes (each with its read-back) and reads."""

    writes: int = 0
    write_s: float = 0.0
    reads: int = 0
    read_s: float = 0.0

    def add(self, kind: str, seconds: float) -> None:
        """Count one ``"write"`` or ``"read"`` that took ``seconds``."""
        if kind == "write":
            self.writes, self.write_s = self.writes + 1, self.write_s + seconds
        else:
            self.reads, self.read_s = self.reads + 1, self.read_s + seconds

    def __sub__(self, earlier: WireTime) -> WireTime:
        return WireTime(self.writes - earlier.writes, self.write_s - earlier.write_s,
                        self.reads - earlier.reads, self.read_s - earlier.read_s)

    def summary(self) -> dict[str, float]:
        """Counts and milliseconds per write and per read, for a run's summary."""
        return {"writes": self.writes, "ms_per_write": round(1e3 * self.write_s / max(self.writes, 1), 3),
                "reads": self.reads, "ms_per_read": round(1e3 * self.read_s / max(self.reads, 1), 3)}

    def __str__(self) -> str:
        s = self.summary()
        return (f"wire {s['ms_per_write']:.2f} ms per write ({self.writes}), "
                f"{s['ms_per_read']:.2f} ms per read ({self.reads})")


class Instrument(ABC):
    """Anything a rig file can name: identifies itself and has a safe state."""

    kind: ClassVar[str] = "instrument"
    wire: WireTime | None = None  # drivers on a real line measure it

    @abstractmethod
    def identify(self) -> str:
        """A one-line identification string (model, serial, firmware)."""

    @abstractmethod
    def safe_state(self) -> None:
        """Put the instrument in the state it may be left in unattended."""

    def close(self) -> None:
        """Release the connection; the default has nothing to release."""


class CurrentSource(Instrument):
    """N-channel current driver (e.g. microring heaters); currents in A."""

    kind = "current_source"
    channels: int
    max_current: float  # the driver's own range, per channel
    # A simulator can hold a stack of settings at once; a real source applies one at a time.
    holds_stacks: ClassVar[bool] = False

    @abstractmethod
    def set_currents(self, currents: np.ndarray) -> None:
        """Apply one current per channel (already checked by the rig)."""

    @abstractmethod
    def get_currents(self) -> np.ndarray:
        """Read back the applied current of every channel."""

    @abstractmethod
    def set_output(self, enabled: bool) -> None:
        """Switch all outputs on or off."""

    def apply_limits(self, max_current: np.ndarray) -> None:
        """Program the instrument's own current limit per channel (A), where it has one.

        The rig calls this on opening with the rig file's limits; the rig's guard stays
        the choke point, the firmware limit is a second line of defence.
        """

    def set_current_stack(self, stack: np.ndarray) -> None:
        """Hold every row of ``stack`` (P, channels) at once, if ``holds_stacks``.

        The next reading of a detector on the same bench gives one result per
        row, as if the rows had been applied and read in turn; the last row then
        stays applied.
        """
        raise NotImplementedError(f"{type(self).__name__} applies one setting at a time")

    def safe_state(self) -> None:
        """Zero every channel and switch the outputs off (the rig ramps first)."""
        try:
            self.set_currents(np.zeros(self.channels))
        finally:  # a failed zeroing must not leave the output on
            self.set_output(False)


class InputModulator(Instrument):
    """Puts a batch of input vectors onto the optics (e.g. WDM channel powers)."""

    kind = "input_modulator"
    channels: int
    full_scale_W: float  # optical power that an input value of 1 produces

    @abstractmethod
    def load(self, values: np.ndarray) -> None:
        """Load input patterns, shape (batch, channels), values in [0, 1]."""

    def safe_state(self) -> None:
        """Dark: every channel at zero power."""
        self.load(np.zeros((1, self.channels)))


class Photodetector(Instrument):
    """N-channel photodetector or power meter; readings in W."""

    kind = "photodetector"
    channels: int
    averages: int = 1

    @abstractmethod
    def read(self) -> np.ndarray:
        """One reading per loaded input pattern and channel, shape (batch, channels)."""

    def safe_state(self) -> None:
        """Detectors have nothing to switch off."""


class PhaseModulator(Instrument):
    """A phase SLM: shows a phase mask (rad) as gray levels through its LUT.

    The mask is wrapped to [0, 2π) and quantised to the nearest of the LUT's 2^bits
    levels. The liquid crystal's response time is the rig file's ``settle_time``: the
    rig (``Rig.show_phase``) makes readings wait for it.
    """

    kind = "phase_modulator"
    name: str
    shape: tuple[int, int]  # device pixels (rows, cols)
    pixel_pitch_m: float
    lut: PhaseLut

    @property
    def bit_depth(self) -> int:
        """Bits per gray level."""
        return self.lut.bits

    def identify(self) -> str:
        """Name, resolution, bit depth and pixel pitch."""
        rows, cols = self.shape
        return f"{self.name}: {cols}x{rows}, {self.bit_depth}-bit, {self.pixel_pitch_m * 1e6:g} um pitch"

    def show_phase(self, phase: np.ndarray) -> np.ndarray:
        """Show a phase mask of shape ``shape``; returns the gray levels shown."""
        phase = np.asarray(phase, dtype=float)
        if phase.shape != tuple(self.shape):
            raise ValueError(f"a mask for this SLM has shape {tuple(self.shape)}, got {phase.shape}")
        if not np.all(np.isfinite(phase)):
            raise ValueError("a phase mask must be finite")
        gray = self.lut.to_gray(phase)
        self.show_gray(gray)
        return gray

    def show_gray(self, gray: np.ndarray) -> None:
        """Show integer gray levels (shape ``shape``, below 2^bit_depth) as they are."""
        gray = np.asarray(gray)
        if (gray.shape != tuple(self.shape) or gray.dtype.kind not in "ui"
                or gray.min(initial=0) < 0 or gray.max(initial=0) >= 2**self.bit_depth):
            raise ValueError(f"gray levels must be integers of shape {tuple(self.shape)} "
                             f"in [0, {2**self.bit_depth})")
        self._write_gray(gray.astype(self.lut.dtype))

    @abstractmethod
    def _write_gray(self, gray: np.ndarray) -> None:
        """Put checked gray levels on the device."""

    def blank(self) -> None:
        """Show gray level 0 everywhere."""
        self.show_gray(np.zeros(self.shape, dtype=self.lut.dtype))

    def safe_state(self) -> None:
        """Blank: no pattern left on the modulator."""
        self.blank()


@dataclass(frozen=True)
class Roi:
    """A camera's region of interest in sensor pixels."""

    row: int
    col: int
    height: int
    width: int


@dataclass(frozen=True)
class Acquisition:
    """Frames as the camera gave them, with what is needed to trust them."""

    counts: np.ndarray  # (frames, height, width) raw ADC counts
    dark: np.ndarray | None  # (height, width) mean dark counts, if a dark frame was taken
    saturated: np.ndarray  # (frames,) True where any pixel sits at full scale
    exposure_s: float

    @property
    def signal(self) -> np.ndarray:
        """Counts with the dark frame subtracted (float)."""
        counts = self.counts.astype(float)
        return counts - self.dark if self.dark is not None else counts


class Camera(Instrument):
    """An imaging detector: frames of raw counts over a region of interest."""

    kind = "camera"
    shape: tuple[int, int]  # sensor pixels (rows, cols)
    pixel_pitch_m: float
    bit_depth: int
    exposure_s: float
    roi: Roi
    dark: np.ndarray | None = None

    @abstractmethod
    def set_exposure(self, seconds: float) -> None:
        """Set the exposure time (s)."""

    @abstractmethod
    def grab(self, frames: int) -> np.ndarray:
        """Raw counts of ``frames`` frames over the ROI, shape (frames, height, width)."""

    def check_roi(self, roi: Roi) -> None:
        """ValueError unless ``roi`` lies on the sensor."""
        rows, cols = self.shape
        if not (0 <= roi.row and 0 <= roi.col and roi.height > 0 and roi.width > 0
                and roi.row + roi.height <= rows and roi.col + roi.width <= cols):
            raise ValueError(f"ROI {roi} does not fit the {rows}x{cols} sensor")

    def set_roi(self, roi: Roi) -> None:
        """Restrict frames to ``roi`` (forgets a dark frame taken over another ROI)."""
        self.check_roi(roi)
        self.roi, self.dark = roi, None

    def take_dark(self, frames: int = 16) -> np.ndarray:
        """Average ``frames`` frames as the dark frame (the caller has blocked the light)."""
        self.dark = self.grab(frames).mean(axis=0)
        return self.dark

    def acquire(self, frames: int = 1) -> Acquisition:
        """Grab frames and flag the saturated ones."""
        counts = self.grab(frames)
        saturated = (counts >= 2**self.bit_depth - 1).any(axis=(1, 2))
        return Acquisition(counts, self.dark, saturated, self.exposure_s)

    def safe_state(self) -> None:
        """Cameras have nothing to switch off."""


class Positioner(Instrument):
    """One alignment axis of a bench (a translation stage, a rotation mount): positions in
    ``unit`` from the aligned position, within ``travel``. Its response time is the rig
    file's ``settle_time``."""

    kind = "positioner"
    unit: str  # e.g. "deg", "px", "m"
    travel: tuple[float, float]  # (lowest, highest) position

    def move_to(self, position: float) -> None:
        """Move to ``position``; a position outside the travel is refused, nothing moves."""
        low, high = self.travel
        if not (math.isfinite(position) and low <= position <= high):
            raise ValueError(f"a position must be within the travel [{low:g}, {high:g}] {self.unit}, "
                             f"got {position!r}")
        self._move(float(position))

    @abstractmethod
    def _move(self, position: float) -> None:
        """Move to a checked position."""

    @abstractmethod
    def position(self) -> float:
        """Where the axis is now."""

    def safe_state(self) -> None:
        """An axis holds where it is: moving unattended optics is what would be unsafe."""


INTERFACES: dict[str, type[Instrument]] = {
    cls.kind: cls for cls in (CurrentSource, InputModulator, Photodetector, PhaseModulator, Camera,
                              Positioner)
}
