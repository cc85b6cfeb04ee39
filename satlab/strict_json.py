"""JSON as the standard defines it: NaN and infinities written as null, never as bare words."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


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
    """Write ``dumps(obj)`` so that readers see the old file or the whole new one, never a part;
    ``durable``: on disk before the rename (a result), else only atomic (a status replaced
    several times a second, where an fsync would cost the writer milliseconds each)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dumps(obj, indent))
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; results are read by others too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
