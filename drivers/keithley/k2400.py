"""Keithley 2400 SourceMeter as a one-channel current source, on pymeasure's Keithley2400.

Opening switches the output off, then puts it in current-source mode with the compliance
voltage of the rig file; every setting is read back; the safe state is zero current and
the output off. An address ending in ``@sim`` runs the same driver through pyvisa against
the pyvisa-sim simulation shipped beside this module (``sim.yaml``), with no hardware.
"""

from __future__ import annotations

import numpy as np
from pymeasure.instruments.keithley import Keithley2400
from satlab.drivers.keithley.source_session import SIMULATION, KeithleySource, check_compliance

from satlab.validation import require_seconds

__all__ = ["SIMULATION", "Keithley2400Source"]  # SIMULATION: the shipped pyvisa-sim YAML


class Keithley2400Source(KeithleySource):
    """One current channel of a Keithley 2400 (A), compliance voltage set on the instrument."""

    channels = 1
    max_current = 1.05  # the 2400's current range
    probe = ("visa", "*IDN?", r"KEITHLEY.*MODEL 2400")  # how `satlab instruments` recognises one

    @staticmethod
    def check_options(compliance_voltage: float = 10.0, timeout_s: float = 2.0) -> None:
        """Validate rig-file options before the instrument is opened."""
        require_seconds("timeout_s", timeout_s)
        check_compliance(compliance_voltage, 210)

    def __init__(self, address, compliance_voltage: float = 10.0, timeout_s: float = 2.0) -> None:
        """``address``: a VISA resource (``…@sim``: the shipped simulation) or a pymeasure adapter."""
        self.check_options(compliance_voltage, timeout_s)
        self.name = f"Keithley 2400 at {address}"
        with self._opening(address, timeout_s) as adapter:
            self.smu = Keithley2400(adapter, name=self.name)
            # off first: a unit another program left on would source what it is set up with
            self.set_output(False)
            self.smu.source_mode = "current"
            self._read_back(":SOURCE:FUNCTION?", lambda: self.smu.source_mode, "current")
            self.smu.compliance_voltage = compliance_voltage
            self._read_back(":SENSE:VOLTAGE:PROTECTION?", lambda: self.smu.compliance_voltage,
                            compliance_voltage)

    def set_currents(self, currents: np.ndarray) -> None:
        """Set the source current and read it back."""
        target = float(np.asarray(currents, dtype=float).reshape(-1)[0])
        self._exchange(f":SOURCE:CURRENT {target:g}", lambda: setattr(self.smu, "source_current", target))
        self._read_back(":SOURCE:CURRENT?", lambda: self.smu.source_current, target)

    def get_currents(self) -> np.ndarray:
        """The source current setpoint (A)."""
        return np.array([self._number(":SOURCE:CURRENT?", lambda: self.smu.source_current)])

    def set_output(self, enabled: bool) -> None:
        """Switch the output on or off, and read the state back."""
        self._exchange(f"OUTPUT {int(enabled)}", lambda: setattr(self.smu, "source_enabled", enabled))
        self._check_output("OUTPUT?", self._exchange("OUTPUT?", lambda: self.smu.source_enabled),
                           enabled)
