"""The Keithley 2400 current source: its SCPI messages (pymeasure's ProtocolAdapter), and end
to end through pyvisa against the shipped pyvisa-sim simulation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_yaml
from pymeasure.adapters import ProtocolAdapter
from satlab.drivers.keithley.k2400 import Keithley2400Source

from satlab.cli import main
from satlab.instruments import InstrumentFault

# the output goes off before anything else changes: a unit left on would source it
OPENING = [(":FORMAT:ELEMENTS VOLTAGE, CURRENT, RESISTANCE, TIME, STATUS", None),
           ("OUTPUT 0", None), ("OUTPUT?", "0"),
           (":SOURCE:FUNCTION CURR", None), (":SOURCE:FUNCTION?", "CURR"),
           (":SENSE:VOLTAGE:PROTECTION 5", None), (":SENSE:VOLTAGE:PROTECTION?", "5.000000E+00")]


class ObservedAdapter(ProtocolAdapter):
    """A protocol adapter that remembers being closed."""

    closed = False

    def close(self) -> None:
        self.closed = True


def opened(pairs: list) -> tuple[Keithley2400Source, ProtocolAdapter]:
    adapter = ProtocolAdapter(OPENING + pairs)
    return Keithley2400Source(adapter, compliance_voltage=5), adapter


def test_opening_sets_current_mode_and_the_compliance_and_settings_are_read_back():
    source, adapter = opened([(":SOURCE:CURRENT 0.0035", None), (":SOURCE:CURRENT?", "3.500000E-03"),
                              ("OUTPUT 1", None), ("OUTPUT?", "1"),
                              (":SOURCE:CURRENT 0", None), (":SOURCE:CURRENT?", "0.000000E+00"),
                              ("OUTPUT 0", None), ("OUTPUT?", "0")])
    source.set_currents(np.array([0.0035]))
    source.set_output(True)
    source.safe_state()
    assert adapter._index == len(adapter.comm_pairs)  # every expected message, in order


def test_a_setting_that_does_not_read_back_is_a_fault():
    source, _ = opened([(":SOURCE:CURRENT 0.0035", None), (":SOURCE:CURRENT?", "3.400000E-03")])
    with pytest.raises(InstrumentFault, match=r"':SOURCE:CURRENT\?' -> read back 0.0034, "
                                              r"expected 0.0035"):
        source.set_currents(np.array([0.0035]))


@pytest.mark.parametrize(("replies", "match"), [
    (OPENING[:2] + [("OUTPUT?", "1")], r"'OUTPUT\?' -> output did not switch off \(read True\)"),
    (OPENING[:4] + [(":SOURCE:FUNCTION?", "VOLT")],
     r"':SOURCE:FUNCTION\?' -> read back 'voltage', expected 'current'"),
    (OPENING[:6] + [(":SENSE:VOLTAGE:PROTECTION?", "2.100000E+01")],
     r"':SENSE:VOLTAGE:PROTECTION\?' -> read back 21.0, expected 5"),
    (OPENING[:3], r"'\(opening\)' -> ValueError: No communication pair left"),  # pymeasure's error
], ids=["output", "mode", "compliance", "pymeasure error"])
def test_a_failed_opening_is_a_fault_and_closes_the_adapter(replies, match):
    adapter = ObservedAdapter(replies)
    with pytest.raises(InstrumentFault, match=match):
        Keithley2400Source(adapter, compliance_voltage=5)
    assert adapter.closed  # the rig never holds a source that failed to open: nobody else would


SIM = "GPIB0::24::INSTR@sim"


def test_through_pyvisa_against_the_shipped_simulation():
    source = Keithley2400Source(SIM, compliance_voltage=8)
    try:
        assert source.identify().startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2400")
        assert source.smu.source_mode == "current" and source.smu.compliance_voltage == 8
        source.set_currents(np.array([0.012]))
        source.set_output(True)
        assert source.get_currents() == pytest.approx([0.012])
        source.safe_state()
        assert source.get_currents() == [0.0] and source.smu.source_enabled is False
        assert source.smu.ask(":SOURCE:FUNCTION?").strip() == "CURR"
        # beyond the 2400's range: the instrument refuses silently and keeps its setting,
        # which the read-back finds
        source.smu.write(":SOURCE:CURRENT 2")
        assert source.smu.ask(":SOURCE:CURRENT?").strip() == "0.000000E+00"  # as a 2400 prints it
    finally:
        source.close()


def test_rig_check_on_the_simulated_protocol(tmp_path, capsys):
    rig = write_yaml(tmp_path / "rig.yaml", {"name": "smu-bench", "instruments": {"smu": {
        "kind": "current_source", "driver": "keithley.2400", "address": SIM,
        "options": {"compliance_voltage": 5}, "limits": {"max_current": 0.02}}}})
    code = main(["rig", "check", str(rig)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "KEITHLEY INSTRUMENTS INC.,MODEL 2400" in out and "left in their safe state" in out


def test_a_reply_left_by_an_earlier_session_does_not_answer_the_next_one():
    first = Keithley2400Source(SIM)
    first.smu.write(":SOURCE:CURRENT?")  # its reply is never read: a session that crashed
    first.close()
    second = Keithley2400Source(SIM, compliance_voltage=7)  # its read-back must see 7
    try:
        assert second.smu.compliance_voltage == 7
    finally:
        second.close()


def test_opening_switches_off_a_unit_left_on_in_voltage_mode():
    left = Keithley2400Source(SIM)
    left.smu.write(":SOURCE:FUNCTION VOLT")  # another program's session, output on
    left.smu.write("OUTPUT 1")
    left.close()
    source = Keithley2400Source(SIM)
    try:
        assert source.smu.source_enabled is False and source.smu.source_mode == "current"
    finally:
        source.close()
