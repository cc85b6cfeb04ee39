"""The Thorlabs PM100 power meter: its SCPI messages (pymeasure's ProtocolAdapter), and end to
end through pyvisa against the shipped pyvisa-sim simulation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_yaml
from pymeasure.adapters import ProtocolAdapter
from satlab.drivers.thorlabs.pm100 import Pm100Detector

from satlab.cli import main
from satlab.instruments import InstrumentFault

SENSOR = [("SYST:SENSOR:IDN?", "S122C,12345678,10-Jan-2024,1,18,289")]
RANGE = [("SENS:CORR:WAV? MIN", "7.000000E+02"), ("SENS:CORR:WAV? MAX", "1.800000E+03")]
SIM = "USB0::0x1313::0x8072::P2000000::INSTR@sim"


def test_opening_sets_and_reads_back_wavelength_and_averaging_then_reads_power():
    adapter = ProtocolAdapter(SENSOR + RANGE + [
        ("SENSE:CORR:WAV 1310", None), ("SENSE:CORR:WAV?", "1.310000E+03"),
        ("SENS:AVER:COUN 10", None), ("SENS:AVER:COUN?", "10"), ("MEAS:POW?", "2.500000E-05")])
    meter = Pm100Detector(adapter, wavelength_nm=1310, averages=10)
    assert np.array_equal(meter.read(), [[2.5e-05]])
    assert adapter._index == len(adapter.comm_pairs)


def test_a_wavelength_the_sensor_cannot_correct_is_refused_before_it_is_sent():
    adapter = ProtocolAdapter(SENSOR + RANGE)
    with pytest.raises(InstrumentFault, match=r"'SENSE:CORR:WAV' -> 2000 nm is outside the "
                                              r"sensor's 700-1800 nm"):
        Pm100Detector(adapter, wavelength_nm=2000)
    assert adapter._index == len(SENSOR + RANGE)  # nothing sent after the range queries


def test_through_pyvisa_against_the_shipped_simulation():
    meter = Pm100Detector(SIM, wavelength_nm=1310, averages=4)
    try:
        assert meter.identify() == ("Thorlabs,PM100USB,P2004081,1.4.0; sensor S122C "
                                    "12345678")
        assert meter.meter.wavelength == 1310
        assert meter.read().shape == (1, 1) and meter.read()[0, 0] == pytest.approx(1.2345e-4)
    finally:
        meter.close()


def test_rig_check_on_the_simulated_protocol(tmp_path, capsys):
    rig = write_yaml(tmp_path / "rig.yaml", {"name": "meter-bench", "instruments": {"pm": {
        "kind": "photodetector", "driver": "thorlabs.pm100", "address": SIM,
        "options": {"wavelength_nm": 1550}}}})
    code = main(["rig", "check", str(rig)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Thorlabs,PM100USB" in out and "1 ch, reading range [0.000123, 0.000123] W" in out
