"""Any slmsuite SLM as a satlab PhaseModulator: satlab's LUT picks the gray levels and
slmsuite shows them as integer data (no second phase conversion on its side)."""

from __future__ import annotations

import numpy as np
from satlab.drivers.slmsuite_bridge.models import (
    build,
    check_model,
    check_settings,
    close_on_failure,
)

from satlab.instruments import InstrumentFault, PhaseModulator
from satlab.phase_lut import PhaseLut
from satlab.validation import OptionError


class SlmsuiteSlm(PhaseModulator):
    """An SLM of slmsuite (``model``: e.g. ``meadowlark.Meadowlark``) with its ``settings``."""

    @staticmethod
    def check_options(model: object, settings: dict | None = None, lut_file: str | None = None) -> None:
        """Validate rig-file options before the SLM is opened (its bit depth is checked then)."""
        check_model("slm", model)
        check_settings(model, settings)
        if lut_file is not None:
            try:
                PhaseLut.from_file(lut_file)
            except ValueError as exc:
                raise OptionError("lut_file", str(exc)) from None

    def __init__(self, model: object, settings: dict | None = None, lut_file: str | None = None) -> None:
        """Open the SLM through slmsuite and blank it."""
        self.check_options(model, settings, lut_file)
        self.name = f"slmsuite {model if isinstance(model, str) else type(model).__name__}"
        self.slm = build("slm", model, settings, self.name)
        self.name = f"slmsuite {type(self.slm).__name__}"
        close_on_failure(self.slm, lambda: self._open(lut_file))

    def _open(self, lut_file: str | None) -> None:
        try:
            self.lut = PhaseLut.for_device(lut_file, int(self.slm.bitdepth))
        except ValueError as exc:
            raise OptionError("lut_file", str(exc)) from None
        self.shape = tuple(int(n) for n in self.slm.shape)
        self.pixel_pitch_m = float(self.slm.pitch_um[0]) * 1e-6
        self.blank()

    def _write_gray(self, gray: np.ndarray) -> None:
        """Hand the gray levels to slmsuite as display data (integers: shown as they are)."""
        data = gray.astype(self.slm.display.dtype)
        try:
            self.slm.set_phase(data, settle=False)
        except Exception as exc:  # the vendor SDK's own errors
            raise InstrumentFault(self.name, "set_phase", f"{type(exc).__name__}: {exc}") from None
        # slmsuite's record of what it sent: a conversion on its side would show here
        if not np.array_equal(np.asarray(self.slm.display), data):
            raise InstrumentFault(self.name, "set_phase", "slmsuite holds other gray levels than sent")

    def close(self) -> None:
        """Close the SLM through slmsuite."""
        self.slm.close()
