"""Keithley 2450 SourceMeter as a one-channel current source, on pymeasure's Keithley2450.

Opening switches the output off, then puts it in current-source mode with the compliance
voltage (voltage limit) of the rig file, all three read back; every current setting and
output switch is read back; the safe state is zero current and the output off. An address
ending in ``@sim`` runs the same driver through pyvisa against the pyvisa-sim simulation
in ``sim.yaml``.
"""

from __future__ import annotations

from pymeasure.instruments.keithley import Keithley2450
from satlab.drivers.keithley.source_session import OneChannelKeithley


class Keithley2450Source(OneChannelKeithley):
    """One current channel of a Keithley 2450 (A), compliance voltage set on the instrument."""

    model, instrument = "2450", Keithley2450
    probe = ("visa", "*IDN?", r"KEITHLEY.*MODEL 2450")  # how `satlab instruments` recognises one
    mode_query, compliance_query = ":SOUR:FUNC?", ":SOUR:CURR:VLIM?"
    level_command, level_query = ":SOUR:CURR:LEV", ":SOUR:CURR?"

    def set_output(self, enabled: bool) -> None:
        """Switch the output on or off, and read the state back."""
        # pymeasure's source_enabled is read-only and enable_source() sends OUTPUT ON/OFF; the
        # 2450 takes 1/0 as well, which the simulation can store and answer as the 2450 does
        command = f"OUTPUT {int(enabled)}"
        self._exchange(command, lambda: self.smu.write(command))
        self._check_output("OUTPUT?", self._exchange("OUTPUT?", lambda: self.smu.source_enabled),
                           enabled)
