"""Find instruments: list serial ports and VISA resources, ask each who it is, and write
a rig-file snippet for every one a registered driver recognises.

A driver takes part by declaring ``probe = (bus, query, pattern)``: bus ``"serial"``
(the query is sent at the driver's baud rate) or ``"visa"``, and a regular expression
its identification reply matches. Asking is polite: one short query per port, a short
timeout, nothing written that changes a setting.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import serial
import serial.tools.list_ports

from satlab import registry


@dataclass
class Found:
    """One answer: where, what it said, and the driver that recognised it (if any)."""

    address: str
    reply: str
    driver: str | None = None


def probing_drivers() -> dict[str, tuple[str, str, re.Pattern]]:
    """Registered drivers that declare how to recognise their instrument."""
    probes = {}
    for name in registry.available():
        try:
            probe = getattr(registry.lookup(name), "probe", None)
        except Exception:  # a plugin that does not import (a missing extra) recognises nothing
            continue
        if probe is not None:
            bus, query, pattern = probe
            probes[name] = (bus, query, re.compile(pattern))
    return probes


def _recognise(reply: str, bus: str, probes: dict) -> str | None:
    return next((name for name, (b, _, pattern) in probes.items()
                 if b == bus and pattern.search(reply)), None)


def ask_serial(port: str, query: str, timeout_s: float, baud_rate: int = 115200) -> str:
    """One query on a serial port; the first reply line ('' for silence or an error)."""
    try:
        # exclusive: never a second program on a port a rig holds (its replies are not ours)
        with serial.Serial(port, baud_rate, timeout=timeout_s, write_timeout=timeout_s,
                           exclusive=True) as line:
            line.reset_input_buffer()
            line.write(f"{query}\n".encode("ascii"))
            return line.readline().decode("ascii", "replace").strip()
    except (OSError, ValueError):
        return ""


def scan_serial(extra_ports: list[str], timeout_s: float, probes: dict,
                system_ports: bool = True) -> list[Found]:
    """Every serial port (the OS's list, unless not ``system_ports``, plus ``extra_ports``),
    asked each serial query."""
    listed = [p.device for p in serial.tools.list_ports.comports()] if system_ports else []
    ports = listed + list(extra_ports)
    found = []
    for port in dict.fromkeys(ports):
        replies = [ask_serial(port, query, timeout_s) for query in
                   dict.fromkeys(q for b, q, _ in probes.values() if b == "serial")]
        reply = next((r for r in replies if r), "")
        found.append(Found(port, reply, _recognise(reply, "serial", probes) if reply else None))
    return found


DEFAULT_BACKENDS = ("@ivi", "@py")  # an installed vendor VISA, then pyvisa-py


def scan_visa(backends: list[str], timeout_s: float, probes: dict) -> tuple[list[Found], list[str]]:
    """Every VISA resource each backend lists (``@ivi``, ``@py``, ``file.yaml@sim``), asked
    ``*IDN?``; one note per backend says what it saw, or why it could not look."""
    import pyvisa

    found, notes = [], []
    for backend in backends:
        suffix = "@" + backend.rpartition("@")[2]  # the address suffix that opens it again
        with warnings.catch_warnings(record=True) as caught:  # pyvisa-py's missing helpers
            warnings.simplefilter("always")
            try:
                manager = pyvisa.ResourceManager(backend)
                resources = manager.list_resources()
            except (ValueError, OSError, pyvisa.Error) as exc:
                reason = ("no IVI VISA library is installed (NI-VISA, Keysight IO Libraries Suite, "
                          "R&S VISA)" if backend == "@ivi" and isinstance(exc, OSError)
                          else (str(exc).strip().splitlines() or [type(exc).__name__])[0])
                notes.append(f"{suffix}: not available: {reason}")
                continue
        # serial ports are the serial scan's: a *IDN? there would reach instruments that
        # speak no SCPI (and ports the user did not list with --only)
        resources = [r for r in resources if not r.upper().startswith("ASRL")]
        limited = [w for w in caught if issubclass(w.category, UserWarning)]
        notes.append(f"{suffix}: {len(resources)} resource(s) listed"
                     + (" (discovery limited: pip install 'satlab[visa]' adds pyvisa-py's USB, "
                        "all-interface VXI-11 and HiSLIP discovery)" if limited else ""))
        for resource in resources:
            try:
                with manager.open_resource(resource, timeout=int(timeout_s * 1000),
                                           read_termination="\n", write_termination="\n") as inst:
                    reply = inst.query("*IDN?").strip()
            except (pyvisa.Error, OSError, ValueError):
                reply = ""
            found.append(Found(f"{resource}{suffix}", reply,
                               _recognise(reply, "visa", probes) if reply else None))
    return found, notes


def rig_snippet(found: Found, name: str) -> str:
    """The instruments: entry for a recognised instrument (limits to be set by hand)."""
    kind = registry.lookup(found.driver).kind
    lines = [f"  {name}:", f"    kind: {kind}",
             f"    driver: {found.driver}", f"    address: \"{found.address}\""]
    if kind == "current_source":
        lines.append("    limits: {max_current: 0.001}  # A per channel: set your device's limit")
    return "\n".join(lines)
