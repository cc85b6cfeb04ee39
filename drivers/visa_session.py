"""Opening a VISA instrument from a rig-file address, with no stale replies in the way.

An address may end in the VISA backend to open it with: ``@py`` (pyvisa-py, no vendor
software), ``@ivi`` (an installed IVI VISA: NI-VISA, Keysight IO Libraries, R&S VISA) or
``@sim`` (pyvisa-sim with the YAML the driver ships). Without one, pyvisa chooses: an
IVI VISA if one is installed, else pyvisa-py. A pymeasure adapter (in tests) passes
through unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pyvisa
from pymeasure.adapters import Adapter, VISAAdapter


def open_adapter(address, simulation: Path, timeout_s: float) -> Adapter:
    """A VISA adapter for ``address``, emptied of replies an earlier session left unread."""
    if isinstance(address, Adapter):
        return address
    resource, backend = split_backend(address)
    visa = {"visa_library": f"{simulation}@sim" if backend == "@sim" else backend} if backend else {}
    adapter = VISAAdapter(resource, timeout=int(timeout_s * 1000), read_termination="\n",
                          write_termination="\n", **visa)
    try:
        discard_stale_replies(adapter)
    except BaseException:
        adapter.close()  # the caller never receives it: nobody else could close it
        raise
    return adapter


BACKENDS = ("@py", "@ivi", "@sim")


def split_backend(address: str) -> tuple[str, str | None]:
    """``GPIB0::24::INSTR@py`` as (``GPIB0::24::INSTR``, ``@py``); no suffix: None."""
    resource, at, backend = address.rpartition("@")
    return (resource, f"@{backend}") if at and f"@{backend}" in BACKENDS else (address, None)


def discard_stale_replies(adapter: Adapter) -> None:
    """Read and drop what a crashed or faulted session left in the output queue: it would
    otherwise answer this session's first query."""
    if not isinstance(adapter, VISAAdapter):  # a test's protocol adapter holds no queue
        return
    connection = adapter.connection
    timeout, connection.timeout = connection.timeout, 50
    try:
        for _ in range(1000):
            connection.read()
    except pyvisa.errors.VisaIOError:  # nothing left: the read timed out
        pass
    finally:
        connection.timeout = timeout


def with_serial(name: str, idn: str) -> str:
    """``Keithley 2400 at GPIB0::24::INSTR`` with the serial number of a ``*IDN?`` reply
    (its third field): ``Keithley 2400 #1248014 at GPIB0::24::INSTR``."""
    fields = [field.strip() for field in idn.split(",")]
    if len(fields) < 3 or not fields[2] or " at " not in name or "#" in name:
        return name
    model, _, where = name.partition(" at ")
    return f"{model} #{fields[2]} at {where}"
