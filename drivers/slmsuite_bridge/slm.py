"""Any slmsuite SLM as a satlab PhaseModulator: satlab's LUT picks the gray levels and
slmsuite shows them as integer data (no second phase conversion on its side)."""

from __future__ import annotations

import numpy as np
from satlab.drivers.slmsuite_bridge.models import build, check_model

from satlab.instruments import InstrumentFault, PhaseModulator
from satlab.phase_lut import PhaseLut
from satlab.validation import OptionError, require_seconds


class SlmsuiteSlm(PhaseModulator):
    """An SLM of slmsuite (``model``: e.g. ``meadowlark.Meadowlark``) with its ``settings``."""

    @staticmethod
    def check_options(model: object, settings: dict | None = None, lut_file: str | None = None,
                      settle_time_s: float | None = None) -> None:
        """Validate rig-file options before the SLM is opened."""
        check_model("slm", model)
        if settings is not None and not isinstance(settings, dict):
            raise OptionError("settings", f"expected a mapping of {model}'s arguments, got {settings!r}")
        if settle_time_s is not None:
            require_seconds("settle_time_s", settle_time_s, longest=10.0)

    def __init__(self, model: object, settings: dict | None = None, lut_file: str | None = None,
                 settle_time_s: float | None = None) -> None:
        """Open the SLM; ``settle_time_s`` defaults to slmsuite's value for it."""
        self.check_options(model, settings, lut_file, settle_time_s)
        self.slm = build("slm", model, settings)
        self.name = f"slmsuite {type(self.slm).__name__}"
        bits = int(self.slm.bitdepth)
        try:
            self.lut = PhaseLut.from_file(lut_file) if lut_file else PhaseLut.linear(bits)
        except ValueError as exc:
            raise OptionError("lut_file", str(exc)) from None
        if self.lut.bits != bits:
            raise OptionError("lut_file", f"{lut_file} has {2**self.lut.bits} levels; the SLM has {bits} bits")
        self.shape = tuple(int(n) for n in self.slm.shape)
        self.pixel_pitch_m = float(self.slm.pitch_um[0]) * 1e-6
        self.settle_time_s = float(self.slm.settle_time_s if settle_time_s is None else settle_time_s)
        self.blank()

    def identify(self) -> str:
        """Class, resolution and bit depth."""
        rows, cols = self.shape
        return f"{self.name}: {cols}x{rows}, {self.bit_depth}-bit, {self.pixel_pitch_m * 1e6:g} um pitch"

    def show_gray(self, gray: np.ndarray) -> None:
        """Hand the gray levels to slmsuite as display data and check what it holds."""
        gray = np.asarray(gray)
        if gray.shape != self.shape or gray.min(initial=0) < 0 or gray.max(initial=0) >= 2**self.bit_depth:
            raise ValueError(f"gray levels must have shape {self.shape} and lie in [0, {2**self.bit_depth})")
        data = gray.astype(self.slm.display.dtype)
        try:
            self.slm.set_phase(data, settle=False)
        except Exception as exc:  # the vendor SDK's own errors
            raise InstrumentFault(self.name, "set_phase", f"{type(exc).__name__}: {exc}") from None
        if not np.array_equal(np.asarray(self.slm.display), data):
            raise InstrumentFault(self.name, "set_phase", "the SLM holds other gray levels than sent")

    def close(self) -> None:
        """Close the SLM through slmsuite."""
        self.slm.close()
