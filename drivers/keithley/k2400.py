"""Keithley 2400 SourceMeter as a one-channel current source, on pymeasure's Keithley2400.

Opening switches the output off, then puts it in current-source mode with the compliance
voltage of the rig file; every setting is read back; the safe state is zero current and
the output off. An address ending in ``@sim`` runs the same driver through pyvisa against
the pyvisa-sim simulation shipped beside this module (``sim.yaml``), with no hardware.
"""

from __future__ import annotations

from pymeasure.instruments.keithley import Keithley2400
from satlab.drivers.keithley.source_session import SIMULATION, OneChannelKeithley

__all__ = ["SIMULATION", "Keithley2400Source"]  # SIMULATION: the shipped pyvisa-sim YAML


class Keithley2400Source(OneChannelKeithley):
    """One current channel of a Keithley 2400 (A), compliance voltage set on the instrument."""

    model, instrument = "2400", Keithley2400
    probe = ("visa", "*IDN?", r"KEITHLEY.*MODEL 2400")  # how `satlab instruments` recognises one
    mode_query, compliance_query = ":SOURCE:FUNCTION?", ":SENSE:VOLTAGE:PROTECTION?"
    level_command, level_query = ":SOURCE:CURRENT", ":SOURCE:CURRENT?"

    def set_output(self, enabled: bool) -> None:
        """Switch the output on or off, and read the state back."""
        self._exchange(f"OUTPUT {int(enabled)}", lambda: setattr(self.smu, "source_enabled", enabled))
        self._check_output("OUTPUT?", self._exchange("OUTPUT?", lambda: self.smu.source_enabled),
                           enabled)
