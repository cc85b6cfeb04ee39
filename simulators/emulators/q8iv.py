"""A Qontrol Q8iv-class heater driver on a pseudo-terminal: a real OS serial port.

Every reply is written from Qontrol's own material, never from satlab's driver:
recordings of a real two-module Q8iv chain (firmware v2.4.1) in the vendor's repository
takeqontrol/api (``progs/*.json``, ``log.txt``, ``ref_log.txt``), the vendor's Python
API ``qontrol.py`` 1.1.20 (how it parses each reply, ``set_all_values`` for vectors) and
the firmware's own ``HELP?`` text. docs/instruments.md has the table.

- Lines end in ``\\n``; commands are case-insensitive (the recordings send ``iall?``,
  ``IALL?`` and ``Iall?`` alike).
- A quantity is signed, 4 decimals, a space and its unit: ``+12.0000 V``, ``-0.0036 mA``.
- A setting is answered ``OK``; ``nup=0`` is answered ``\\x06OK`` once per module.
- ``nupall?`` answers one ``<type>-<serial>: <index>`` per module (``Q8iv-****`` before
  a serial is assigned); ``nchan?`` the addressed module's 8; ``Iall?``/``Vall?`` one
  line per channel of the chain.
- ``IVEC<ch>=a,b,...`` (``VVEC``) sets a module's channels from its first one, the form
  the vendor API's ``set_all_values`` sends.
- Errors are ``E<code>:<nn>``, two digits each: 01 over-voltage, 02 over-current, 10
  unrecognised command, 11 unrecognised parameter, 12 unrecognised channel.
- A current reading is a measurement: the setpoint plus the channel's ADC offset, which
  the recordings show within +-0.012 mA of zero.

The line can be paced like the real one (``baud_rate``: 10 bits a byte, 8N1), with the
firmware's ``reply_latency_s`` and a USB-serial adapter's latency timer (replies reach
the host at its next tick: the recorded delays climb and fall in a 16 ms saw-tooth).
Faults can be injected: error lines that arrive unprompted, a slow reply, lost replies
and a dropped connection.
"""

from __future__ import annotations

import os
import re
import threading
import time
import tty
from collections.abc import Callable

import numpy as np

from satlab.validation import OptionError, require_count

OVER_VOLTAGE, OVER_CURRENT, UNKNOWN_COMMAND, BAD_PARAMETER, BAD_CHANNEL = 1, 2, 10, 11, 12
CHANNELS_PER_MODULE = 8
FIRMWARE = "v2.4.1"  # the recorded chain's
OFFSET_SPREAD_MA = 0.012  # recorded readings of channels at zero: -0.0112 to +0.0017 mA
_COMMAND = re.compile(r"^([A-Z]+?)(\d*)(\?|=(.*))$")
_SETTINGS = {"I", "V", "IMAX", "VMAX"}


def quantity(value: float, unit: str) -> str:
    """A value as the firmware prints it: ``+1.2345 mA``."""
    return f"{value:+.4f} {unit}"


def error(code: int, channel: int = 0) -> str:
    """An error line as the firmware prints it: ``E02:04``."""
    return f"E{code:02d}:{channel:02d}"


class Q8ivEmulator:
    """The device state and its replies; ``start`` serves them on a new pty."""

    def __init__(self, modules: int = 1, heater_ohm: float = 500.0, full_scale_mA: float = 24.0,
                 full_scale_V: float = 12.0, serial: int = 1, baud_rate: int | None = None,
                 reply_latency_s: float = 0.0, latency_timer_s: float = 0.0) -> None:
        self.modules = modules
        self.channels = modules * CHANNELS_PER_MODULE
        self.heater_ohm, self.full_scale_mA, self.full_scale_V = heater_ohm, full_scale_mA, full_scale_V
        self.serials = [serial + k for k in range(modules)]
        self.current_mA = [0.0] * self.channels
        self.imax_mA = [full_scale_mA] * self.channels
        self.vmax_V = [full_scale_V] * self.channels
        # each channel's ADC offset, fixed for the emulated device (seeded by its serial)
        self.offset_mA = np.random.default_rng(serial).uniform(
            -OFFSET_SPREAD_MA, OFFSET_SPREAD_MA, self.channels).round(4).tolist()
        self.byte_s = 10 / baud_rate if baud_rate else 0.0
        self.reply_latency_s, self.latency_timer_s = reply_latency_s, latency_timer_s
        self.reply_delay_s = 0.0  # injected: a slow reply
        self.swallow_replies = 0  # injected: the next n replies are lost on the line
        self.drop_after_commands: int | None = None  # injected: the cable comes out
        self.commands: list[str] = []  # every line received, for tests
        self.on_change: Callable[[int, float], None] | None = None  # (channel, mA) once applied
        self._lock = threading.Lock()
        self._master: int | None = None
        self._epoch = time.perf_counter()
        self._rx_free = self._tx_free = 0.0  # when each direction of the line is idle again
        self.port: str | None = None

    # -- the protocol -------------------------------------------------------------
    def reply(self, line: str) -> list[str]:
        """The lines the device answers to one command line."""
        with self._lock:
            self.commands.append(line)
            match = _COMMAND.match(line.upper())
            if match is None:
                return [error(UNKNOWN_COMMAND)]
            name, ch, op, value = match.group(1), match.group(2), match.group(3)[0], match.group(4)
            return self._set(name, ch, value) if op == "=" else self._query(name, ch)

    def _query(self, name: str, ch: str) -> list[str]:
        if not ch:
            answer = {"ID": lambda: [self._module(0)], "NCHAN": lambda: [str(CHANNELS_PER_MODULE)],
                      "IFULL": lambda: [quantity(self.full_scale_mA, "mA")],
                      "VFULL": lambda: [quantity(self.full_scale_V, "V")],
                      "FIRMWARE": lambda: [FIRMWARE],
                      "LIFETIME": lambda: [f"{int(time.perf_counter() - self._epoch)} s"],
                      "NUP": lambda: [f"{self._module(0)}: 0"],
                      "NUPALL": lambda: [f"{self._module(k)}: {k}" for k in range(self.modules)]}
            if name in answer:
                return answer[name]()
            if name.endswith("ALL") and name[:-3] in _SETTINGS:
                return [self._value(name[:-3], k) for k in range(self.channels)]
            return [error(UNKNOWN_COMMAND)]
        if name not in _SETTINGS:
            return [error(UNKNOWN_COMMAND)]
        if int(ch) >= self.channels:
            return [error(BAD_CHANNEL, int(ch))]
        return [self._value(name, int(ch))]

    def _module(self, k: int) -> str:
        return f"Q8iv-{self.serials[k]:04d}"

    def _value(self, name: str, ch: int) -> str:
        if name == "I":
            return quantity(self.current_mA[ch] + self.offset_mA[ch], "mA")
        if name == "V":
            return quantity(self.current_mA[ch] * 1e-3 * self.heater_ohm, "V")
        return quantity(self.imax_mA[ch], "mA") if name == "IMAX" else quantity(self.vmax_V[ch], "V")

    def _set(self, name: str, ch: str, text: str) -> list[str]:
        if name == "NUP" and not ch:
            return ["\x06OK"] * self.modules
        return [self._setting(name, ch, text)]

    def _setting(self, name: str, ch: str, text: str) -> str:
        vector = name in ("IVEC", "VVEC")
        if not ch or not (vector or name in _SETTINGS):
            return error(UNKNOWN_COMMAND)
        first = int(ch)
        try:
            values = [float(v) for v in text.split(",")] if vector else [float(text)]
        except ValueError:
            return error(BAD_PARAMETER, 3)  # the recorded code for 'nup=' and 'vall=hello'
        if first >= self.channels:
            return error(BAD_CHANNEL, first)
        # a vector stays within the module of its first channel (the API sends one a module)
        if vector and (first % CHANNELS_PER_MODULE + len(values) > CHANNELS_PER_MODULE):
            return error(BAD_PARAMETER, 3)
        if not all(v >= 0 for v in values):  # negative or NaN
            return error(BAD_PARAMETER, 3)
        kind = name[0] if vector else name
        channels = range(first, first + len(values))
        if kind in ("I", "V"):  # a vector is applied whole or not at all
            currents = values if kind == "I" else [v / self.heater_ohm * 1e3 for v in values]
            for k, mA in zip(channels, currents):
                if mA > self.imax_mA[k]:
                    return error(OVER_CURRENT, k)
                if mA * 1e-3 * self.heater_ohm > self.vmax_V[k]:
                    return error(OVER_VOLTAGE, k)
            for k, mA in zip(channels, currents):
                self.current_mA[k] = mA
                if self.on_change is not None:
                    self.on_change(k, mA)
        elif kind == "IMAX":
            self.imax_mA[first] = min(values[0], self.full_scale_mA)
        else:
            self.vmax_V[first] = min(values[0], self.full_scale_V)
        return "OK"

    # -- the port -------------------------------------------------------------------
    def start(self) -> str:
        """Open a pty, serve it from a daemon thread, return the port's path."""
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: bytes pass as on a serial line
        self._master, self.port = master, os.ttyname(slave)
        self._slave = slave  # kept open so the port stays valid between client connections
        self._thread = threading.Thread(target=self._serve, name="q8iv-emulator", daemon=True)
        self._thread.start()
        return self.port

    def _serve(self) -> None:
        buffer = b""
        while (master := self._master) is not None:  # one read of the shared fd per turn
            try:
                chunk = os.read(master, 4096)
            except OSError:  # dropped
                return
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                # the host wrote the line at once; on the wire its bytes follow one another
                self._rx_free = max(time.perf_counter(), self._rx_free) + (len(raw) + 1) * self.byte_s
                line = raw.decode("ascii", "replace").strip()
                if not line:
                    continue
                if self.drop_after_commands is not None and len(self.commands) >= self.drop_after_commands:
                    self.drop()
                    return
                answer = "\n".join(self.reply(line)) + "\n"
                if self.swallow_replies:
                    self.swallow_replies -= 1
                    continue
                ready = self._rx_free + self.reply_latency_s + self.reply_delay_s
                self._tx_free = max(ready, self._tx_free) + len(answer) * self.byte_s
                self._pause_until(self._tx_free)
                self.send(answer[:-1])

    def _pause_until(self, done: float) -> None:
        """Wait until a reply sent out at ``done`` reaches the host (the adapter's next tick)."""
        if self.latency_timer_s:
            ticks = -(-(done - self._epoch) // self.latency_timer_s)
            done = self._epoch + ticks * self.latency_timer_s
        wait = done - time.perf_counter()
        if wait > 0:
            time.sleep(wait)

    def send(self, *lines: str) -> None:
        """Write lines to the port, e.g. an unprompted error ``E02:03``."""
        master = self._master
        if master is not None:
            try:
                os.write(master, "".join(f"{line}\n" for line in lines).encode("ascii"))
            except OSError:  # dropped meanwhile: nobody hears it, as on a cut cable
                pass

    def drop(self) -> None:
        """The cable comes out: the port stops answering and reads fail."""
        master, self._master = self._master, None
        if master is not None:
            os.close(master)

    def stop(self) -> None:
        """Close both ends of the pty and wait for the serving thread to end."""
        self.drop()
        if getattr(self, "_slave", None) is not None:
            os.close(self._slave)
            self._slave = None
        thread = getattr(self, "_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


def check_line_options(baud_rate: int | None = None, reply_latency_s: float = 0.0,
                       latency_timer_s: float = 0.0) -> None:
    """Validate an emulated line's pacing options (rig-file options)."""
    if baud_rate is not None:
        require_count("baud_rate", baud_rate, 1)
    for name, value in (("reply_latency_s", reply_latency_s), ("latency_timer_s", latency_timer_s)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
            raise OptionError(name, f"expected seconds in [0, 1], got {value!r}")


class Q8ivChain(Q8ivEmulator):
    """An emulated chain as a rig file's resource: serving its pty from the moment the rig
    builds it, closed with the rig; a ``qontrol.q8iv`` instrument names it as ``resource``."""

    @staticmethod
    def check_options(modules: int = 1, baud_rate: int | None = None, reply_latency_s: float = 0.0,
                      latency_timer_s: float = 0.0) -> None:
        """Validate rig-file options without starting a chain."""
        require_count("modules", modules, 1, highest=256)
        check_line_options(baud_rate, reply_latency_s, latency_timer_s)

    def __init__(self, modules: int = 1, baud_rate: int | None = None, reply_latency_s: float = 0.0,
                 latency_timer_s: float = 0.0) -> None:
        super().__init__(modules=modules, baud_rate=baud_rate, reply_latency_s=reply_latency_s,
                         latency_timer_s=latency_timer_s)
        self.start()

    def close(self) -> None:
        """Stop serving."""
        self.stop()
