"""Keysight (Agilent) optical power meters as one multichannel photodetector: 8163A/B and
8164A/B mainframes with power-sensor modules (81634B, the dual 81635A, ...) and the
N7744A/N7745A multiport meters, which share the mainframes' power-meter commands.

pymeasure has no class for them: ``Keysight816x`` follows the "8163A/B, 8164A/B & 8166A/B
Mainframes Programming Guide". Every setting is checked with ``SYST:ERR?`` (the instrument
refuses a bad value silently and keeps the old one) and read back. ``…@sim`` addresses run
the driver against the shipped pyvisa-sim simulation of an 8164B with a dual sensor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyvisa
from pymeasure.instruments import Channel, Instrument, SCPIMixin
from pymeasure.instruments.validators import strict_discrete_set, strict_range
from satlab.drivers.visa_session import discard_stale_replies, open_adapter, with_serial

from satlab.instruments import InstrumentFault, Photodetector, shown
from satlab.validation import OptionError, require_seconds

SIMULATION = Path(__file__).with_name("sim.yaml")
# Sanity bounds that catch a wrong unit (µm, metres) before anything is sent; what a
# module cannot do it refuses or rounds, and both become faults.
WAVELENGTH_NM = (400.0, 1800.0)
AVERAGING_S = (1e-6, 10.0)
# The highest range (+30 dBm) ends below 2 W: a reading outside ±2 W (such as SCPI's
# 9.91E37 not-a-number) is a marker, not a power.
OVER_RANGE_W = 2.0
_CHANNEL = re.compile(r"^([1-9]|1[0-7]):([12])$")  # slots 1-17 (8166), channel 2: dual heads
_ERROR = re.compile(r"^[+-]?\d+\s*,")  # SYST:ERR? answers <code>,"<message>"
_NO_ERROR = re.compile(r"^\+?0\s*,")


def parse_channel(text: object) -> tuple[int, int]:
    """``"slot:chan"`` as two numbers; ValueError for anything else."""
    match = _CHANNEL.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a 'slot:chan' channel: {text!r}")
    return int(match.group(1)), int(match.group(2))


def _scaled(factor: float):
    """A get/set process multiplying numbers; garbage passes on for the read-back to report."""
    return lambda value: value * factor if isinstance(value, float) else value


class PowerSensorModule(Channel):
    """Settings one module shares between its heads (``{ch}``: the slot): the guide lets a
    dual sensor take them on its master channel only."""

    auto_range = Channel.control(
        "SENS{ch}:POW:RANG:AUTO?", "SENS{ch}:POW:RANG:AUTO %d", "Automatic power ranging.",
        validator=strict_discrete_set, values={False: 0, True: 1}, map_values=True,
        check_set_errors=True)
    averaging_time_s = Channel.control(
        "SENS{ch}:POW:ATIM?", "SENS{ch}:POW:ATIM %g", "Averaging time of one reading (s).",
        validator=strict_range, values=AVERAGING_S, check_set_errors=True)


class PowerSensorChannel(Channel):
    """One optical input, id ``"slot:chan"``. ``{ch}`` becomes the slot, plus ``:CHAN2`` for
    a dual sensor's second head: the guide's channel node is optional (channel 1 when left
    out) and the N774x meters have none."""

    def insert_id(self, command: str) -> str:
        """The command addressed to this channel."""
        slot, chan = parse_channel(self.id)
        return command.format(ch=slot if chan == 1 else f"{slot}:CHAN{chan}")

    unit = Channel.control(
        "SENS{ch}:POW:UNIT?", "SENS{ch}:POW:UNIT %d", "Unit of the readings: 'W' or 'dBm'.",
        validator=strict_discrete_set, values={"dBm": 0, "W": 1}, map_values=True,
        check_set_errors=True)
    wavelength_nm = Channel.control(
        "SENS{ch}:POW:WAV?", "SENS{ch}:POW:WAV %.6E",
        "Wavelength the responsivity is corrected for (nm; metres on the wire).",
        validator=strict_range, values=WAVELENGTH_NM, set_process=_scaled(1e-9),
        get_process=_scaled(1e9), check_set_errors=True)
    power = Channel.measurement(
        "READ{ch}:POW?", "A fresh reading, in the channel's unit (it triggers the meter).")


class Keysight816x(SCPIMixin, Instrument):
    """A mainframe or multiport meter: ``channels`` by ``"slot:chan"`` (one per optical
    input), ``modules`` by slot (what a dual sensor's heads share)."""

    def __init__(self, adapter, channels: Sequence[str] = ("1:1",), name: str = "Keysight 816x",
                 **kwargs) -> None:
        super().__init__(adapter, name, **kwargs)
        self.last_command = "(nothing sent yet)"
        slots = dict.fromkeys(parse_channel(text)[0] for text in channels)
        for slot in slots:
            self.add_child(PowerSensorModule, slot, collection="modules", prefix="slot_")
        for text in channels:
            self.add_child(PowerSensorChannel, text)

    def write(self, command: str, **kwargs) -> None:
        """Send one command, remembered for a fault to name."""
        self.last_command = command
        super().write(command, **kwargs)

    def check_set_errors(self) -> list:
        """After a setting: its refusal sits in the error queue, so a refusal is a fault."""
        setting = self.last_command
        reply = self.ask("SYST:ERR?").strip()
        if not _NO_ERROR.match(reply):
            raise InstrumentFault(self.name, setting, f"SYST:ERR? -> {reply}")
        return []

    def clear_errors(self, limit: int = 100) -> None:
        """Read the error queue empty: earlier sessions' errors are not this session's
        refusals. (Read, not ``*CLS``: the simulation's queue empties too.)"""
        for _ in range(limit):
            reply = self.ask("SYST:ERR?").strip()
            if _NO_ERROR.match(reply):
                return
            if not _ERROR.match(reply):  # not a meter that speaks this SCPI, or garbage
                raise InstrumentFault(self.name, "SYST:ERR?", f"not an error-queue reply: {shown(reply)}")
        raise InstrumentFault(self.name, "SYST:ERR?", f"still reporting errors after {limit} reads")


class Keysight816xDetector(Photodetector):
    """The power (W) on each listed channel, one reading each, shape (1, channels)."""

    probe = ("visa", "*IDN?", r"(Agilent|Keysight) Technologies,(816[34][AB]|N774[45]A)")

    @staticmethod
    def check_options(channels: Sequence[str] = ("1:1",), wavelength_nm: float = 1550.0,
                      averaging_time_s: float = 0.001, timeout_s: float = 2.0) -> None:
        """Validate rig-file options before the meter is opened."""
        if not (isinstance(channels, (list, tuple)) and channels):
            raise OptionError("channels", f"expected a list of 'slot:chan' strings, got {channels!r}")
        for text in channels:
            try:
                parse_channel(text)
            except ValueError:  # YAML reads an unquoted 1:2 as the number 62
                raise OptionError("channels", f"expected quoted 'slot:chan' strings (slot 1-17, "
                                  f"chan 1 or 2) such as \"1:2\", got {text!r}") from None
        if len(set(channels)) != len(channels):
            raise OptionError("channels", f"a channel is listed twice: {list(channels)!r}")
        low, high = WAVELENGTH_NM
        if not (isinstance(wavelength_nm, (int, float)) and not isinstance(wavelength_nm, bool)
                and low <= wavelength_nm <= high):
            raise OptionError("wavelength_nm", f"expected a wavelength in nm within "
                              f"{low:g}-{high:g}, got {wavelength_nm!r}")
        require_seconds("averaging_time_s", averaging_time_s, longest=AVERAGING_S[1])
        if averaging_time_s < AVERAGING_S[0]:
            raise OptionError("averaging_time_s", f"expected at least {AVERAGING_S[0]:g} s, "
                              f"got {averaging_time_s!r}")
        require_seconds("timeout_s", timeout_s)
        if timeout_s <= averaging_time_s:  # a reading takes the averaging time
            raise OptionError("timeout_s", f"expected more than averaging_time_s "
                              f"({averaging_time_s:g} s), got {timeout_s!r}")

    def __init__(self, address, channels: Sequence[str] = ("1:1",), wavelength_nm: float = 1550.0,
                 averaging_time_s: float = 0.001, timeout_s: float = 2.0) -> None:
        """``address``: a VISA resource (``…@sim``: the shipped simulation) or a pymeasure
        adapter. ``channels``: ``"slot:chan"`` strings, in the order of the readings."""
        self.check_options(channels, wavelength_nm, averaging_time_s, timeout_s)
        self.name, self.channels = f"Keysight 816x at {address}", len(channels)
        try:
            adapter = open_adapter(address, SIMULATION, timeout_s)
        except (pyvisa.Error, OSError, ValueError) as exc:  # no such resource, no VISA library
            raise InstrumentFault(self.name, "(opening)", f"{type(exc).__name__}: {exc}") from None
        self.meter = Keysight816x(adapter, channels, name=self.name)
        try:
            self._exchange(self.meter.clear_errors)
            for module in self.meter.modules.values():
                self._set(module, "auto_range", True)
                self._set(module, "averaging_time_s", float(averaging_time_s))
            for channel in self.meter.channels.values():
                self._set(channel, "unit", "W")
                self._set(channel, "wavelength_nm", float(wavelength_nm))
        except BaseException:
            adapter.close()
            raise

    def identify(self) -> str:
        """The instrument's *IDN? and the channels read."""
        idn = self._exchange(getattr, self.meter, "id")
        self.name = self.meter.name = with_serial(self.name, idn)
        return f"{idn.strip()}; channels {', '.join(self.meter.channels)}"

    def read(self) -> np.ndarray:
        """One power per channel (W), shape (1, channels)."""
        powers = []
        for channel in self.meter.channels.values():
            power = self._exchange(getattr, channel, "power")
            if not (isinstance(power, float) and abs(power) < OVER_RANGE_W):  # also not NaN
                raise InstrumentFault(self.name, self.meter.last_command,
                                      f"not a power within ±{OVER_RANGE_W:g} W: {shown(power)}")
            powers.append(power)
        return np.array([powers])

    def close(self) -> None:
        """Release the VISA session."""
        self.meter.adapter.close()

    def _set(self, part: Channel, setting: str, value) -> None:
        """Set one setting (``SYST:ERR?`` checked by pymeasure) and read it back."""
        self._exchange(setattr, part, setting, value)
        got = self._exchange(getattr, part, setting)
        # a float went out with 6-7 significant digits
        same = (math.isclose(got, value, rel_tol=1e-5) if isinstance(value, float)
                and isinstance(got, float) else got == value)
        if not same:
            discard_stale_replies(self.meter.adapter)
            raise InstrumentFault(self.name, self.meter.last_command,
                                  f"{setting} read back {shown(got)}, expected {value!r}")

    def _exchange(self, action, *args):
        try:
            return action(*args)
        except Exception as exc:  # pyvisa timeouts and I/O errors, refusals, garbage replies
            discard_stale_replies(self.meter.adapter)  # the next query must get its own answer
            if isinstance(exc, InstrumentFault):
                raise
            raise InstrumentFault(self.name, self.meter.last_command,
                                  f"{type(exc).__name__}: {exc}") from None
