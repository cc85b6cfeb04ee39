"""The study's tidy table: one row per cell and sweep point, rebuilt from the cells' result files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from satlab.study.cell import read_result

CELL_COLUMNS = ["cell", "system", "method", "seed", "status", "error", "training_method", "estimator",
                "test_accuracy", "test_images", "rig_queries", "train_seconds", "cell_seconds", "commit",
                "digest", "finished"]
SHARPNESS_COLUMNS = ["hessian_top", "hessian_trace", "hessian_trace_stderr", "bench_loss", "bench_rise",
                     "bench_queries"]


def rows_of(result: dict) -> list[dict]:
    """A cell's table rows: one per sweep point (a failed or sweep-less cell: one row)."""
    base = {k: result.get(k) for k in CELL_COLUMNS}
    base.update({k: (result.get("sharpness") or {}).get(k) for k in SHARPNESS_COLUMNS})
    points = [(sweep["axes"], row) for sweep in result.get("sweeps") or [] for row in sweep["rows"]]
    if not points:
        return [{**base, "sweep": None}]
    return [{**base, "sweep": "+".join(axes), **{a: row[a] for a in axes}, "accuracy": row["accuracy"],
             "accuracy_std": row["std"], "draws": len(row["draws"])} for axes, row in points]


def build_table(out: Path, cell_ids: list[str]) -> pd.DataFrame:
    """The table of the study in ``out``: every listed cell that has a result, in that order."""
    rows = []
    for cell_id in cell_ids:
        result = read_result(out / "cells" / f"{cell_id}.json")
        if result is not None:
            rows.extend(rows_of(result))
    return pd.DataFrame(rows)


def write_table(table: pd.DataFrame, out: Path) -> list[Path]:
    """``table.parquet`` and ``table.csv`` in ``out``, each replaced whole (never half-written)."""
    written = []
    for name, save in (("table.parquet", lambda t, p: t.to_parquet(p, index=False)),
                       ("table.csv", lambda t, p: t.to_csv(p, index=False))):
        path = out / name
        fd, tmp = tempfile.mkstemp(dir=out, prefix=name + ".", suffix=".tmp")
        os.close(fd)
        try:
            save(table, tmp)
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a study table is shared
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written
