"""Hardware interfaces that satlab's core talks to (SI units: A, W, s).

Concrete drivers (``satlab.drivers``) and simulated instruments
(``satlab.simulators``) implement these; the core never imports them by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np


class InstrumentFault(RuntimeError):
    """An instrument did not do what it was told (error reply, garbage, timeout, lost port)."""

    def __init__(self, instrument: str, command: str, reply: str, transient: bool = False) -> None:
        self.instrument, self.command, self.reply = instrument, command, reply
        self.transient = transient  # a lost or garbled reply: asking again may succeed
        super().__init__(f"{instrument}: {command!r} -> {reply}")


class Instrument(ABC):
    """Anything a rig file can name: identifies itself and has a safe state."""

    kind: ClassVar[str] = "instrument"

    @abstractmethod
    def identify(self) -> str:
        """A one-line identification string (model, serial, firmware)."""

    @abstractmethod
    def safe_state(self) -> None:
        """Put the instrument in the state it may be left in unattended."""

    def close(self) -> None:
        """Release the connection; the default has nothing to release."""


class CurrentSource(Instrument):
    """N-channel current driver (e.g. microring heaters); currents in A."""

    kind = "current_source"
    channels: int
    max_current: float  # the driver's own range, per channel
    # A simulator can hold a stack of settings at once; a real source applies one at a time.
    holds_stacks: ClassVar[bool] = False

    @abstractmethod
    def set_currents(self, currents: np.ndarray) -> None:
        """Apply one current per channel (already checked by the rig)."""

    @abstractmethod
    def get_currents(self) -> np.ndarray:
        """Read back the applied current of every channel."""

    @abstractmethod
    def set_output(self, enabled: bool) -> None:
        """Switch all outputs on or off."""

    def apply_limits(self, max_current: np.ndarray) -> None:
        """Program the instrument's own current limit per channel (A), where it has one.

        The rig calls this on opening with the rig file's limits; the rig's guard stays
        the choke point, the firmware limit is a second line of defence.
        """

    def set_current_stack(self, stack: np.ndarray) -> None:
        """Hold every row of ``stack`` (P, channels) at once, if ``holds_stacks``.

        The next reading of a detector on the same bench gives one result per
        row, as if the rows had been applied and read in turn; the last row then
        stays applied.
        """
        raise NotImplementedError(f"{type(self).__name__} applies one setting at a time")

    def safe_state(self) -> None:
        """Zero every channel and switch the outputs off (the rig ramps first)."""
        try:
            self.set_currents(np.zeros(self.channels))
        finally:  # a failed zeroing must not leave the output on
            self.set_output(False)


class InputModulator(Instrument):
    """Puts a batch of input vectors onto the optics (e.g. WDM channel powers)."""

    kind = "input_modulator"
    channels: int
    full_scale_W: float  # optical power that an input value of 1 produces

    @abstractmethod
    def load(self, values: np.ndarray) -> None:
        """Load input patterns, shape (batch, channels), values in [0, 1]."""

    def safe_state(self) -> None:
        """Dark: every channel at zero power."""
        self.load(np.zeros((1, self.channels)))


class Photodetector(Instrument):
    """N-channel photodetector or power meter; readings in W."""

    kind = "photodetector"
    channels: int
    averages: int = 1

    @abstractmethod
    def read(self) -> np.ndarray:
        """One reading per loaded input pattern and channel, shape (batch, channels)."""

    def safe_state(self) -> None:
        """Detectors have nothing to switch off."""


INTERFACES: dict[str, type[Instrument]] = {
    cls.kind: cls for cls in (CurrentSource, InputModulator, Photodetector)
}
