"""What satlab's Keithley current sources share: every exchange with the instrument either
answers or is an InstrumentFault, and a setting counts only once the instrument reads it
back. After a fault the replies still queued are dropped, so the next query gets its own
answer."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np
from pymeasure.adapters import Adapter
from pymeasure.instruments import Instrument
from satlab.drivers.visa_session import discard_stale_replies, open_adapter, with_serial

from satlab.instruments import CurrentSource, InstrumentFault, shown
from satlab.validation import OptionError, require_seconds

T = TypeVar("T")
log = logging.getLogger(__name__)

SIMULATION = Path(__file__).with_name("sim.yaml")  # every Keithley simulated, one resource each


def check_compliance(compliance_voltage: object, highest: float) -> None:
    """OptionError unless ``compliance_voltage`` is volts in (0, highest]."""
    if not (isinstance(compliance_voltage, (int, float)) and not isinstance(compliance_voltage, bool)
            and 0 < compliance_voltage <= highest):
        raise OptionError("compliance_voltage",
                          f"expected volts in (0, {highest:g}], got {compliance_voltage!r}")


def _close_quietly(adapter: Adapter, name: str) -> None:
    """Close ``adapter`` after a failed opening; a failing close must not hide why it failed."""
    try:
        adapter.close()
    except Exception as exc:
        log.warning("%s: closing the VISA session after a failed opening failed too: %s: %s",
                    name, type(exc).__name__, exc, exc_info=True)


class KeithleySource(CurrentSource):
    """A current source on the pymeasure instrument ``smu``, opened inside ``_opening()``."""

    name: str
    smu: Instrument

    def identify(self) -> str:
        """The instrument's *IDN? reply; faults name its serial number from now on."""
        idn = self._exchange("*IDN?", lambda: self.smu.id)
        self.name = self.smu.name = with_serial(self.name, idn)
        return idn

    def close(self) -> None:
        """Release the VISA session."""
        self.smu.adapter.close()

    @contextmanager
    def _opening(self, address, timeout_s: float) -> Iterator[Adapter]:
        """The adapter for ``address``, closed again when opening fails: a source that never
        opened is not the rig's to close, so nothing else would release the session."""
        adapter = None
        try:
            adapter = open_adapter(address, SIMULATION, timeout_s)
            yield adapter
        except BaseException as exc:
            if adapter is not None:
                _close_quietly(adapter, self.name)
            if isinstance(exc, InstrumentFault) or not isinstance(exc, Exception):
                raise
            # pyvisa errors, timeouts, garbage replies
            raise InstrumentFault(self.name, "(opening)", f"{type(exc).__name__}: {exc}") from None

    def _exchange(self, command: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except Exception as exc:  # pyvisa timeouts and I/O errors, unparsable replies
            discard_stale_replies(self.smu.adapter)  # the next query must get its own answer
            raise InstrumentFault(self.name, command, f"{type(exc).__name__}: {exc}") from None

    def _number(self, command: str, read: Callable[[], object]) -> float:
        # pymeasure hands back the reply text when it is not a number (an error, a stale reply)
        got = self._exchange(command, read)
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            discard_stale_replies(self.smu.adapter)
            raise InstrumentFault(self.name, command, f"not a number: {shown(got)}")
        return float(got)

    def _read_back(self, command: str, read: Callable[[], object], expected: float | str) -> None:
        self._check(command, self._exchange(command, read), expected)

    def _check(self, command: str, got: object, expected: float | str) -> None:
        if isinstance(expected, str):
            same, wanted = got == expected, repr(expected)
        else:  # settings go out with %g: 6 significant digits reach the instrument
            same = (isinstance(got, (int, float)) and not isinstance(got, bool)
                    and math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-12))
            wanted = f"{expected:.7g}"
        if not same:
            discard_stale_replies(self.smu.adapter)
            raise InstrumentFault(self.name, command, f"read back {shown(got)}, expected {wanted}")

    def _check_output(self, command: str, on: object, enabled: bool) -> None:
        if on is not bool(enabled):
            discard_stale_replies(self.smu.adapter)
            raise InstrumentFault(self.name, command,
                                  f"output did not switch {'on' if enabled else 'off'} (read {on!r})")


class OneChannelKeithley(KeithleySource):
    """A one-channel SourceMeter whose pymeasure class has ``source_mode``,
    ``compliance_voltage`` and ``source_current``. Subclasses name the model and spell the
    commands pymeasure sends for them (for fault messages), and switch the output."""

    channels = 1
    max_current = 1.05  # the 2400's and the 2450's current range
    model: ClassVar[str]
    instrument: ClassVar[type[Instrument]]
    mode_query: ClassVar[str]
    compliance_query: ClassVar[str]
    level_command: ClassVar[str]
    level_query: ClassVar[str]

    @staticmethod
    def check_options(compliance_voltage: float = 10.0, timeout_s: float = 2.0) -> None:
        """Validate rig-file options before the instrument is opened."""
        require_seconds("timeout_s", timeout_s)
        check_compliance(compliance_voltage, 210)

    def __init__(self, address, compliance_voltage: float = 10.0, timeout_s: float = 2.0) -> None:
        """``address``: a VISA resource (``…@sim``: the shipped simulation) or a pymeasure adapter."""
        self.check_options(compliance_voltage, timeout_s)
        self.name = f"Keithley {self.model} at {address}"
        with self._opening(address, timeout_s) as adapter:
            self.smu = self.instrument(adapter, name=self.name)
            # off first: a unit another program left on would source what it is set up with
            self.set_output(False)
            self.smu.source_mode = "current"
            self._read_back(self.mode_query, lambda: self.smu.source_mode, "current")
            self.smu.compliance_voltage = compliance_voltage
            self._read_back(self.compliance_query, lambda: self.smu.compliance_voltage,
                            compliance_voltage)

    def set_currents(self, currents: np.ndarray) -> None:
        """Set the source current and read it back."""
        target = float(np.asarray(currents, dtype=float).reshape(-1)[0])
        self._exchange(f"{self.level_command} {target:g}",
                       lambda: setattr(self.smu, "source_current", target))
        self._read_back(self.level_query, lambda: self.smu.source_current, target)

    def get_currents(self) -> np.ndarray:
        """The source current setpoint (A)."""
        return np.array([self._number(self.level_query, lambda: self.smu.source_current)])
