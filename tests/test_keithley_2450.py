"""The Keithley 2450 current source: its SCPI messages (pymeasure's expected_protocol), and
end to end through pyvisa against the shipped pyvisa-sim simulation."""

from __future__ import annotations

import gc
import re

import numpy as np
import pytest
from conftest import write_yaml
from pymeasure.adapters import ProtocolAdapter, VISAAdapter
from pymeasure.test import expected_protocol
from satlab.drivers.keithley.k2450 import Keithley2450Source
from satlab.drivers.keithley.source_session import SIMULATION

from satlab.cli import main
from satlab.instruments import InstrumentFault
from satlab.validation import OptionError

# the output goes off before anything else changes: a unit left on would source it
OPENING = [("OUTPUT 0", None), ("OUTPUT?", "0"),
           (":SOUR:FUNC CURR", None), (":SOUR:FUNC?", "CURR"),
           (":SOUR:CURR:VLIM 5", None), (":SOUR:CURR:VLIM?", "5.000000E+00")]


def test_opening_sets_current_mode_and_the_compliance_and_every_setting_is_read_back():
    with expected_protocol(Keithley2450Source, OPENING + [
            ("*IDN?", "KEITHLEY INSTRUMENTS,MODEL 2450,04096331,1.7.12b"),
            (":SOUR:CURR:LEV 0.00123457", None), (":SOUR:CURR?", "1.234570E-03"),
            ("OUTPUT 1", None), ("OUTPUT?", "1"),
            (":SOUR:CURR?", "1.234570E-03"),
            (":SOUR:CURR:LEV 0", None), (":SOUR:CURR?", "0.000000E+00"),  # the safe state
            ("OUTPUT 0", None), ("OUTPUT?", "0")], compliance_voltage=5) as source:
        assert source.identify() == "KEITHLEY INSTRUMENTS,MODEL 2450,04096331,1.7.12b"
        source.set_currents(np.array([0.0012345678]))  # 6 significant digits go out
        source.set_output(True)
        assert source.get_currents() == pytest.approx([0.00123457])
        source.safe_state()


@pytest.mark.parametrize(("replies", "match"), [
    (OPENING[:1] + [("OUTPUT?", "1")], r"'OUTPUT\?' -> output did not switch off \(read True\)"),
    (OPENING[:3] + [(":SOUR:FUNC?", "VOLT")],
     r"':SOUR:FUNC\?' -> read back 'voltage', expected 'current'"),
    (OPENING[:5] + [(":SOUR:CURR:VLIM?", "2.100000E+01")],
     r"':SOUR:CURR:VLIM\?' -> read back 21.0, expected 5"),
    (OPENING[:2], r"'\(opening\)' -> ValueError: No communication pair left"),  # pymeasure's error
], ids=["output", "mode", "compliance", "pymeasure error"])
def test_an_opening_setting_that_does_not_read_back_is_a_fault_and_closes_the_adapter(replies,
                                                                                      match):
    adapter = ObservedAdapter(replies)
    with pytest.raises(InstrumentFault, match=match):
        Keithley2450Source(adapter, compliance_voltage=5)
    assert adapter._index == len(replies) and adapter.closed  # nobody else would close it


def test_a_current_or_output_that_does_not_read_back_is_a_fault():
    with expected_protocol(Keithley2450Source, OPENING + [
            (":SOUR:CURR:LEV 0.0035", None), (":SOUR:CURR?", "3.400000E-03"),
            ("OUTPUT 1", None), ("OUTPUT?", "0"),
            (":SOUR:CURR?", "#garbled")], compliance_voltage=5) as source:
        with pytest.raises(InstrumentFault, match=r"':SOUR:CURR\?' -> read back 0.0034, "
                                                  r"expected 0.0035"):
            source.set_currents(np.array([0.0035]))
        with pytest.raises(InstrumentFault, match=r"'OUTPUT\?' -> output did not switch on"):
            source.set_output(True)
        with pytest.raises(InstrumentFault, match=r"':SOUR:CURR\?' -> not a number: '#garbled'"):
            source.get_currents()


def test_the_safe_state_switches_the_output_off_even_when_zeroing_fails():
    with expected_protocol(Keithley2450Source, OPENING + [
            (":SOUR:CURR:LEV 0", None), (":SOUR:CURR?", "1.000000E-03"),
            ("OUTPUT 0", None), ("OUTPUT?", "0")], compliance_voltage=5) as source, \
            pytest.raises(InstrumentFault, match="read back 0.001, expected 0"):
        source.safe_state()  # the protocol's end: OUTPUT 0 was sent and read back


@pytest.mark.parametrize(("options", "option"), [
    ({"compliance_voltage": 0}, "compliance_voltage"),
    ({"compliance_voltage": 250}, "compliance_voltage"),  # beyond the 2450's 210 V
    ({"compliance_voltage": True}, "compliance_voltage"),
    ({"timeout_s": 0}, "timeout_s"),
])
def test_unusable_options_are_refused_before_opening(options, option):
    with pytest.raises(OptionError) as refused:
        Keithley2450Source.check_options(**options)
    assert refused.value.option == option


def test_the_probe_recognises_the_2450s_identification_and_no_other_keithley():
    pattern = re.compile(Keithley2450Source.probe[2])
    assert pattern.search("KEITHLEY INSTRUMENTS,MODEL 2450,04096331,1.7.12b")
    assert not pattern.search("KEITHLEY INSTRUMENTS INC.,MODEL 2400,4001234,C32")


class ObservedAdapter(ProtocolAdapter):
    """A protocol adapter that remembers being closed."""

    closed = False

    def close(self) -> None:
        self.closed = True


SIM = "GPIB0::25::INSTR@sim"


def test_through_pyvisa_against_the_shipped_simulation():
    source = Keithley2450Source(SIM, compliance_voltage=8)
    try:
        assert source.identify().startswith("KEITHLEY INSTRUMENTS,MODEL 2450")
        assert source.smu.source_mode == "current" and source.smu.compliance_voltage == 8
        source.set_currents(np.array([0.012]))
        source.set_output(True)
        assert source.get_currents() == pytest.approx([0.012]) and source.smu.source_enabled
        with pytest.raises(InstrumentFault, match=r"read back 0.012, expected 2"):
            source.set_currents(np.array([2.0]))  # beyond the 2450's 1.05 A: refused
        assert source.get_currents() == pytest.approx([0.012])  # its own answer, not a stale one
        source.safe_state()
        assert source.get_currents() == [0.0] and source.smu.source_enabled is False
    finally:
        source.close()


def test_a_compliance_the_instrument_refuses_is_a_fault_on_opening_and_closes_the_session(
        monkeypatch):
    gc.collect()  # earlier tests' adapters, closed again when freed, are not this one
    closed = []  # resource names only: an adapter held here would be closed again when freed
    close = VISAAdapter.close

    def recorded(adapter):
        closed.append(adapter.resource_name)
        close(adapter)

    monkeypatch.setattr(VISAAdapter, "close", recorded)
    with pytest.raises(InstrumentFault, match=r"':SOUR:CURR:VLIM\?' -> read back 21.0, "
                                              r"expected 0.01") as fault:
        Keithley2450Source(SIM, compliance_voltage=0.01)  # below the 2450's 20 mV
    # closed while the fault (its traceback holding the half-opened source) is still alive
    assert closed == ["GPIB0::25::INSTR"] and fault.value


def test_opening_switches_off_a_unit_left_on_in_voltage_mode():
    left = Keithley2450Source(SIM)
    left.smu.write(":SOUR:FUNC VOLT")  # another program's session, output on
    left.smu.write("OUTPUT 1")
    left.close()
    source = Keithley2450Source(SIM)
    try:
        assert source.smu.source_enabled is False and source.smu.source_mode == "current"
    finally:
        source.close()


def test_a_reply_left_by_an_earlier_session_does_not_answer_the_next_one():
    first = Keithley2450Source(SIM)
    first.smu.write(":SOUR:CURR?")  # its reply is never read: a session that crashed
    first.close()
    second = Keithley2450Source(SIM, compliance_voltage=7)  # its read-back must see 7
    try:
        assert second.smu.compliance_voltage == 7
    finally:
        second.close()


def test_rig_check_on_the_simulated_protocol_leaves_it_at_zero_and_off(tmp_path, capsys):
    before = Keithley2450Source(SIM)
    try:  # a current flowing when the rig opens: the rig must bring it down and leave it so
        before.set_currents(np.array([0.005]))
        before.set_output(True)
    finally:
        before.close()
    rig = write_yaml(tmp_path / "rig.yaml", {"name": "smu-bench", "instruments": {"smu": {
        "kind": "current_source", "driver": "keithley.2450", "address": SIM,
        "options": {"compliance_voltage": 5}, "limits": {"max_current": 0.02}}}})
    code = main(["rig", "check", str(rig)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "KEITHLEY INSTRUMENTS,MODEL 2450" in out and "1 ch, max applied 0.000 mA" in out
    assert "left in their safe state" in out
    after = Keithley2450Source(SIM)
    try:
        assert after.get_currents() == [0.0] and after.smu.source_enabled is False
        assert after.smu.compliance_voltage == 10  # the default: it read back what it set
    finally:
        after.close()


def test_discovery_names_the_2450_in_the_simulation(capsys):
    assert main(["instruments", "--only", "--visa-library", f"{SIMULATION}@sim"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["GPIB0::25::INSTR@sim", "keithley.2450"] for line in lines)
