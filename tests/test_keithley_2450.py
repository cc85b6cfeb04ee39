"""The Keithley 2450 current source: its SCPI messages (pymeasure's expected_protocol), and
end to end through pyvisa against the shipped pyvisa-sim simulation."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import write_yaml
from pymeasure.test import expected_protocol
from satlab.drivers.keithley.k2450 import Keithley2450Source
from satlab.drivers.keithley.source_session import SIMULATION

from satlab.cli import main
from satlab.instruments import InstrumentFault
from satlab.validation import OptionError

OPENING = [(":SOUR:FUNC CURR", None), (":SOUR:FUNC?", "CURR"),
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
    ([(":SOUR:FUNC CURR", None), (":SOUR:FUNC?", "VOLT")],
     r"':SOUR:FUNC\?' -> read back 'voltage', expected 'current'"),
    (OPENING[:3] + [(":SOUR:CURR:VLIM?", "2.100000E+01")],
     r"':SOUR:CURR:VLIM\?' -> read back 21.0, expected 5"),
], ids=["mode", "compliance"])
def test_an_opening_setting_that_does_not_read_back_is_a_fault(replies, match):
    with pytest.raises(InstrumentFault, match=match), \
            expected_protocol(Keithley2450Source, replies, compliance_voltage=5):
        pass


def test_a_current_or_output_that_does_not_read_back_is_a_fault():
    with expected_protocol(Keithley2450Source, OPENING + [
            (":SOUR:CURR:LEV 0.0035", None), (":SOUR:CURR?", "3.400000E-03"),
            ("OUTPUT 1", None), ("OUTPUT?", "0"),
            (":SOUR:CURR?", "ERROR")], compliance_voltage=5) as source:
        with pytest.raises(InstrumentFault, match=r"':SOUR:CURR\?' -> read back 0.0034, "
                                                  r"expected 0.0035"):
            source.set_currents(np.array([0.0035]))
        with pytest.raises(InstrumentFault, match=r"'OUTPUT\?' -> output did not switch on"):
            source.set_output(True)
        with pytest.raises(InstrumentFault, match=r"':SOUR:CURR\?' -> not a number: 'ERROR'"):
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


SIM = "GPIB0::25::INSTR@sim"


def test_through_pyvisa_against_the_shipped_simulation():
    source = Keithley2450Source(SIM, compliance_voltage=8)
    try:
        assert source.identify().startswith("KEITHLEY INSTRUMENTS,MODEL 2450")
        assert source.smu.source_mode == "current" and source.smu.compliance_voltage == 8
        source.set_currents(np.array([0.012]))
        source.set_output(True)
        assert source.get_currents() == pytest.approx([0.012]) and source.smu.source_enabled
        with pytest.raises(InstrumentFault, match=r"read back 'ERROR', expected 2"):
            source.set_currents(np.array([2.0]))  # beyond the 2450's 1.05 A: refused
        assert source.get_currents() == pytest.approx([0.012])  # its own answer, not a stale one
        source.safe_state()
        assert source.get_currents() == [0.0] and source.smu.source_enabled is False
    finally:
        source.close()


def test_a_compliance_the_instrument_refuses_is_a_fault_on_opening():
    with pytest.raises(InstrumentFault, match=r"':SOUR:CURR:VLIM\?' -> read back 'ERROR', "
                                              r"expected 0.01"):
        Keithley2450Source(SIM, compliance_voltage=0.01)  # below the 2450's 20 mV


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
    assert any(line.split()[:2] == ["GPIB0::25::INSTR", "keithley.2450"] for line in lines)
