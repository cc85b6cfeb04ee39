"""Files replaced whole: a reader sees the old file or the new one, never a part."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path | str, durable: bool = False) -> Iterator[str]:
    """A temporary file beside ``path`` to write; when the block ends it replaces ``path``,
    or, if the block raised, it is removed. ``durable``: on disk before the rename (a
    result), not only atomic (a status replaced several times a second, where an fsync
    would cost the writer milliseconds each)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; results are read by others too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path | str, text: str, durable: bool = False) -> None:
    """``path`` replaced whole by ``text``."""
    with replacing(path, durable) as tmp:
        Path(tmp).write_text(text)


def write_bytes(path: Path | str, data: bytes, durable: bool = False) -> None:
    """``path`` replaced whole by ``data``."""
    with replacing(path, durable) as tmp:
        Path(tmp).write_bytes(data)
