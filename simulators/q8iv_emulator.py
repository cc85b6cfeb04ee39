"""A Qontrol Q8iv-class heater driver on a pseudo-terminal: a real OS serial port.

The emulator speaks the driver's line protocol (115200 8N1 on hardware; ``\\n``
terminated ASCII) so that satlab's Q8iv driver runs through pyserial exactly as it
would on a /dev/ttyUSB port. Each module of the daisy chain has 8 channels; each
channel drives a heater of ``heater_ohm`` ohms and obeys its current limit (IMAX) and
the full-scale voltage. Faults can be injected: error lines that arrive unprompted, a
slow reply, and a dropped connection.

Replies: ``I<ch>=<mA>`` and ``IMAX<ch>=``/``VMAX<ch>=`` answer ``OK``; ``I<ch>?``,
``V<ch>?``, ``IMAX<ch>?``, ``VMAX<ch>?``, ``id?``, ``nchan?``, ``ifull?``, ``vfull?``
one line; ``Iall?``/``Vall?`` one line per channel; ``nup=0`` then ``nupall?`` one line
``<type>-<serial> : <index>`` per module. Errors are ``E<code>:<ch>``: 1 over-voltage,
2 over-current, 10 unknown command, 11 bad parameter, 12 bad channel.
"""

from __future__ import annotations

import os
import re
import threading
import time
import tty
from collections.abc import Callable

OVER_VOLTAGE, OVER_CURRENT, UNKNOWN_COMMAND, BAD_PARAMETER, BAD_CHANNEL = 1, 2, 10, 11, 12
CHANNELS_PER_MODULE = 8
_SET = re.compile(r"^(I|IMAX|VMAX)(\d+)=(.*)$")
_GET = re.compile(r"^(I|V|IMAX|VMAX)(\d+)\?$")


class Q8ivEmulator:
    """The device state and its replies; ``start`` serves them on a new pty."""

    def __init__(self, modules: int = 1, heater_ohm: float = 500.0, full_scale_mA: float = 24.0,
                 full_scale_V: float = 12.0, serial: int = 1) -> None:
        self.modules = modules
        self.channels = modules * CHANNELS_PER_MODULE
        self.heater_ohm, self.full_scale_mA, self.full_scale_V = heater_ohm, full_scale_mA, full_scale_V
        self.serials = [serial + k for k in range(modules)]
        self.current_mA = [0.0] * self.channels
        self.imax_mA = [full_scale_mA] * self.channels
        self.vmax_V = [full_scale_V] * self.channels
        self.reply_delay_s = 0.0  # injected: a slow reply
        self.swallow_replies = 0  # injected: the next n replies are lost on the line
        self.drop_after_commands: int | None = None  # injected: the cable comes out
        self.commands: list[str] = []  # every line received, for tests
        self.on_change: Callable[[int, float], None] | None = None  # (channel, mA) once applied
        self._lock = threading.Lock()
        self._master: int | None = None
        self.port: str | None = None

    # -- the protocol -------------------------------------------------------------
    def reply(self, line: str) -> list[str]:
        """The lines the device answers to one command line."""
        with self._lock:
            self.commands.append(line)
            if line == "id?":
                return [f"Q8iv-{self.serials[0]:04d}"]
            if line == "nchan?":
                return [str(self.channels)]
            if line == "ifull?":
                return [f"{self.full_scale_mA:g}"]
            if line == "vfull?":
                return [f"{self.full_scale_V:g}"]
            if line == "nup=0":
                return ["OK"]
            if line == "nupall?":
                return [f"Q8iv-{s:04d} : {k}" for k, s in enumerate(self.serials)]
            if line in ("Iall?", "Vall?"):
                return [f"{v:.4f}" for v in (self.current_mA if line == "Iall?" else self._volts())]
            if match := _GET.match(line):
                name, ch = match.group(1), int(match.group(2))
                if ch >= self.channels:
                    return [f"E{BAD_CHANNEL}:{ch}"]
                value = {"I": self.current_mA, "V": self._volts(), "IMAX": self.imax_mA,
                         "VMAX": self.vmax_V}[name][ch]
                return [f"{value:.4f}"]
            if match := _SET.match(line):
                return [self._set(match.group(1), int(match.group(2)), match.group(3))]
            return [f"E{UNKNOWN_COMMAND}:0"]

    def _set(self, name: str, ch: int, text: str) -> str:
        if ch >= self.channels:
            return f"E{BAD_CHANNEL}:{ch}"
        try:
            value = float(text)
        except ValueError:
            return f"E{BAD_PARAMETER}:{ch}"
        if not value >= 0:  # negative or NaN
            return f"E{BAD_PARAMETER}:{ch}"
        if name == "IMAX":
            self.imax_mA[ch] = min(value, self.full_scale_mA)
        elif name == "VMAX":
            self.vmax_V[ch] = min(value, self.full_scale_V)
        elif value > self.imax_mA[ch]:
            return f"E{OVER_CURRENT}:{ch}"
        elif value * 1e-3 * self.heater_ohm > self.vmax_V[ch]:
            return f"E{OVER_VOLTAGE}:{ch}"
        else:
            self.current_mA[ch] = value
            if self.on_change is not None:
                self.on_change(ch, value)
        return "OK"

    def _volts(self) -> list[float]:
        return [i * 1e-3 * self.heater_ohm for i in self.current_mA]

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
                line = raw.decode("ascii", "replace").strip()
                if not line:
                    continue
                if self.drop_after_commands is not None and len(self.commands) >= self.drop_after_commands:
                    self.drop()
                    return
                answer = self.reply(line)
                if self.reply_delay_s:
                    time.sleep(self.reply_delay_s)
                if self.swallow_replies:
                    self.swallow_replies -= 1
                    continue
                self.send(*answer)

    def send(self, *lines: str) -> None:
        """Write lines to the port, e.g. an unprompted error ``E2:3``."""
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
