"""A run's live/status.json read defensively: whatever is there and well-typed, nothing else.

The training process rewrites the file while the page reads it, an older satlab writes
fewer keys, a hand-edited one anything: every key is checked for its type here and
dropped if it does not fit, so the page's code only ever meets the documented shapes.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any

from satlab.live_files import STATUS_FILE

MAX_BYTES = 32 * 1024 * 1024  # published heat maps are at most 64x64 per layer; far beyond is not a status
MAX_TEXT = 4000  # an error message or identity longer than this is cut for the page
MAX_ITEMS = 1 << 20
COMMANDS_SHOWN = 50


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        value = float(v)  # an integer literal of 400 digits: OverflowError
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _str(v: Any) -> str | None:
    return v[:MAX_TEXT] if isinstance(v, str) else None


def _floats(v: Any) -> list[float | None] | None:
    """A list of numbers (a non-finite one as None, so a plot shows a gap); None if not a list."""
    if not isinstance(v, list):
        return None
    return [_float(x) for x in v[:MAX_ITEMS]]


def _pick(raw: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``raw`` whose value passes its field's check (a function or a nested dict)."""
    if not isinstance(raw, dict):
        return {}
    out = {}
    for key, check in fields.items():
        if key not in raw:
            continue
        value = _pick(raw[key], check) if isinstance(check, dict) else check(raw[key])
        if value is not None:
            out[key] = value
    return out


def _list_of(fields: dict[str, Any], last: int = MAX_ITEMS):
    def check(v: Any) -> list[dict] | None:
        return [_pick(x, fields) for x in v[-last:] if isinstance(x, dict)] if isinstance(v, list) else None
    return check


def _map_of(fields: dict[str, Any]):
    def check(v: Any) -> dict[str, dict] | None:
        if not isinstance(v, dict):
            return None
        return {str(k)[:200]: _pick(x, fields) for k, x in list(v.items())[:MAX_ITEMS] if isinstance(x, dict)}
    return check


def _fractions(v: Any) -> list[float | None] | None:
    """Control fractions, clipped to [0, 1] (the colour scale's range)."""
    values = _floats(v)
    return None if values is None else [None if x is None else min(max(x, 0.0), 1.0) for x in values]


def _travel(v: Any) -> list[float] | None:
    values = _floats(v)
    return values if values is not None and len(values) == 2 and None not in values else None


def _region(v: Any) -> list[float] | None:
    values = _floats(v)
    return values if values is not None and len(values) == 4 and None not in values else None


def _regions(v: Any) -> list[list[float]] | None:
    return [r for r in map(_region, v[:MAX_ITEMS]) if r is not None] if isinstance(v, list) else None


CONTROLS = {"rows": _int, "cols": _int, "fraction": _fractions, "min": _float, "max": _float,
            "lower": _float, "upper": _float}
POWER = {"used": _float, "budget": _float, "unit": _str}
KNOB = {"positioner": _str, "axis": _str, "position": _float, "travel": _travel}
LAYER = {"name": _str, "quantity": _str, "unit": _str, "queries": _int, "rig_seconds": _float,
         "controls": CONTROLS, "power": POWER, "knobs": _list_of(KNOB)}
CAMERA = {"instrument": _str, "frame": _str, "rows": _int, "cols": _int, "regions": _regions,
          "updated": _float}
STATUS = {
    "version": _int, "pid": _int, "host": _str, "run": _str, "config": _str, "method": _str,
    "estimator": _str, "state": _str, "error": _str, "updated": _float, "started": _float,
    "epoch": _int, "step": _int, "steps_per_epoch": _int, "epochs": _int, "loss": _float,
    "accuracy": _float, "rig_queries": _int, "rig_seconds": _float, "wall_seconds": _float,
    "layers": _list_of(LAYER),
    "detectors": _map_of({"values": _floats, "unit": _str}),
    "camera": CAMERA,
    "instruments": _map_of({"identity": _str, "fault": _str}),
    "commands": _list_of({"time": _float, "instrument": _str, "action": _str, "value": _str},
                         last=COMMANDS_SHOWN),
}


def normalize(raw: Any) -> dict[str, Any]:
    """The well-typed part of a decoded status file (an empty dict for anything but a mapping)."""
    return _pick(raw, STATUS)


def read_status(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(status, None) for a readable file; (None, why not) for a missing, empty, oversized,
    half-written or malformed one. Never raises: whatever the file holds, the page gets a note."""
    try:
        return _read_status(path)
    except Exception as exc:  # noqa: BLE001 (a case no check foresaw: a note, not a broken page)
        return None, f"{STATUS_FILE} could not be read: {type(exc).__name__}: {str(exc)[:200]}"


def _read_status(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{STATUS_FILE} cannot be read: {exc.strerror or exc}"
    if len(data) > MAX_BYTES:
        return None, f"{STATUS_FILE} is larger than {MAX_BYTES >> 20} MiB: not shown"
    if not data.strip():
        return None, f"{STATUS_FILE} is empty (being written?)"
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, f"{STATUS_FILE} is not valid JSON (being written?): {str(exc)[:200]}"
    if not isinstance(raw, dict):
        return None, f"{STATUS_FILE} holds a {type(raw).__name__}, not a mapping"
    return normalize(raw), None


def process_gone(status: dict[str, Any]) -> bool:
    """A status that says running, written on this machine by a process that no longer
    exists (killed without a chance to say so): not running, and nothing to stop."""
    pid = status.get("pid")
    if status.get("state") != "running" or pid is None or pid <= 0:
        return False
    if status.get("host") != socket.gethostname():
        return False  # another machine's process (or an unnamed one): its pid says nothing here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        return False  # PermissionError: it exists, as another user
    return False
