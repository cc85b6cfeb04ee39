"""A method's metrics.csv read as it grows: only new complete rows, as columns for the plots."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from satlab.live_files import METRIC_FIELDS

COLUMNS = ("x", *METRIC_FIELDS)


def _number(text: str, kind: type) -> float | int | None:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        return None
    return value if kind is int or math.isfinite(value) else None  # a diverged loss: a gap


class MetricsTail:
    """Follows one metrics.csv: each :meth:`poll` returns the rows added since the last one.

    Training appends rows; a resumed run first cuts the file back to its checkpoint's rows,
    which :meth:`poll` notices (the bytes it last read changed) and then starts over.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reset()

    def _reset(self) -> None:
        self.offset = 0
        self.header: list[str] | None = None
        self.rows = 0
        self.steps_per_epoch = 0
        self.last_line = b""  # the last line read, to notice the file rewritten under us
        self.inode: tuple[int, int] | None = None

    def _rewritten(self, f, st: os.stat_result) -> bool:
        if self.inode != (st.st_dev, st.st_ino) or st.st_size < self.offset:
            return True
        f.seek(self.offset - len(self.last_line))
        return f.read(len(self.last_line)) != self.last_line

    def poll(self) -> dict | None:
        """New rows as ``{"start": index of the first, column: [values]}``; start 0 with no
        rows when the file went away or was rewritten; None when nothing changed."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 (closed below; a missing file is no error)
        except OSError:
            if self.offset == 0:
                return None
            self._reset()
            return self._columns([], 0)
        with f:
            st = os.fstat(f.fileno())
            rewritten = bool(self.offset) and self._rewritten(f, st)
            if rewritten:
                self._reset()
            f.seek(self.offset)
            chunk = f.read(max(st.st_size - self.offset, 0))
            end = chunk.rfind(b"\n") + 1  # a row being written is left for the next poll
            if end == 0 and not rewritten:
                return None
            lines = chunk[:end]
            self.offset += end
            self.inode = (st.st_dev, st.st_ino)
            if lines:
                self.last_line = lines[lines.rstrip(b"\n").rfind(b"\n") + 1:]
        start = self.rows
        return self._columns(self._parse(lines), start)

    def _parse(self, lines: bytes) -> list[dict]:
        rows = []
        for record in csv.reader(io.StringIO(lines.decode("utf-8", errors="replace"))):
            if self.header is None:
                self.header = record
                continue
            row = dict(zip(self.header, record, strict=False))
            epoch, step = _number(row.get("epoch", ""), int), _number(row.get("step", ""), int)
            if epoch is None or step is None or epoch < 0 or step < 0:
                continue  # not a row training writes
            # steps restart every epoch; the last step of each is always logged, so by the
            # time a later epoch's rows come, the largest step seen + 1 is an epoch's length
            self.steps_per_epoch = max(self.steps_per_epoch, step + 1)
            rows.append({
                "x": epoch * self.steps_per_epoch + step + 1, "epoch": epoch, "step": step,
                "loss": _number(row.get("loss", ""), float),
                "accuracy": _number(row.get("accuracy", ""), float),
                "rig_queries": _number(row.get("rig_queries", ""), int),
                "rig_seconds": _number(row.get("rig_seconds", ""), float),
                "wall_seconds": _number(row.get("wall_seconds", ""), float),
            })
        self.rows += len(rows)
        return rows

    @staticmethod
    def _columns(rows: list[dict], start: int) -> dict:
        return {"start": start, **{c: [r[c] for r in rows] for c in COLUMNS}}
