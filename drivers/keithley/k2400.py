"""Keithley 2400 SourceMeter as a one-channel current source, on pymeasure's Keithley2400.

Opening puts it in current-source mode with the compliance voltage of the rig file;
every setting is read back; the safe state is zero current and the output off. An
address ending in ``@sim`` runs the same driver through pyvisa against the pyvisa-sim
simulation shipped beside this module (``sim.yaml``), with no hardware.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pymeasure.instruments.keithley import Keithley2400
from satlab.drivers.visa_session import discard_stale_replies, open_adapter

from satlab.instruments import CurrentSource, InstrumentFault
from satlab.validation import OptionError, require_seconds

SIMULATION = Path(__file__).with_name("sim.yaml")


class Keithley2400Source(CurrentSource):
    """One current channel of a Keithley 2400 (A), compliance voltage set on the instrument."""

    channels = 1
    max_current = 1.05  # the 2400's current range
    probe = ("visa", "*IDN?", r"KEITHLEY.*MODEL 2400")  # how `satlab instruments` recognises one

    @staticmethod
    def check_options(compliance_voltage: float = 10.0, timeout_s: float = 2.0) -> None:
        """Validate rig-file options before the instrument is opened."""
        require_seconds("timeout_s", timeout_s)
        if not (isinstance(compliance_voltage, (int, float)) and not isinstance(compliance_voltage, bool)
                and 0 < compliance_voltage <= 210):
            raise OptionError("compliance_voltage", f"expected volts in (0, 210], got {compliance_voltage!r}")

    def __init__(self, address, compliance_voltage: float = 10.0, timeout_s: float = 2.0) -> None:
        """``address``: a VISA resource (``…@sim``: the shipped simulation) or a pymeasure adapter."""
        self.check_options(compliance_voltage, timeout_s)
        self.name = f"Keithley 2400 at {address}"
        try:
            self.smu = Keithley2400(open_adapter(address, SIMULATION, timeout_s), name=self.name)
            self.smu.source_mode = "current"
            self.smu.compliance_voltage = compliance_voltage
            self._check(":SENSE:VOLTAGE:PROTECTION?", self.smu.compliance_voltage,
                        compliance_voltage)
        except InstrumentFault:
            raise
        except Exception as exc:  # pyvisa errors, timeouts, garbage replies
            raise InstrumentFault(self.name, "(opening)", f"{type(exc).__name__}: {exc}") from None

    def identify(self) -> str:
        """The instrument's *IDN? reply."""
        return self._exchange("*IDN?", lambda: self.smu.id)

    def set_currents(self, currents: np.ndarray) -> None:
        """Set the source current and read it back."""
        target = float(np.asarray(currents, dtype=float).reshape(-1)[0])
        self._exchange(f":SOURCE:CURRENT {target:g}", lambda: setattr(self.smu, "source_current", target))
        self._check(":SOURCE:CURRENT?", self._exchange(":SOURCE:CURRENT?", lambda: self.smu.source_current),
                    target)

    def get_currents(self) -> np.ndarray:
        """The source current setpoint (A)."""
        return np.array([self._exchange(":SOURCE:CURRENT?", lambda: self.smu.source_current)])

    def set_output(self, enabled: bool) -> None:
        """Switch the output on or off, and read the state back."""
        self._exchange(f"OUTPUT {int(enabled)}", lambda: setattr(self.smu, "source_enabled", enabled))
        if self._exchange("OUTPUT?", lambda: self.smu.source_enabled) != enabled:
            raise InstrumentFault(self.name, "OUTPUT?", f"output did not switch {'on' if enabled else 'off'}")

    def close(self) -> None:
        """Release the VISA session."""
        self.smu.adapter.close()

    def _exchange(self, command: str, action):
        try:
            return action()
        except Exception as exc:  # pyvisa timeouts and I/O errors, unparsable replies
            discard_stale_replies(self.smu.adapter)  # the next query must get its own answer
            raise InstrumentFault(self.name, command, f"{type(exc).__name__}: {exc}") from None

    def _check(self, command: str, got: object, expected: float) -> None:
        # pymeasure sends settings with %g: 6 significant digits reach the instrument
        if not (isinstance(got, (int, float)) and math.isclose(got, expected, rel_tol=1e-5,
                                                               abs_tol=1e-12)):
            discard_stale_replies(self.smu.adapter)
            raise InstrumentFault(self.name, command, f"read back {got!r}, expected {expected:.7g}")
