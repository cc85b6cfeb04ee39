"""JSON as the standard defines it: NaN and infinities written as null, never as bare words."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from satlab import atomic_file


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Indented (``indent=None``: compact), strictly valid JSON (a diverged loss is written as null)."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False)


def write_atomic(path: Path, obj: Any, indent: int | None = 2, durable: bool = True) -> None:
    """``path`` replaced whole by ``dumps(obj)``; ``durable``: on disk before the rename
    (a result), else only atomic (a status)."""
    atomic_file.write_text(path, dumps(obj, indent), durable)
