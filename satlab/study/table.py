"""The study's tidy table: one row per cell and sweep point, rebuilt from the cells' result files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from satlab import atomic_file
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


def write_table(table: pd.DataFrame, out: Path) -> None:
    """``table.parquet`` and ``table.csv`` in ``out``, replaced whole and together: both are
    written before either replaces its old self."""
    with atomic_file.replacing(out / "table.parquet") as parquet, \
            atomic_file.replacing(out / "table.csv") as csv:
        table.to_parquet(parquet, index=False)
        table.to_csv(csv, index=False)
