"""Qontrol Q8iv-class multichannel heater driver over a serial line.

``Q8iv`` is the line protocol as a pymeasure instrument; ``Q8ivSource`` is satlab's
CurrentSource on top of it: amps in, milliamps on the wire, every write read back, the
firmware's current limit programmed from the rig file's. Every command and reply form
comes from Qontrol's own material (docs/instruments.md has the table): the vendor's
Python API ``qontrol.py`` 1.1.20 (how it opens a chain, parses each reply, writes a
module at once with ``IVEC``) and its recordings of a real chain (takeqontrol/api,
``progs/*.json``). Every failure (an error reply, a reply in no documented form, no
reply in time, a lost port) raises one InstrumentFault naming the instrument, the
command and the reply.
"""

from __future__ import annotations

import math
import re
import time
from statistics import median

import numpy as np
from pymeasure.adapters import SerialAdapter
from pymeasure.instruments import Channel, Instrument

from satlab.instruments import CurrentSource, InstrumentFault, WireTime, shown
from satlab.validation import OptionError, require_count, require_seconds

# qontrol.py's COMMON_ERRORS and Qx_ERRORS
ERRORS = {0: "unknown error", 1: "over-voltage", 2: "over-current", 3: "power error",
          4: "calibration error", 5: "output error", 10: "unrecognised command",
          11: "unrecognised parameter", 12: "unrecognised channel", 13: "operation forbidden",
          14: "serial buffer overflow", 15: "serial communication error", 16: "command timed out",
          17: "SPI error", 18: "ADC error", 19: "I2C error",
          30: "too many errors, some suppressed", 31: "firmware trap", 90: "powered up"}
RETRIED_ERRORS = {15}  # qontrol.py issues the command again after a serial comms error
_ERROR = re.compile(r"^[A-Za-z]{1,3}(\d+):(\d+)$")  # qontrol.py's ERROR_FORMAT: E02:04
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_QUANTITY = re.compile(rf"^({_NUMBER})(?: ?(mA|V))?$")  # +1.2345 mA, 24.000 mA, 1.5
_OK = re.compile(r"^\x06?OK$")  # nup=0 is answered with an ASCII ACK before the OK
_MODULE = re.compile(r"^([A-Za-z]+(\d+)[A-Za-z]*)-([0-9A-Fa-f]+|\*+)\s*:\s*(\d+)$")  # Q8iv-0001: 0
_ASRL = re.compile(r"^ASRL(.+)::INSTR$", re.IGNORECASE)
WRITE_MODES = ("auto", "vector", "channel")


def parse_quantity(reply: str, unit: str) -> float | None:
    """The number of a reply in a documented form (``+1.2345 mA``, ``24.000 mA``, a bare
    number), in ``unit``; None for anything else: another unit, garbage, NaN or inf."""
    match = _QUANTITY.match(reply.strip())
    if match is None or match.group(2) not in (None, unit):
        return None
    value = float(match.group(1))
    return value if math.isfinite(value) else None


def parse_module(line: str) -> tuple[str, int, int] | None:
    """One ``nupall?`` line as (id, channels, chain index); None if it is not one."""
    match = _MODULE.match(line.strip())
    if match is None:
        return None
    return f"{match.group(1)}-{match.group(3)}", int(match.group(2)), int(match.group(4))


def _unit(command: str) -> str:
    """The unit a query's reply carries: mA for currents, V for voltages."""
    return "mA" if command[:1].upper() == "I" else "V"


class Q8ivChannel(Channel):
    """One heater output (its index runs over the whole chain)."""

    current_mA = Channel.control("I{ch}?", "I{ch}=%.4f", "Output current setpoint; reads the "
                                 "measured current (mA).", check_set_errors=True)
    voltage_V = Channel.measurement("V{ch}?", "Measured output voltage (V).")
    current_limit_mA = Channel.control("IMAX{ch}?", "IMAX{ch}=%.4f", "Firmware current limit (mA).",
                                       check_set_errors=True)


class Q8iv(Instrument):
    """The Q8iv line protocol: ``\\n``-terminated ASCII, ``OK`` to every setting."""

    def __init__(self, adapter, address: str = "(no address)", **kwargs) -> None:
        super().__init__(adapter, f"Q8iv at {address}", includeSCPI=False, read_termination="\n",
                         write_termination="\n", **kwargs)
        self._last = "(opening)"
        self.identity = self.ask("id?")  # also the marker that resynchronises the line
        self.name = f"{self.identity} at {address}"
        # qontrol.py: nup=0 restarts the chain's enumeration, nupall? lists its modules
        for line in self.until_marker("nup=0"):  # an OK from each module
            if not _OK.match(line):
                raise InstrumentFault(self.name, "nup=0", f"expected OK, got {shown(line)}")
        self.chain = []
        for line in self.until_marker("nupall?"):
            module = parse_module(line)
            if module is None:
                raise InstrumentFault(self.name, "nupall?", f"not a module line: {shown(line)}")
            self.chain.append(module)
        self.n_channels = sum(channels for _, channels, _ in self.chain)
        if not self.n_channels:
            raise InstrumentFault(self.name, "nupall?", "no module in the chain")
        for ch in range(self.n_channels):
            self.add_child(Q8ivChannel, ch)

    def quantity(self, command: str) -> float:
        """A query answered by one number in its unit; any other reply is a fault."""
        return self._parsed(self.ask(command), _unit(command))

    def values(self, command: str, **kwargs) -> list:
        """What pymeasure's controls read: the reply's number, in its unit, checked."""
        return [self.quantity(command)]

    def quantities(self, command: str, count: int) -> list[float]:
        """A query answered by ``count`` lines (``Iall?``, ``Vall?``), each checked."""
        self.write(command)
        unit = _unit(command)
        return [self._parsed(self.read(), unit) for _ in range(count)]

    def until_marker(self, command: str) -> list[str]:
        """Send a command whose reply has as many lines as the chain has modules, then
        ``id?``: the lines before the identity answer are the command's, however many."""
        self.write(command)
        self.write("id?", drain=False)  # the command's first lines may be in already
        lines = []
        while (line := self.read()) != self.identity:
            if len(lines) > 256:
                raise InstrumentFault(self.name, command, "no end to the reply")
            lines.append(line)
        self._last = command
        return lines

    def write(self, command: str, drain: bool = True, **kwargs) -> None:
        """Send one command after reading whatever the device sent unprompted."""
        if drain:
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
                    raise InstrumentFault(self.name, self._last, f"reply cut off: {shown(raw)}",
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
        if not _OK.match(reply):
            raise InstrumentFault(self.name, self._last, f"expected OK, got {shown(reply)}",
                                  transient=True)
        return []

    def _parsed(self, reply: str, unit: str) -> float:
        value = parse_quantity(reply, unit)
        if value is None:
            raise InstrumentFault(self.name, self._last, f"expected a number in {unit}, got "
                                  f"{shown(reply)}", transient=True)
        return value

    def _raise_error_line(self, line: str, unprompted: bool = False) -> None:
        if match := _ERROR.match(line):
            code, ch = int(match.group(1)), int(match.group(2))
            what = f"error {line} ({ERRORS.get(code, 'unrecognised error code')}, {ch:02d})"
            raise InstrumentFault(self.name, "(unprompted)" if unprompted else self._last, what,
                                  transient=code in RETRIED_ERRORS)

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

    probe = ("serial", "id?", r"^Q8iv-(?:[0-9A-Fa-f]+|\*+)$")  # how `satlab instruments` knows one

    @staticmethod
    def check_options(baud_rate: int = 115200, timeout_s: float = 1.0, modules: int | None = None,
                      retries: int = 2, write_mode: str = "auto",
                      readback_tolerance_mA: float = 0.05) -> None:
        """Validate rig-file options before any port is opened."""
        require_count("baud_rate", baud_rate, 1)
        require_seconds("timeout_s", timeout_s)
        if modules is not None:
            require_count("modules", modules, 1)
        require_count("retries", retries, 0, highest=10)
        if write_mode not in WRITE_MODES:
            raise OptionError("write_mode", f"expected one of {', '.join(WRITE_MODES)}, "
                                            f"got {write_mode!r}")
        if not (isinstance(readback_tolerance_mA, (int, float))
                and not isinstance(readback_tolerance_mA, bool) and 0 < readback_tolerance_mA <= 1):
            raise OptionError("readback_tolerance_mA", f"expected mA in (0, 1], got "
                                                       f"{readback_tolerance_mA!r}")

    def __init__(self, address: str | None = None, baud_rate: int = 115200, timeout_s: float = 1.0,
                 modules: int | None = None, retries: int = 2, write_mode: str = "auto",
                 readback_tolerance_mA: float = 0.05, resource=None, adapter=None) -> None:
        """``address``: the serial port; or ``resource``: a simulated bench wired to an
        emulated chain (its ``port``), driven through the same serial protocol; or (tests)
        a pymeasure ``adapter``."""
        self.check_options(baud_rate, timeout_s, modules, retries, write_mode, readback_tolerance_mA)
        if sum(x is not None for x in (address, resource, adapter)) != 1:
            raise ValueError("give the Q8iv one of an address (its serial port), a resource "
                             "or an adapter")
        address = address if address is not None else getattr(resource, "port", "(adapter)")
        if adapter is None:
            try:  # exclusive: a second program on the line would steal and inject replies
                adapter = SerialAdapter(serial_port(address), baudrate=baud_rate, timeout=timeout_s,
                                        exclusive=True, read_termination="\n", write_termination="\n")
            except OSError as exc:  # pyserial's SerialException: no such port, busy, no permission
                raise InstrumentFault(f"Q8iv at {address}", "(opening the port)", str(exc)) from None
        self.retries, self.write_mode = retries, write_mode
        self.byte_s = 10 / baud_rate  # 8N1: a start bit, 8 data bits, a stop bit
        self.wire = WireTime()
        try:
            self.device = Q8iv(adapter, address)
            self.channels = self.device.n_channels
            chain = self.device.chain
            if modules is not None and len(chain) != modules:
                raise InstrumentFault(self.device.name, "nupall?", f"the chain has {len(chain)} "
                                      f"module(s) ({self._chain()}), but options.modules says "
                                      f"{modules}")
            starts = np.cumsum([0] + [channels for _, channels, _ in chain])
            self.modules = [range(a, b) for a, b in zip(starts[:-1], starts[1:])]
            answers, latencies = {}, []
            for command, query in (("ifull?", self.device.quantity), ("vfull?", self.device.quantity),
                                   ("firmware?", self.device.ask)):
                start = time.perf_counter()  # each timed, less its ~20 bytes: the line's latency
                answers[command] = query(command)
                latencies.append(time.perf_counter() - start - 20 * self.byte_s)
            self.max_current = answers["ifull?"] * 1e-3
            self.full_scale_V, self.firmware = answers["vfull?"], answers["firmware?"]
            self.latency_s = max(0.0, median(latencies))
        except BaseException:
            adapter.close()
            raise
        self.tolerance_mA = readback_tolerance_mA
        self._written = np.full(self.channels, np.nan)

    def _chain(self) -> str:
        return ", ".join(f"{name}: {index}" for name, _, index in self.device.chain)

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
        """The first module's id, the chain's size and full scale, and the chain."""
        return (f"{self.device.identity} {self.firmware} ({self.channels} channels, "
                f"{1e3 * self.max_current:g} mA / "
                f"{self.full_scale_V:g} V full scale; chain: {self._chain()})")

    def apply_limits(self, max_current: np.ndarray) -> None:
        """Program each channel's firmware limit (IMAX) to the rig file's, read back."""
        limits_mA = np.broadcast_to(max_current, self.channels) * 1e3
        for k, (ch, limit_mA) in enumerate(zip(self.device.channels.values(), limits_mA)):
            self._retrying(lambda: setattr(ch, "current_limit_mA", float(limit_mA)))
            got = self._retrying(lambda: self.device.quantity(f"IMAX{k}?"))
            if abs(got - limit_mA) > 1e-4:  # a setting is stored as sent, to 4 decimals
                raise InstrumentFault(self.device.name, f"IMAX{k}?", f"read back {got:g} mA after "
                                      f"setting {limit_mA:g} mA")

    def set_currents(self, currents: np.ndarray) -> None:
        """Write every channel whose setpoint changes (a module at once where that costs the
        line less), then read them back."""
        currents = np.asarray(currents, dtype=float)
        changed = np.flatnonzero(~(currents == self._written))
        if changed.size:
            start = time.perf_counter()
            self._apply(currents, changed, self.write_mode)
            self.wire.add("write", time.perf_counter() - start)

    def _apply(self, currents: np.ndarray, changed: np.ndarray, mode: str) -> None:
        """Write ``changed`` channels (whole modules, where a vector is chosen), then verify
        every channel written."""
        target_mA = currents * 1e3
        written: list[int] = []
        for module in self.modules:
            here = changed[(changed >= module.start) & (changed < module.stop)]
            if not here.size:
                continue
            if mode == "vector" or (mode == "auto" and self._vector_pays(module, here, target_mA)):
                written += module
                self._written[list(module)] = np.nan  # unknown until the read-back agrees
                command = f"IVEC{module[0]}=" + ",".join(f"{target_mA[k]:.4f}" for k in module)
                self._retrying(lambda: self._set(command))
            else:
                for k in here:
                    written.append(int(k))
                    self._written[k] = np.nan
                    ch = self.device.channels[k]
                    self._retrying(lambda: setattr(ch, "current_mA", target_mA[k]))
        self._verify(target_mA, written, mode)
        self._written[written] = currents[written]

    def _set(self, command: str) -> None:
        self.device.write(command)
        self.device.check_set_errors()

    def _verify(self, target_mA: np.ndarray, written: list[int], mode: str) -> None:
        """Read back what was written: one ``Iall?`` or one ``I<ch>?`` each, whichever is
        cheaper on the line (``channel`` mode: always per channel)."""
        reading_all = mode == "vector" or (mode == "auto" and self._cost(1, 6 + 12 * self.channels)
                                            < self._cost(len(written), 17 * len(written)))
        if reading_all:
            got = self._retrying(lambda: self.device.quantities("Iall?", self.channels))
            readings = [("Iall?", k, got[k]) for k in written]
        else:
            readings = [(f"I{k}?", k, self._retrying(lambda: self.device.quantity(f"I{k}?")))
                        for k in written]
        for command, k, got_mA in readings:
            if abs(got_mA - target_mA[k]) > self.tolerance_mA:
                raise InstrumentFault(self.device.name, command, f"channel {k} reads {got_mA:.4f} mA "
                                      f"after setting {target_mA[k]:.4f} mA")

    def _cost(self, exchanges: int, nbytes: int) -> float:
        return exchanges * self.latency_s + nbytes * self.byte_s

    def _vector_pays(self, module: range, here: np.ndarray, target_mA: np.ndarray) -> bool:
        """Whether one IVEC for the module costs the line less than one I= per channel."""
        vector = len(f"IVEC{module[0]}=") + sum(len(f"{target_mA[k]:.4f},") for k in module) + 3
        singles = sum(len(f"I{k}={target_mA[k]:.4f}\n") + 3 for k in here)
        return self._cost(1, vector) < self._cost(len(here), singles)

    def get_currents(self) -> np.ndarray:
        """Every channel's measured current (A), one ``Iall?``."""
        start = time.perf_counter()
        values = self._retrying(lambda: self.device.quantities("Iall?", self.channels))
        self.wire.add("read", time.perf_counter() - start)
        return np.array(values) * 1e-3

    def set_output(self, enabled: bool) -> None:
        """The Q8iv has no output switch: off means every channel at zero."""
        if not enabled:
            self.set_currents(np.zeros(self.channels))

    def safe_state(self) -> None:
        """Every channel to zero, read back, a module at a time and, should a module's write
        fault, a channel at a time: one failing channel does not stop the others."""
        failures = []
        zero = np.zeros(self.channels)
        for module in self.modules:
            try:
                self._apply(zero, np.array(module), self.write_mode)
                continue
            except InstrumentFault:
                pass  # each channel on its own, below: the fault that counts is a channel's
            for k in module:
                try:
                    self._apply(zero, np.array([k]), "channel")
                except InstrumentFault as fault:
                    failures.append(fault)
        if failures:
            raise failures[0]

    def close(self) -> None:
        """Release the serial port."""
        self.device.adapter.close()
