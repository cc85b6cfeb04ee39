"""Thorlabs PM100 optical power meter as a one-channel photodetector, on pymeasure's
ThorlabsPM100USB: wavelength correction and averaging set from the rig file and read
back. ``…@sim`` addresses run it against the shipped pyvisa-sim simulation."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from pymeasure.instruments.thorlabs import ThorlabsPM100USB
from satlab.drivers.visa_session import open_adapter, with_serial

from satlab.instruments import InstrumentFault, Photodetector, shown
from satlab.validation import OptionError, require_count, require_seconds

SIMULATION = Path(__file__).with_name("sim.yaml")


class Pm100Detector(Photodetector):
    """One power reading (W) of whatever light is on the sensor now."""

    channels = 1
    probe = ("visa", "*IDN?", r"Thorlabs,PM10\d")  # how `satlab instruments` recognises one

    @staticmethod
    def check_options(wavelength_nm: float = 1550.0, averages: int = 1, timeout_s: float = 2.0) -> None:
        """Validate rig-file options before the meter is opened."""
        require_seconds("timeout_s", timeout_s)
        require_count("averages", averages, 1, highest=100_000)
        if not (isinstance(wavelength_nm, (int, float)) and not isinstance(wavelength_nm, bool)
                and math.isfinite(wavelength_nm) and wavelength_nm > 0):
            raise OptionError("wavelength_nm", f"expected a wavelength in nm, got {wavelength_nm!r}")

    def __init__(self, address, wavelength_nm: float = 1550.0, averages: int = 1,
                 timeout_s: float = 2.0) -> None:
        """``address``: a VISA resource (``…@sim``: the shipped simulation) or a pymeasure adapter."""
        self.check_options(wavelength_nm, averages, timeout_s)
        self.name, self.averages = f"PM100 at {address}", averages
        try:
            adapter = open_adapter(address, SIMULATION, timeout_s)
            with warnings.catch_warnings():  # pymeasure asks whether it speaks SCPI: it does
                warnings.simplefilter("ignore", FutureWarning)
                self.meter = ThorlabsPM100USB(adapter, name=self.name)
            if not self.meter.is_power_sensor:
                raise InstrumentFault(self.name, "SYST:SENSOR:IDN?",
                                      f"{self.meter.sensor_name} is not a power sensor")
            low, high = self.meter.wavelength_min, self.meter.wavelength_max
            if not low <= wavelength_nm <= high:  # pymeasure would clip it silently
                raise InstrumentFault(self.name, "SENSE:CORR:WAV", f"{wavelength_nm:g} nm is outside "
                                      f"the sensor's {low:g}-{high:g} nm")
            self.meter.write(f"SENSE:CORR:WAV {wavelength_nm:g}")  # pymeasure's setter clips
            self._check("SENSE:CORR:WAV?", self.meter.wavelength, wavelength_nm)
            self.meter.write(f"SENS:AVER:COUN {averages}")
            self._check("SENS:AVER:COUN?", float(self.meter.ask("SENS:AVER:COUN?")), averages)
        except InstrumentFault:
            raise
        except Exception as exc:  # pyvisa errors, timeouts, garbage replies, no sensor
            raise InstrumentFault(self.name, "(opening)", f"{type(exc).__name__}: {exc}") from None

    def identify(self) -> str:
        """The meter's *IDN? and its sensor."""
        try:
            serial = self.meter.sensor_sn  # pymeasure reads it as a number where it can
            serial = f"{serial:.0f}" if isinstance(serial, float) else serial
            idn = self.meter.id.strip()
            self.name = self.meter.name = with_serial(self.name, idn)
            return f"{idn}; sensor {self.meter.sensor_name} {serial}"
        except Exception as exc:
            raise InstrumentFault(self.name, "*IDN?", f"{type(exc).__name__}: {exc}") from None

    def read(self) -> np.ndarray:
        """The power on the sensor (W), shape (1, 1)."""
        try:
            power = float(self.meter.power)
        except Exception as exc:
            raise InstrumentFault(self.name, "MEAS:POW?", f"{type(exc).__name__}: {exc}") from None
        if not math.isfinite(power):
            raise InstrumentFault(self.name, "MEAS:POW?", f"not a power: {shown(power)}")
        return np.array([[power]])

    def close(self) -> None:
        """Release the VISA session."""
        self.meter.adapter.close()

    def _check(self, command: str, got: float, expected: float) -> None:
        if not math.isclose(got, expected, rel_tol=1e-6):
            raise InstrumentFault(self.name, command, f"read back {got:g}, expected {expected:g}")
