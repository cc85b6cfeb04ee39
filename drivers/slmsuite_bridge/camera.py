"""Any slmsuite camera as a satlab Camera: exposure read back, ROI as slmsuite's window
of interest, frames as raw counts."""

from __future__ import annotations

import math

import numpy as np
from satlab.drivers.slmsuite_bridge.models import (
    build,
    check_model,
    check_settings,
    close_on_failure,
)

from satlab.instruments import Camera, InstrumentFault, Roi
from satlab.validation import OptionError


class SlmsuiteCamera(Camera):
    """A camera of slmsuite (``model``: e.g. ``thorlabs.ThorCam``) with its ``settings``."""

    @staticmethod
    def check_options(model: object, settings: dict | None = None, exposure_s: float | None = None) -> None:
        """Validate rig-file options before the camera is opened."""
        check_model("camera", model)
        check_settings(model, settings)
        if exposure_s is not None and not (isinstance(exposure_s, (int, float)) and not isinstance(
                exposure_s, bool) and math.isfinite(exposure_s) and 0 < exposure_s <= 60):
            raise OptionError("exposure_s", f"expected seconds in (0, 60], got {exposure_s!r}")

    def __init__(self, model: object, settings: dict | None = None, exposure_s: float | None = None) -> None:
        """Open the camera over its whole sensor, at ``exposure_s`` if given."""
        self.check_options(model, settings, exposure_s)
        self.name = f"slmsuite {model if isinstance(model, str) else type(model).__name__}"
        self.cam = build("camera", model, settings, self.name)
        self.name = f"slmsuite {type(self.cam).__name__}"
        close_on_failure(self.cam, lambda: self._open(exposure_s))

    def _open(self, exposure_s: float | None) -> None:
        if tuple(self.cam.binning) != (1, 1):  # ROIs are in sensor pixels
            raise InstrumentFault(self.name, "binning", f"{tuple(self.cam.binning)}; set it to 1 in settings")
        self._call("set_woi(None)", self.cam.set_woi, None)
        self.shape = tuple(int(n) for n in self.cam.shape)
        self.roi = Roi(0, 0, *self.shape)
        self.bit_depth = int(self.cam.bitdepth)
        pitch = self.cam.pitch_um
        self.pixel_pitch_m = float(pitch[0]) * 1e-6 if pitch is not None else math.nan
        if exposure_s is not None:
            self.set_exposure(exposure_s)

    @property
    def exposure_s(self) -> float:
        """The camera's exposure time (s), as it reports it."""
        return float(self._call("get_exposure()", self.cam.get_exposure))

    def identify(self) -> str:
        """Class, sensor size and bit depth."""
        rows, cols = self.shape
        return f"{self.name}: {cols}x{rows}, {self.bit_depth}-bit"

    def set_exposure(self, seconds: float) -> None:
        """Set the exposure and read it back."""
        self._call(f"set_exposure({seconds:g})", self.cam.set_exposure, seconds)
        got = self.exposure_s
        if not math.isclose(got, seconds, rel_tol=1e-3):
            raise InstrumentFault(self.name, f"set_exposure({seconds:g})", f"read back {got:g} s")

    def set_roi(self, roi: Roi) -> None:
        """Restrict frames to ``roi`` through the camera's window of interest, as set."""
        self.check_roi(roi)
        window = (roi.col, roi.width, roi.row, roi.height)
        got = self._call(f"set_woi({window})", self.cam.set_woi, window)
        if tuple(int(v) for v in got) != window:  # hardware may snap the origin to its steps
            raise InstrumentFault(self.name, f"set_woi({window})", f"the camera set {tuple(got)}")
        super().set_roi(roi)

    def grab(self, frames: int) -> np.ndarray:
        """``frames`` raw frames over the ROI."""
        images = np.asarray(self._call(f"get_images({frames})", self.cam.get_images, frames))
        expected = (frames, self.roi.height, self.roi.width)
        if images.shape != expected or images.dtype.kind not in "ui":
            raise InstrumentFault(self.name, f"get_images({frames})",
                                  f"frames of {images.shape} {images.dtype}, expected {expected} counts")
        return images

    def close(self) -> None:
        """Close the camera through slmsuite."""
        self.cam.close()

    def _call(self, command: str, action, *args):
        try:
            return action(*args)
        except Exception as exc:  # the vendor SDK's own errors
            raise InstrumentFault(self.name, command, f"{type(exc).__name__}: {exc}") from None
