"""A camera that serves recorded frames from a file, for dry runs on recorded data.

A recording is an ``.npz`` file with ``frames`` (n, rows, cols) of unsigned integer
counts, ``exposure_s`` and ``bit_depth`` (``pixel_pitch_m`` optional); ``record`` writes
one from any camera. Frames come back in order over the current ROI, from the start
again after the last one (``loop``) or as a fault when the recording runs out.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from satlab.instruments import Camera, InstrumentFault, Roi
from satlab.validation import OptionError


def record(camera: Camera, path: str | Path, frames: int) -> Path:
    """Write ``frames`` frames of ``camera`` (over its ROI) as a recording."""
    path = Path(path)
    np.savez_compressed(path, frames=camera.grab(frames), exposure_s=camera.exposure_s,
                        bit_depth=camera.bit_depth, pixel_pitch_m=camera.pixel_pitch_m)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def _load(file: str) -> dict:
    try:
        with np.load(file, allow_pickle=False) as data:
            contents = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise OptionError("file", f"{file}: not a readable .npz recording ({exc})") from None
    frames = contents.get("frames")
    if frames is None or frames.ndim != 3 or frames.shape[0] == 0 or frames.dtype.kind != "u":
        raise OptionError("file", f"{file}: expected 'frames' of unsigned counts, shape (n, rows, cols)")
    for key in ("exposure_s", "bit_depth"):
        if key not in contents or contents[key].shape != ():
            raise OptionError("file", f"{file}: expected a scalar {key!r}")
    bits = contents["bit_depth"]
    if not (bits.dtype.kind in "iu" and 1 <= bits <= 8 * frames.dtype.itemsize
            and frames.max() < 2**int(bits)):
        raise OptionError("file", f"{file}: bit_depth {bits} does not hold counts up to {frames.max()}")
    if not (math.isfinite(contents["exposure_s"]) and contents["exposure_s"] > 0):
        raise OptionError("file", f"{file}: exposure_s must be positive, got {contents['exposure_s']}")
    return contents


class ReplayCamera(Camera):
    """Frames of a recording, served in order over the ROI."""

    @staticmethod
    def check_options(file: str, loop: bool = True) -> dict:
        """Validate rig-file options: the recording must load; returns its contents."""
        if not isinstance(loop, bool):
            raise OptionError("loop", f"expected true or false, got {loop!r}")
        return _load(file)

    def __init__(self, file: str, loop: bool = True) -> None:
        """Load the recording ``file``."""
        contents = self.check_options(file, loop)
        self.name, self.loop = f"replay camera of {file}", loop
        self.frames = contents["frames"]
        self.shape = self.frames.shape[1:]
        self.exposure_s = float(contents["exposure_s"])
        self.bit_depth = int(contents["bit_depth"])
        self.pixel_pitch_m = float(contents.get("pixel_pitch_m", np.nan))  # NaN: not recorded
        self.roi, self.next_frame = Roi(0, 0, *self.shape), 0

    def identify(self) -> str:
        """The file and what it holds."""
        rows, cols = self.shape
        return (f"{self.name}: {len(self.frames)} frames of {cols}x{rows}, {self.bit_depth}-bit, "
                f"{self.exposure_s:g} s")

    def set_exposure(self, seconds: float) -> None:
        """Only the recorded exposure exists."""
        if not math.isclose(seconds, self.exposure_s, rel_tol=1e-9):
            raise ValueError(f"{self.name} was recorded at {self.exposure_s:g} s; "
                             f"it cannot show {seconds:g} s")

    def grab(self, frames: int) -> np.ndarray:
        """The next ``frames`` recorded frames over the ROI."""
        if not (isinstance(frames, int) and frames >= 1):
            raise ValueError(f"expected a positive number of frames, got {frames!r}")
        total = len(self.frames)
        if not self.loop and self.next_frame + frames > total:
            raise InstrumentFault(self.name, f"grab({frames})",
                                  f"the recording ends after {total} frames (loop: false)")
        index = np.arange(self.next_frame, self.next_frame + frames) % total
        self.next_frame = (self.next_frame + frames) % total if self.loop else self.next_frame + frames
        r = self.roi
        return self.frames[index, r.row:r.row + r.height, r.col:r.col + r.width]
