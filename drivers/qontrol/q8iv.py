"""Qontrol Q8iv-class multichannel heater driver over a serial line.

``Q8iv`` is the line protocol as a pymeasure instrument (one channel per output, as
many as the daisy chain reports); ``Q8ivSource`` is satlab's CurrentSource on top of
it: amps in, milliamps on the wire, every write read back, the firmware's current
limit programmed from the rig file's. Every failure (an error reply, garbage, no
reply in time, a lost port) raises one InstrumentFault naming the instrument, the
command and the reply.
"""

from __future__ import annotations

import math
import re

import numpy as np
from pymeasure.adapters import SerialAdapter
from pymeasure.instruments import Channel, Instrument

from satlab.instruments import CurrentSource, InstrumentFault
from satlab.validation import require_count, require_seconds

ERRORS = {1: "over-voltage", 2: "over-current", 10: "unknown command", 11: "bad parameter",
          12: "bad channel"}
_ERROR = re.compile(r"^E(\d+):(\d+)$")
_ASRL = re.compile(r"^ASRL(.+)::INSTR$", re.IGNORECASE)
CHANNELS_PER_MODULE = 8


class Q8ivChannel(Channel):
    """One heater output."""

    current_mA = Channel.control("I{ch}?", "I{ch}=%.4f", "Output current setpoint (mA).",
                                 check_set_errors=True)
    voltage_V = Channel.measurement("V{ch}?", "Output voltage (V).")
    current_limit_mA = Channel.control("IMAX{ch}?", "IMAX{ch}=%.4f", "Firmware current limit (mA).",
                                       check_set_errors=True)


class Q8iv(Instrument):
    """The Q8iv line protocol: ``\\n``-terminated ASCII, ``OK`` to every setting."""

    def __init__(self, adapter, name: str = "Qontrol Q8iv", **kwargs) -> None:
        super().__init__(adapter, name, includeSCPI=False, read_termination="\n",
                         write_termination="\n", **kwargs)
        self._last = "(opening)"
        self.identity = self.ask("id?")  # also the marker that resynchronises the line
        self.n_channels = self._count("nchan?")
        for ch in range(self.n_channels):
            self.add_child(Q8ivChannel, ch)

    def number(self, command: str) -> float:
        """A query answered by one number; garbage or a cut-off line is a fault."""
        return self._number(self.ask(command))

    def write(self, command: str, **kwargs) -> None:
        """Send one command after reading whatever the device sent unprompted."""
        self._drain()
        self._last = command
        try:
            super().write(command, **kwargs)
        except OSError as exc:
            raise InstrumentFault(self.name, command, f"the port failed ({exc})") from None

    def read(self, **kwargs) -> str:
        """One reply line; InstrumentFault for an error line, silence, a line cut off by the
        timeout, or a lost port."""
        try:
            if isinstance(self.adapter, SerialAdapter):  # see the terminator, not only the text
                raw = self.adapter.connection.read_until(b"\n")
                if raw and not raw.endswith(b"\n"):
                    raise InstrumentFault(self.name, self._last, f"reply cut off: {raw!r}",
                                          transient=True)
                reply = raw.decode("ascii", "replace").strip()
            else:
                reply = super().read(**kwargs).strip()
        except OSError as exc:
            raise InstrumentFault(self.name, self._last, f"the port failed ({exc})") from None
        if not reply:
            raise InstrumentFault(self.name, self._last, "no reply before the timeout", transient=True)
        self._raise_error_line(reply)
        return reply

    def check_set_errors(self) -> list:
        """A setting is answered ``OK`` and nothing else."""
        reply = self.read()
        if reply != "OK":
            raise InstrumentFault(self.name, self._last, f"unexpected reply {reply!r}", transient=True)
        return []

    def lines(self, command: str, count: int) -> list[str]:
        """Send a command answered by ``count`` lines (Iall?, Vall?, nupall?)."""
        self.write(command)
        return [self.read() for _ in range(count)]

    def numbers(self, command: str, count: int) -> list[float]:
        """``lines`` parsed as numbers; garbage is a fault."""
        return [self._number(line) for line in self.lines(command, count)]

    def _count(self, command: str) -> int:
        value = self._number(self.ask(command))
        if value != int(value) or value < 1:
            raise InstrumentFault(self.name, command, f"expected a positive count, got {value:g}")
        return int(value)

    def _number(self, reply: str) -> float:
        try:
            value = float(reply)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InstrumentFault(self.name, self._last, f"expected a number, got {reply!r}",
                                  transient=True)
        return value

    def _raise_error_line(self, line: str, unprompted: bool = False) -> None:
        if match := _ERROR.match(line):
            code, ch = int(match.group(1)), int(match.group(2))
            what = f"error {line} ({ERRORS.get(code, 'device error')} on channel {ch})"
            raise InstrumentFault(self.name, "(unprompted)" if unprompted else self._last, what)

    def resync(self, attempts: int = 3) -> None:
        """Drop every line still on its way (late replies to timed-out commands): ask ``id?``
        and read until its answer; ask again after a timeout of silence. The device answers
        in order, so the next reply then answers the next command."""
        connection = self.adapter.connection
        try:
            for _ in range(attempts):
                connection.write(b"id?\n")
                while line := connection.read_until(b"\n").decode("ascii", "replace").strip():
                    if line == self.identity:
                        return
        except OSError as exc:
            raise InstrumentFault(self.name, "(resynchronising)", f"the port failed ({exc})") from None
        raise InstrumentFault(self.name, "id?", f"no answer to {attempts} tries: the line is lost")

    def _drain(self) -> None:
        connection = self.adapter.connection
        try:
            while getattr(connection, "in_waiting", 0):
                line = connection.readline().decode("ascii", "replace").strip()
                self._raise_error_line(line, unprompted=True)
        except OSError as exc:
            raise InstrumentFault(self.name, "(reading unprompted lines)",
                                  f"the port failed ({exc})") from None


def serial_port(address: str) -> str:
    """The OS serial port of a rig-file address: ``/dev/ttyUSB0`` or ``ASRL/dev/ttyUSB0::INSTR``."""
    match = _ASRL.match(address)
    return match.group(1) if match else address


class Q8ivSource(CurrentSource):
    """A Q8iv daisy chain as satlab's current source (A in, every write read back)."""

    probe = ("serial", "id?", r"^Q8iv-\d+")  # how `satlab instruments` recognises one

    @staticmethod
    def check_options(baud_rate: int = 115200, timeout_s: float = 1.0, modules: int | None = None,
                      retries: int = 2) -> None:
        """Validate rig-file options before any port is opened."""
        require_count("baud_rate", baud_rate, 1)
        require_seconds("timeout_s", timeout_s)
        if modules is not None:
            require_count("modules", modules, 1)
        require_count("retries", retries, 0, highest=10)

    def __init__(self, address: str | None = None, baud_rate: int = 115200, timeout_s: float = 1.0,
                 modules: int | None = None, retries: int = 2, resource=None) -> None:
        """``address``: the serial port; or ``resource``: a simulated bench wired to an
        emulated chain (its ``port``), driven through the same serial protocol."""
        if (address is None) == (resource is None):
            raise ValueError("give the Q8iv an address (its serial port) or a resource, not both")
        address = address if address is not None else resource.port
        name = f"Q8iv at {address}"
        try:  # exclusive: a second program on the line would steal and inject replies
            adapter = SerialAdapter(serial_port(address), baudrate=baud_rate, timeout=timeout_s,
                                    exclusive=True, read_termination="\n", write_termination="\n")
        except OSError as exc:  # pyserial's SerialException: no such port, busy, no permission
            raise InstrumentFault(name, "(opening the port)", str(exc)) from None
        try:
            self.device = Q8iv(adapter, name=name)
            self.channels = self.device.n_channels
            if modules is not None and self.channels != modules * CHANNELS_PER_MODULE:
                raise InstrumentFault(self.device.name, "nchan?", f"{self.channels} channels, but "
                                      f"the rig file says {modules} modules of 8")
            full_scale_mA = self.device.number("ifull?")
            self.max_current = full_scale_mA * 1e-3
            # a setting is stored with 4 decimals: read-back agrees to that, or to one DAC step
            self._tolerance_mA = max(full_scale_mA / 2**16, 1e-4)
        except BaseException:
            adapter.close()
            raise
        self._written = np.full(self.channels, np.nan)
        self.retries = retries

    def _retrying(self, action):
        """Run an exchange again after a lost or garbled reply, at most ``retries`` times.

        Every exchange is idempotent (absolute setpoints, queries). Error replies and a
        lost port are not retried: the device said no, or nobody is listening.
        """
        for attempt in range(self.retries + 1):
            try:
                return action()
            except InstrumentFault as fault:
                if not fault.transient or attempt == self.retries:
                    raise
                self.device.resync()  # a late reply must not answer the retry

    def identify(self) -> str:
        """The first module's id and the chain behind it."""
        self.device.write("nup=0")
        self.device.check_set_errors()
        chain = self.device.lines("nupall?", self.channels // CHANNELS_PER_MODULE)
        return f"{self.device.identity} ({self.channels} channels; chain: {', '.join(chain)})"

    def apply_limits(self, max_current: np.ndarray) -> None:
        """Program each channel's firmware limit (IMAX) to the rig file's, read back."""
        limits_mA = np.broadcast_to(max_current, self.channels) * 1e3
        for k, (ch, limit_mA) in enumerate(zip(self.device.channels.values(), limits_mA)):
            self._retrying(lambda: setattr(ch, "current_limit_mA", float(limit_mA)))
            got = self._retrying(lambda: self.device.number(f"IMAX{k}?"))
            if abs(got - limit_mA) > self._tolerance_mA:
                raise InstrumentFault(self.device.name, f"IMAX{k}?", f"read back {got:g} mA after "
                                      f"setting {limit_mA:g} mA")

    def set_currents(self, currents: np.ndarray) -> None:
        """Write every channel whose setpoint changes, and read each one back."""
        for k in np.flatnonzero(~(np.asarray(currents) == self._written)):
            self._write_checked(int(k), float(currents[k]))

    def _write_checked(self, k: int, amps: float) -> None:
        ch, target_mA = self.device.channels[k], amps * 1e3
        self._written[k] = np.nan  # unknown until the read-back agrees
        self._retrying(lambda: setattr(ch, "current_mA", target_mA))
        got = self._retrying(lambda: self.device.number(f"I{k}?"))
        if abs(got - target_mA) > self._tolerance_mA:
            raise InstrumentFault(self.device.name, f"I{k}?", f"read back {got:g} mA after "
                                  f"setting {target_mA:g} mA")
        self._written[k] = amps

    def get_currents(self) -> np.ndarray:
        """Every channel's current (A), one ``Iall?``."""
        return np.array(self._retrying(lambda: self.device.numbers("Iall?", self.channels))) * 1e-3

    def set_output(self, enabled: bool) -> None:
        """The Q8iv has no output switch: off means every channel at zero."""
        if not enabled:
            self.set_currents(np.zeros(self.channels))

    def safe_state(self) -> None:
        """Every channel to zero, read back: one failing channel does not stop the others."""
        failures = []
        for k in range(self.channels):
            try:
                self._write_checked(k, 0.0)
            except InstrumentFault as fault:
                failures.append(fault)
        if failures:
            raise failures[0]

    def close(self) -> None:
        """Release the serial port."""
        self.device.adapter.close()
