"""The Keysight 816x / N774x power meter: its SCPI messages (pymeasure's expected_protocol), and
end to end through pyvisa against the shipped pyvisa-sim simulation of an 8164B with an 81635A
dual sensor in slot 1."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from conftest import write_yaml
from pymeasure.adapters import ProtocolAdapter
from pymeasure.test import expected_protocol
from satlab.drivers.keysight.k816x import SIMULATION, Keysight816xDetector

from satlab.cli import main
from satlab.instruments import InstrumentFault
from satlab.rigfile import load_rig_file
from satlab.validation import ConfigError, OptionError

SIM = "GPIB0::20::INSTR@sim"
NO_ERROR = ("SYST:ERR?", '+0,"No error"\r')


def setting(command: str, query: str, reply: str) -> list:
    """A setting, the error check after it, and its read-back."""
    return [(command, None), NO_ERROR, (query, reply)]


def nr3(text: str) -> str:
    """A number as the guide prints it, CR included: +1.55000000E-006\r."""
    mantissa, exponent = f"{float(text):+.8E}".split("E")
    return f"{mantissa}E{int(exponent):+04d}\r"


def module(slot: int, atim: str = "0.001") -> list:
    """What a module's heads share, set on its slot (a dual sensor's master channel)."""
    return (setting(f"SENS{slot}:POW:RANG:AUTO 1", f"SENS{slot}:POW:RANG:AUTO?", "1\r")
            + setting(f"SENS{slot}:POW:ATIM {atim}", f"SENS{slot}:POW:ATIM?", nr3(atim)))


def channel(address: str, wavelength: str = "1.550000E-06") -> list:
    """One head's unit and wavelength; ``address`` is what follows SENS."""
    return (setting(f"SENS{address}:POW:UNIT 1", f"SENS{address}:POW:UNIT?", "+1\r")
            + setting(f"SENS{address}:POW:WAV {wavelength}", f"SENS{address}:POW:WAV?",
                      nr3(wavelength)))


OPENING = [NO_ERROR] + module(1) + channel("1")  # the default: channel "1:1"


def test_opening_drains_old_errors_sets_and_reads_back_everything_then_reads_power():
    with expected_protocol(Keysight816xDetector, [
            ("SYST:ERR?", '-113,"Undefined header"'), NO_ERROR,  # an earlier session's error
            ("SENS1:POW:RANG:AUTO 1", None), NO_ERROR, ("SENS1:POW:RANG:AUTO?", "1"),
            ("SENS1:POW:ATIM 0.0005", None), NO_ERROR, ("SENS1:POW:ATIM?", "+5.00000000E-004"),
            ("SENS1:POW:UNIT 1", None), NO_ERROR, ("SENS1:POW:UNIT?", "+1"),
            ("SENS1:POW:WAV 1.310000E-06", None), NO_ERROR,
            ("SENS1:POW:WAV?", "+1.31000000E-006"),
            ("READ1:POW?", "+2.50000000E-005"),
            ("*IDN?", "Agilent Technologies,8163B,DE12345678,V4.0")],
            wavelength_nm=1310, averaging_time_s=0.0005) as meter:
        assert np.array_equal(meter.read(), [[2.5e-05]])
        assert meter.identify() == "Agilent Technologies,8163B,DE12345678,V4.0; channels 1:1"


def test_a_dual_head_is_addressed_by_chan2_and_shares_its_masters_module_settings():
    pairs = ([NO_ERROR] + module(1) + module(2) + channel("1:CHAN2") + channel("2") + channel("1")
             + [("READ1:CHAN2:POW?", nr3("6.25E-06")), ("READ2:POW?", nr3("-1.2E-09")),
                ("READ1:POW?", nr3("2.5E-05"))])
    with expected_protocol(Keysight816xDetector, pairs, channels=["1:2", "2:1", "1:1"]) as meter:
        assert meter.channels == 3
        assert np.array_equal(meter.read(), [[6.25e-06, -1.2e-09, 2.5e-05]])  # in listed order


@pytest.mark.parametrize(("query", "reply", "message"), [
    ("SENS1:POW:RANG:AUTO?", "0", "auto_range read back False, expected True"),
    ("SENS1:POW:ATIM?", "+2.00000000E-003", "averaging_time_s read back 0.002, expected 0.001"),
    ("SENS1:POW:UNIT?", "+0", "unit read back 'dBm', expected 'W'"),
    ("SENS1:POW:WAV?", "+1.55050000E-006", "wavelength_nm read back 1550.5, expected 1550.0"),
    ("SENS1:POW:WAV?", "garbage", "wavelength_nm read back 'garbage', expected 1550.0"),
])
def test_a_setting_that_does_not_read_back_is_a_fault_and_nothing_more_is_sent(query, reply,
                                                                                 message):
    last = max(i for i, (command, _) in enumerate(OPENING) if command == query)
    pairs = OPENING[:last] + [(query, reply)]
    adapter = ProtocolAdapter(pairs)
    with pytest.raises(InstrumentFault, match=f"'{re.escape(query)}' -> {re.escape(message)}"):
        Keysight816xDetector(adapter)
    assert adapter._index == len(pairs)


def test_a_setting_the_instrument_refuses_is_a_fault_naming_the_setting_and_its_error():
    pairs = [NO_ERROR] + module(1) + channel("1")[:3] + [
        ("SENS1:POW:WAV 1.310000E-06", None), ("SYST:ERR?", '-222,"Data out of range"')]
    adapter = ProtocolAdapter(pairs)
    with pytest.raises(InstrumentFault, match=r"'SENS1:POW:WAV 1.310000E-06' -> "
                                              r'SYST:ERR\? -> -222,"Data out of range"'):
        Keysight816xDetector(adapter, wavelength_nm=1310)
    assert adapter._index == len(pairs)


@pytest.mark.parametrize(("replies", "message"), [
    (["garbage"], "not an error-queue reply: 'garbage'"),
    (['-410,"Query INTERRUPTED"'] * 100, "still reporting errors after 100 reads"),
])
def test_an_error_queue_that_does_not_empty_is_a_fault_before_any_setting(replies, message):
    pairs = [("SYST:ERR?", reply) for reply in replies]
    adapter = ProtocolAdapter(pairs)
    with pytest.raises(InstrumentFault, match=re.escape(f"'SYST:ERR?' -> {message}")):
        Keysight816xDetector(adapter)
    assert adapter._index == len(pairs)


@pytest.mark.parametrize(("reply", "read"), [
    ("+9.91E+37", "9.91e+37"),  # SCPI's not-a-number
    ("-2.5E+00", "-2.5"),  # outside ±2 W below as well as above
    ("garbage", "'garbage'"),
])
def test_a_reading_that_is_not_a_power_is_a_fault(reply, read):
    with (expected_protocol(Keysight816xDetector, OPENING + [("READ1:POW?", reply)]) as meter,
          pytest.raises(InstrumentFault, match=re.escape(
              f"'READ1:POW?' -> not a power within ±2 W: {read}"))):
        meter.read()


@pytest.mark.parametrize(("options", "field", "expected"), [
    ({"channels": [62]}, "channels", "quoted 'slot:chan' strings"),  # YAML's reading of 1:2
    ({"channels": ["1:3"]}, "channels", "chan 1 or 2"),
    ({"channels": ["1:1", "1:1"]}, "channels", "listed twice"),
    ({"channels": []}, "channels", "a list of 'slot:chan' strings"),
    ({"wavelength_nm": 1.55}, "wavelength_nm", "in nm within 400-1800"),
    ({"averaging_time_s": 0}, "averaging_time_s", "seconds"),
    ({"averaging_time_s": 3, "timeout_s": 2}, "timeout_s", "more than averaging_time_s"),
])
def test_unusable_options_are_refused_before_anything_is_sent(options, field, expected):
    adapter = ProtocolAdapter([])
    with pytest.raises(OptionError, match=expected) as raised:
        Keysight816xDetector(adapter, **options)
    assert raised.value.option == field and adapter._index == 0


def test_an_unquoted_channel_in_a_rig_file_is_named_with_the_fix(tmp_path):
    rig = tmp_path / "rig.yaml"
    rig.write_text("name: meter-bench\ninstruments:\n  pm:\n    kind: photodetector\n"
                   f"    driver: keysight.816x\n    address: {SIM}\n"
                   "    options: {channels: [1:1, 1:2]}\n")
    with pytest.raises(ConfigError, match=r"instruments\.pm\.options\.channels: .*\"1:2\", got 61"):
        load_rig_file(rig)


@pytest.mark.parametrize(("idn", "recognised"), [
    ("Agilent Technologies,8164A,DE41200111,V4.0", True),
    ("Keysight Technologies,8163B,MY12345678,V5.25(72637)", True),
    ("Keysight Technologies,N7745A,MY53400123,1.2.3", True),
    ("Keysight Technologies,N7711A,MY00000001,1.0", False),  # a laser source
    ("KEITHLEY INSTRUMENTS INC.,MODEL 2400,4001234,C32", False),
])
def test_the_probe_recognises_mainframes_and_multiport_meters_only(idn, recognised):
    assert bool(re.search(Keysight816xDetector.probe[2], idn)) is recognised


def test_through_pyvisa_against_the_shipped_simulation():
    meter = Keysight816xDetector(SIM, channels=["1:1", "1:2"], wavelength_nm=1310,
                                 averaging_time_s=0.0005)
    try:
        assert meter.identify().startswith("Agilent Technologies,8164B,")
        assert meter.meter.channels["1:2"].wavelength_nm == pytest.approx(1310)
        assert meter.meter.modules[1].averaging_time_s == pytest.approx(0.0005)
        assert np.array_equal(meter.read(), [[2.5e-05, 6.25e-06]])
    finally:
        meter.close()


@pytest.mark.parametrize(("options", "command"), [
    ({"channels": ["1:2"], "wavelength_nm": 1700}, "SENS1:CHAN2:POW:WAV 1.700000E-06"),
    ({"averaging_time_s": 0.00002}, "SENS1:POW:ATIM 2e-05"),
])
def test_the_simulation_refuses_what_the_module_cannot_do_and_the_next_session_opens(options,
                                                                                   command):
    with pytest.raises(InstrumentFault, match=re.escape(f"'{command}' -> SYST:ERR? -> -222,")):
        Keysight816xDetector(SIM, **options)
    meter = Keysight816xDetector(SIM, channels=["1:2"], wavelength_nm=1550)  # the queue is empty
    try:
        assert meter.meter.channels["1:2"].wavelength_nm == pytest.approx(1550)
    finally:
        meter.close()


def test_rig_check_on_the_simulated_protocol(tmp_path, capsys):
    rig = write_yaml(tmp_path / "rig.yaml", {"name": "meter-bench", "instruments": {"pm": {
        "kind": "photodetector", "driver": "keysight.816x", "address": SIM,
        "options": {"channels": ["1:1", "1:2"], "wavelength_nm": 1550}}}})
    code = main(["rig", "check", str(rig)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Agilent Technologies,8164B" in out
    assert "2 ch, reading range [6.25e-06, 2.5e-05] W" in out


def test_discovery_recognises_the_simulated_mainframe_and_its_snippet_opens(tmp_path, capsys):
    assert main(["instruments", "--only", "--visa-library", f"{SIMULATION}@sim"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:2] == ["GPIB0::20::INSTR@sim", "keysight.816x"]
               for line in out.splitlines())
    snippet = yaml.safe_load(out[out.index("instruments:"):])
    rig = tmp_path / "found.yaml"
    rig.write_text(yaml.safe_dump({"name": "found", **snippet}))
    assert main(["rig", "check", str(rig)]) == 0
    assert "Agilent Technologies,8164B" in capsys.readouterr().out
