"""Keithley 2600-series SourceMeter (TSP) as a one- or two-channel current source, on
pymeasure's Keithley2600.

``channels: 1`` drives smua, ``channels: 2`` smua and smub. Opening switches every used
channel's output off, then puts each in current-source mode with the compliance voltage
(``limitv``) of the rig file, all read back; every current setting and output switch is
read back per channel; the safe state is zero current and the output off on every
channel, each channel tried even when another faults. An address ending in ``@sim`` runs the same driver through pyvisa
against the pyvisa-sim simulation of a 2602B in ``sim.yaml``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from pymeasure.instruments.keithley import Keithley2600
from pymeasure.instruments.keithley.keithley2600 import Channel
from satlab.drivers.keithley.source_session import KeithleySource, check_compliance

from satlab.instruments import InstrumentFault
from satlab.validation import require_count, require_seconds


class Keithley2600Source(KeithleySource):
    """Channels smua (and smub) of a Keithley 2600 (A), compliance voltage set on each."""

    channels = 1
    max_current = 1.5  # DC range of every 2600B model (pymeasure's range; 2601B/2602B reach 3 A)
    probe = ("visa", "*IDN?", r"Keithley.*Model 26\d\d")  # how `satlab instruments` recognises one

    @staticmethod
    def check_options(compliance_voltage: float = 10.0, channels: int = 1,
                      timeout_s: float = 2.0) -> None:
        """Validate rig-file options before the instrument is opened."""
        # 200 V is the 2635B/2636B's range; a 2601B/2602B refuses above 40.4 V on opening
        require_seconds("timeout_s", timeout_s)
        require_count("channels", channels, 1, highest=2)
        check_compliance(compliance_voltage, 200)

    def __init__(self, address, compliance_voltage: float = 10.0, channels: int = 1,
                 timeout_s: float = 2.0) -> None:
        """``address``: a VISA resource (``…@sim``: the shipped simulation) or a pymeasure adapter."""
        self.check_options(compliance_voltage, channels, timeout_s)
        self.name, self.channels = f"Keithley 2600 at {address}", channels
        with self._opening(address, timeout_s) as adapter:
            with warnings.catch_warnings():  # pymeasure asks whether it speaks SCPI: *IDN? it does
                warnings.simplefilter("ignore", FutureWarning)
                self.smu = Keithley2600(adapter, name=self.name)
            self.smus: list[Channel] = [self.smu.ChA, self.smu.ChB][:channels]
            # off first, every channel: one another program left on would source what it
            # is set up with (and stay on should the other channel's setup fail)
            for smu in self.smus:
                self._switch(smu, False)
            for smu in self.smus:
                self._open_channel(smu, compliance_voltage)

    def set_currents(self, currents: np.ndarray) -> None:
        """Set every channel's source current in one TSP line of statements, and read them
        back with one line of print() calls."""
        targets = np.asarray(currents, dtype=float).reshape(-1)
        if len(targets) != len(self.smus):
            raise ValueError(f"expected {len(self.smus)} currents, got {len(targets)}")
        # pymeasure's source_current sends %f, whole microamps (0.0012345 A goes out as
        # 0.001234 or 0.001235), and clips at 1.5 A: the levels go out with %g instead
        command = ";".join(f"smu{smu.channel}.source.leveli={t:g}" for smu, t in zip(self.smus, targets))
        self._exchange(command, lambda: self.smu.write(command))
        for (query, got), target in zip(self._levels(), targets):
            self._check(query, got, float(target))

    def get_currents(self) -> np.ndarray:
        """The source current setpoint of every channel (A)."""
        return np.array([self._number(query, lambda got=got: got) for query, got in self._levels()])

    def _levels(self) -> list[tuple[str, float | str]]:
        """Every channel's level from one line of print() statements (one reply line each):
        (its query, the number, or the reply as it came if it is none)."""
        queries = [f"print(smu{smu.channel}.source.leveli)" for smu in self.smus]
        line = ";".join(queries)
        replies = self._exchange(line, lambda: [self.smu.ask(line)]
                                 + [self.smu.read() for _ in queries[1:]])
        return [(query, _number_or_text(reply)) for query, reply in zip(queries, replies)]

    def set_output(self, enabled: bool) -> None:
        """Switch every channel's output on or off, and read the states back."""
        self._each(lambda smu: self._switch(smu, enabled))

    def _open_channel(self, smu: Channel, compliance_voltage: float) -> None:
        smu.source_mode = "current"
        self._read_back(f"print(smu{smu.channel}.source.func)", lambda: smu.source_mode, "current")
        smu.compliance_voltage = compliance_voltage
        self._read_back(f"print(smu{smu.channel}.source.limitv)", lambda: smu.compliance_voltage,
                        compliance_voltage)

    def _switch(self, smu: Channel, enabled: bool) -> None:
        self._exchange(f"smu{smu.channel}.source.output={int(enabled)}",
                       lambda: setattr(smu, "source_output", "ON" if enabled else "OFF"))
        query = f"print(smu{smu.channel}.source.output)"
        state = self._exchange(query, lambda: smu.source_output)
        if isinstance(state, str):  # anything else (a list of numbers, say) stays as read
            state = {"ON": True, "OFF": False}.get(state, state)
        self._check_output(query, state, enabled)  # which wants a bool

    def _each(self, action: Callable[[Channel], None]) -> None:
        # a fault on one channel must not leave the other one on: try both, then raise
        faults = []
        for smu in self.smus:
            try:
                action(smu)
            except InstrumentFault as exc:
                faults.append(exc)
        if faults:
            raise faults[0]


def _number_or_text(reply: str) -> float | str:
    """A print() of a number as a float (``1.00000e-03``); anything else as it came."""
    try:
        return float(reply.strip())
    except ValueError:
        return reply.strip()
