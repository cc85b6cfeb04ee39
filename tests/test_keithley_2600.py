"""The Keithley 2600 current source: its TSP messages (pymeasure's expected_protocol), and
end to end through pyvisa against the shipped pyvisa-sim simulation of a 2602B."""

from __future__ import annotations

import gc
import re
import warnings

import numpy as np
import pytest
from conftest import write_yaml
from pymeasure.adapters import ProtocolAdapter, VISAAdapter
from pymeasure.test import expected_protocol
from satlab.drivers.keithley.k2600 import Keithley2600Source
from satlab.drivers.keithley.source_session import SIMULATION

from satlab.cli import main
from satlab.instruments import InstrumentFault
from satlab.validation import OptionError


def configure(smu: str) -> list:
    """What opening sets on one channel, with the replies of an instrument that obeys."""
    return [(f"{smu}.source.func=0", None), (f"print({smu}.source.func)", "0.00000e+00"),
            (f"{smu}.source.limitv=5.000000", None), (f"print({smu}.source.limitv)", "5.00000e+00")]


def opening(*smus: str) -> list:
    """Every channel's output off first (one left on would source it), then each set up."""
    return [pair for smu in smus for pair in output(smu, 0)] + [
        pair for smu in smus for pair in configure(smu)]


def level(smu: str, sent: str, reply: str) -> list:
    """Setting one channel's current, and its read-back."""
    return [(f"{smu}.source.leveli={sent}", None), (f"print({smu}.source.leveli)", reply)]


BOTH_LEVELS = "print(smua.source.leveli);print(smub.source.leveli)"


def levels(sent: tuple[str, str], replies: tuple[str, str]) -> list:
    """Setting both channels in one line of TSP statements, read back with one line of
    print() calls that the instrument answers with a line each."""
    return [(f"smua.source.leveli={sent[0]};smub.source.leveli={sent[1]}", None),
            (BOTH_LEVELS, replies[0]), (None, replies[1])]


def output(smu: str, on: int, reply: str | None = None) -> list:
    """Switching one channel's output, and its read-back (by default: switched)."""
    return [(f"{smu}.source.output={on}", None),
            (f"print({smu}.source.output)", reply or f"{on:.5e}")]


def test_one_channel_drives_smua_only_and_every_setting_is_read_back():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pymeasure's "does it speak SCPI?" warning is not for users
        with expected_protocol(Keithley2600Source, opening("smua") + [
                ("*IDN?", "Keithley Instruments Inc., Model 2602B, 4321234, 3.3.5"),
                *level("smua", "0.00123457", "1.23457e-03"),  # %g: pymeasure's %f sends 0.001235
                *output("smua", 1),
                ("print(smua.source.leveli)", "1.23457e-03"),
                *level("smua", "0", "0.00000e+00"), *output("smua", 0)],  # the safe state
                compliance_voltage=5) as source:
            assert source.channels == 1
            assert source.identify().startswith("Keithley Instruments Inc., Model 2602B")
            source.set_currents(np.array([0.0012345678]))
            source.set_output(True)
            assert source.get_currents() == pytest.approx([0.00123457])
            source.safe_state()


def test_two_channels_drive_smua_and_smub():
    with expected_protocol(Keithley2600Source, opening("smua", "smub") + [
            *levels(("0.0035", "1e-05"), ("3.50000e-03", "1.00000e-05")),
            *output("smua", 1), *output("smub", 1),
            (BOTH_LEVELS, "3.50000e-03"), (None, "1.00000e-05"),
            *levels(("0", "0"), ("0.00000e+00", "0.00000e+00")),
            *output("smua", 0), *output("smub", 0)],
            compliance_voltage=5, channels=2) as source:
        assert source.channels == 2
        source.set_currents(np.array([0.0035, 1e-5]))
        source.set_output(True)
        assert source.get_currents() == pytest.approx([0.0035, 1e-5])
        source.safe_state()


class ObservedAdapter(ProtocolAdapter):
    """A protocol adapter that remembers being closed."""

    closed = False

    def close(self) -> None:
        self.closed = True


OFF = output("smua", 0) + output("smub", 0)  # both outputs off, before either is set up


@pytest.mark.parametrize(("replies", "match"), [
    (output("smua", 0) + output("smub", 0, "1.00000e+00"),
     r"'print\(smub.source.output\)' -> output did not switch off \(read True\)"),
    (output("smua", 0, "0.00000e+00,0.00000e+00"),  # not ON/OFF: must not pass for off
     r"'print\(smua.source.output\)' -> output did not switch off \(read \[0.0, 0.0\]\)"),
    (OFF + [("smua.source.func=0", None), ("print(smua.source.func)", "1.00000e+00")],
     r"'print\(smua.source.func\)' -> read back 'voltage', expected 'current'"),
    (OFF + configure("smua")[:3] + [("print(smua.source.limitv)", "2.00000e+01")],
     r"'print\(smua.source.limitv\)' -> read back 20.0, expected 5"),
    (opening("smua", "smub")[:-1] + [("print(smub.source.limitv)", "#garbled")],
     r"'print\(smub.source.limitv\)' -> read back '#garbled', expected 5"),
    (OFF, r"'\(opening\)' -> ValueError: No communication pair left"),  # pymeasure's error
], ids=["smub output", "output garbage", "mode", "compliance", "smub compliance",
        "pymeasure error"])
def test_an_opening_setting_that_does_not_read_back_is_a_fault_and_closes_the_adapter(replies,
                                                                                      match):
    adapter = ObservedAdapter(replies)
    with pytest.raises(InstrumentFault, match=match):
        Keithley2600Source(adapter, compliance_voltage=5, channels=2)
    assert adapter._index == len(replies) and adapter.closed  # nobody else would close it


@pytest.mark.parametrize(("reply", "read"), [
    ("0.00000e+00,0.00000e+00", r"\[0.0, 0.0\]"),  # a list: it is not "ON", but not "OFF" either
    ("nil", None),  # pymeasure finds no such state
])
def test_an_output_state_that_is_neither_on_nor_off_is_a_fault(reply, read):
    with expected_protocol(Keithley2600Source, opening("smua") + output("smua", 0, reply),
                           compliance_voltage=5) as source, \
            pytest.raises(InstrumentFault, match=r"'print\(smua.source.output\)' -> "
                          + (f"output did not switch off \\(read {read}\\)" if read
                             else "KeyError")):
        source.set_output(False)


def test_a_channel_that_does_not_read_back_is_a_fault_and_the_other_is_still_set_with_it():
    with expected_protocol(Keithley2600Source, opening("smua", "smub") + [
            *levels(("0.0035", "0.002"), ("3.40000e-03", "2.00000e-03")),
            *output("smua", 1, "0.00000e+00"), *output("smub", 1),
            (BOTH_LEVELS, "3.50000e-03"), (None, "#garbled")],
            compliance_voltage=5, channels=2) as source:
        with pytest.raises(InstrumentFault, match=r"'print\(smua.source.leveli\)' -> read back "
                                                  r"0.0034, expected 0.0035"):
            source.set_currents(np.array([0.0035, 0.002]))
        with pytest.raises(InstrumentFault, match=r"'print\(smua.source.output\)' -> output did "
                                                  r"not switch on"):
            source.set_output(True)
        with pytest.raises(InstrumentFault, match=r"'print\(smub.source.leveli\)' -> not a number"):
            source.get_currents()


def test_the_safe_state_reaches_every_channel_even_when_one_faults():
    with expected_protocol(Keithley2600Source, opening("smua", "smub") + [
            *levels(("0", "0"), ("1.00000e-03", "0.00000e+00")),
            *output("smua", 0, "1.00000e+00"), *output("smub", 0)],
            compliance_voltage=5, channels=2) as source:
        with pytest.raises(InstrumentFault, match=r"'print\(smua.source.output\)' -> output did "
                                                  r"not switch off") as fault:
            source.safe_state()  # smub is still zeroed and both outputs are still switched off
        assert "read back 0.001, expected 0" in str(fault.value.__context__)  # smua's zeroing


@pytest.mark.parametrize(("options", "option"), [
    ({"channels": 3}, "channels"),
    ({"channels": 0}, "channels"),
    ({"channels": "2"}, "channels"),
    ({"compliance_voltage": 0}, "compliance_voltage"),
    ({"compliance_voltage": 250}, "compliance_voltage"),  # beyond every 2600B's 200 V
    ({"timeout_s": -1}, "timeout_s"),
])
def test_unusable_options_are_refused_before_opening(options, option):
    with pytest.raises(OptionError) as refused:
        Keithley2600Source.check_options(**options)
    assert refused.value.option == option


def test_the_probe_recognises_the_2600_series_identification():
    pattern = re.compile(Keithley2600Source.probe[2])
    assert pattern.search("Keithley Instruments Inc., Model 2602B, 4321234, 3.3.5")
    assert pattern.search("Keithley Instruments Inc., Model 2636B, 1234567, 4.0.4")
    assert not pattern.search("KEITHLEY INSTRUMENTS,MODEL 2450,04096331,1.7.12b")


SIM = "GPIB0::26::INSTR@sim"


def test_through_pyvisa_against_the_shipped_simulation():
    source = Keithley2600Source(SIM, compliance_voltage=8, channels=2)
    try:
        assert source.identify().startswith("Keithley Instruments Inc., Model 2602B")
        for smu in (source.smu.ChA, source.smu.ChB):
            assert smu.source_mode == "current" and smu.compliance_voltage == 8
        source.set_currents(np.array([0.012, 0.0034]))
        source.set_output(True)
        assert source.get_currents() == pytest.approx([0.012, 0.0034])
        assert [smu.source_output for smu in source.smus] == ["ON", "ON"]
        with pytest.raises(InstrumentFault, match=r"'print\(smub.source.leveli\)' -> read back "
                                                  r"0.0034, expected 3.5"):
            source.set_currents(np.array([0.001, 3.5]))  # beyond the 2602B's 3.03 A: refused
        # smua took its setting, smub kept its own; each answer is its own, not a stale one
        assert source.get_currents() == pytest.approx([0.001, 0.0034])
        source.safe_state()
        assert list(source.get_currents()) == [0.0, 0.0]
        assert [smu.source_output for smu in source.smus] == ["OFF", "OFF"]
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
    with pytest.raises(InstrumentFault, match=r"'print\(smua.source.limitv\)' -> read back "
                                              r"40.0, expected 100") as fault:
        Keithley2600Source(SIM, compliance_voltage=100)  # a 2602B stops at 40.4 V
    # closed while the fault (its traceback holding the half-opened source) is still alive
    assert closed == ["GPIB0::26::INSTR"] and fault.value


def test_opening_switches_off_every_channel_left_on_in_voltage_mode():
    left = Keithley2600Source(SIM, channels=2)
    for smu in ("smua", "smub"):  # another program's session, outputs on
        left.smu.write(f"{smu}.source.func=1")
        left.smu.write(f"{smu}.source.output=1")
    left.close()
    source = Keithley2600Source(SIM, channels=2)
    try:
        assert [smu.source_output for smu in source.smus] == ["OFF", "OFF"]
        assert [smu.source_mode for smu in source.smus] == ["current", "current"]
    finally:
        source.close()


def test_a_reply_left_by_an_earlier_session_does_not_answer_the_next_one():
    first = Keithley2600Source(SIM)
    first.smu.write("print(smua.source.leveli)")  # its reply is never read: a session that crashed
    first.close()
    second = Keithley2600Source(SIM, compliance_voltage=7)  # its read-back must see 7
    try:
        assert second.smu.ChA.compliance_voltage == 7
    finally:
        second.close()


@pytest.mark.parametrize("channels", [1, 2])
def test_rig_check_on_the_simulated_protocol_leaves_every_channel_at_zero_and_off(
        tmp_path, capsys, channels):
    before = Keithley2600Source(SIM, channels=channels)
    try:  # currents flowing when the rig opens: the rig must bring them down and leave them so
        before.set_currents(np.full(channels, 0.005))
        before.set_output(True)
    finally:
        before.close()
    rig = write_yaml(tmp_path / "rig.yaml", {"name": "smu-bench", "instruments": {"smu": {
        "kind": "current_source", "driver": "keithley.2600", "address": SIM,
        "options": {"compliance_voltage": 5, "channels": channels},
        "limits": {"max_current": 0.02}}}})
    code = main(["rig", "check", str(rig)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Keithley Instruments Inc., Model 2602B" in out
    assert f"{channels} ch, max applied 0.000 mA" in out and "left in their safe state" in out
    after = Keithley2600Source(SIM, channels=channels)
    try:
        assert list(after.get_currents()) == [0.0] * channels
        assert [smu.source_output for smu in after.smus] == ["OFF"] * channels
    finally:
        after.close()


def test_discovery_names_the_2600_in_the_simulation(capsys):
    assert main(["instruments", "--only", "--visa-library", f"{SIMULATION}@sim"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["GPIB0::26::INSTR@sim", "keithley.2600"] for line in lines)
