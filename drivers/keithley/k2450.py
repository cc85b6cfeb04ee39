"""Keithley 2450 SourceMeter as a one-channel current source, on pymeasure's Keithley2450.

Opening switches the output off, then puts it in current-source mode with the compliance
voltage (voltage limit) of the rig file, all three read back; every current setting and
output switch is read back; the safe state is zero current and the output off. An address
ending in ``@sim`` runs the same driver through pyvisa against the pyvisa-sim simulation
in ``sim.yaml``.
"""

from __future__ import annotations

import numpy as np
from pymeasure.instruments.keithley import Keithley2450
from satlab.drivers.keithley.source_session import KeithleySource, check_compliance

from satlab.validation import require_seconds


class Keithley2450Source(KeithleySource):
    """One current channel of a Keithley 2450 (A), compliance voltage set on the instrument."""

    channels = 1
    max_current = 1.05  # the 2450's current range
    probe = ("visa", "*IDN?", r"KEITHLEY.*MODEL 2450")  # how `satlab instruments` recognises one

    @staticmethod
    def check_options(compliance_voltage: float = 10.0, timeout_s: float = 2.0) -> None:
        """Validate rig-file options before the instrument is opened."""
        require_seconds("timeout_s", timeout_s)
        check_compliance(compliance_voltage, 210)

    def __init__(self, address, compliance_voltage: float = 10.0, timeout_s: float = 2.0) -> None:
        """``address``: a VISA resource (``…@sim``: the shipped simulation) or a pymeasure adapter."""
        self.check_options(compliance_voltage, timeout_s)
        self.name = f"Keithley 2450 at {address}"
        with self._opening(address, timeout_s) as adapter:
            self.smu = Keithley2450(adapter, name=self.name)
            # off first: a unit another program left on would source what it is set up with
            self.set_output(False)
            self.smu.source_mode = "current"
            self._read_back(":SOUR:FUNC?", lambda: self.smu.source_mode, "current")
            self.smu.compliance_voltage = compliance_voltage
            self._read_back(":SOUR:CURR:VLIM?", lambda: self.smu.compliance_voltage,
                            compliance_voltage)

    def set_currents(self, currents: np.ndarray) -> None:
        """Set the source current and read it back."""
        target = float(np.asarray(currents, dtype=float).reshape(-1)[0])
        self._exchange(f":SOUR:CURR:LEV {target:g}", lambda: setattr(self.smu, "source_current", target))
        self._read_back(":SOUR:CURR?", lambda: self.smu.source_current, target)

    def get_currents(self) -> np.ndarray:
        """The source current setpoint (A)."""
        return np.array([self._number(":SOUR:CURR?", lambda: self.smu.source_current)])

    def set_output(self, enabled: bool) -> None:
        """Switch the output on or off, and read the state back."""
        # pymeasure's source_enabled is read-only and enable_source() sends OUTPUT ON/OFF; the
        # 2450 takes 1/0 as well, which the simulation can store and answer as the 2450 does
        command = f"OUTPUT {int(enabled)}"
        self._exchange(command, lambda: self.smu.write(command))
        self._check_output("OUTPUT?", self._exchange("OUTPUT?", lambda: self.smu.source_enabled),
                           enabled)
