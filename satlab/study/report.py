"""A study's plots and its self-contained HTML report, from the study table alone."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from satlab import atomic_file  # noqa: E402
from satlab.study.table import SHARPNESS_COLUMNS  # noqa: E402
from satlab.sweeps import BN_LABELS  # noqa: E402


def _spread(values: pd.Series) -> tuple[float, float, int]:
    """Mean, sample std (n - 1; 0 for one seed) and count."""
    n = int(values.count())
    return float(values.mean()), float(values.std(ddof=1)) if n > 1 else 0.0, n


def _pm(values: pd.Series, scale: float = 100.0, digits: int = 1) -> str:
    mean, std, n = _spread(values)
    if n == 0 or math.isnan(mean):
        return ""
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}" if n > 1 else f"{scale * mean:.{digits}f}"


def sweep_axes(sweep: str) -> list[str]:
    """The imperfection columns of one sweep, e.g. ['drift_K'] for 'drift_K'."""
    return sweep.split("+")


def accuracy_table(ok: pd.DataFrame, sweep: str) -> pd.DataFrame:
    """Methods (rows) × grid points (columns): accuracy in %, mean ± std over seeds."""
    axes = sweep_axes(sweep)
    part = ok[ok["sweep"] == sweep]
    methods = list(dict.fromkeys(part["method"]))
    points = list(dict.fromkeys(map(tuple, part[axes].itertuples(index=False))))
    table = {}
    for method in methods:
        rows = part[part["method"] == method]
        table[method] = [_pm(rows[(rows[axes] == pd.Series(p, index=axes)).all(axis=1)]["accuracy"])
                         for p in points]
    columns = [", ".join(f"{a}={v:g}" for a, v in zip(axes, p)) for p in points]
    return pd.DataFrame.from_dict(table, orient="index", columns=columns)


def cell_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: seeds done, nominal test accuracy, sharpness and time, mean ± std over seeds."""
    cells = table.drop_duplicates("cell")
    ok = cells[cells["status"] == "ok"]
    out = {}
    for method in dict.fromkeys(cells["method"]):
        rows = ok[ok["method"] == method]
        entry = {"cells ok": f"{len(rows)}/{int((cells['method'] == method).sum())}",
                 "estimator": ", ".join(sorted(set(rows["estimator"].dropna()))),
                 "test accuracy %": _pm(rows["test_accuracy"])}
        for column in ("hessian_top", "hessian_trace", "bench_rise"):
            if column in rows and rows[column].notna().any():
                entry[column] = _pm(rows[column], scale=1.0, digits=3)
        entry["train s"] = _pm(rows["train_seconds"], scale=1.0, digits=0)
        out[method] = entry
    return pd.DataFrame.from_dict(out, orient="index")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_1d(ok: pd.DataFrame, sweep: str) -> bytes:
    """Accuracy vs the imperfection, one line per method, band: ± std over seeds."""
    (axis,) = sweep_axes(sweep)
    part = ok[ok["sweep"] == sweep]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, rows in part.groupby("method", sort=False):
        stats = rows.groupby(axis)["accuracy"].agg(["mean", "std", "count"]).sort_index()
        std = stats["std"].fillna(0.0)
        seeds = int(stats["count"].max())
        ax.plot(stats.index, 100 * stats["mean"], marker="o",
                label=f"{method} ({seeds} seed{'s' if seeds > 1 else ''})")
        ax.fill_between(stats.index, 100 * (stats["mean"] - std), 100 * (stats["mean"] + std), alpha=0.2)
    ax.set_xlabel(axis)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"accuracy vs {axis} (mean ± std over seeds)")
    return _png(fig)


def plot_2d(ok: pd.DataFrame, sweep: str) -> bytes:
    """One heat map per method: mean accuracy over seeds at every grid point."""
    first, second = sweep_axes(sweep)
    part = ok[ok["sweep"] == sweep]
    methods = list(dict.fromkeys(part["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods) + 0.8, 3.4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        grid = part[part["method"] == method].pivot_table(index=second, columns=first, values="accuracy",
                                                           aggfunc="mean") * 100
        image = ax.imshow(grid.values, origin="lower", vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(grid.columns)), [f"{v:g}" for v in grid.columns], fontsize=7)
        ax.set_yticks(range(len(grid.index)), [f"{v:g}" for v in grid.index], fontsize=7)
        for (i, j), value in pd.DataFrame(grid.values).stack().items():
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 60 else "black")
        ax.set_xlabel(first)
        ax.set_ylabel(second)
        ax.set_title(method, fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), label="test accuracy (%)")
    return _png(fig)


def plot_sharpness(ok: pd.DataFrame, sweep: str | None) -> bytes | None:
    """Top Hessian eigenvalue vs robustness (mean accuracy over the first sweep), one point per cell."""
    cells = ok.drop_duplicates("cell")
    if "hessian_top" not in cells or cells["hessian_top"].isna().all():
        return None
    if sweep is not None:
        robust = ok[ok["sweep"] == sweep].groupby("cell")["accuracy"].mean()
        ylabel = f"mean accuracy over the {sweep} sweep (%)"
    else:
        robust = cells.set_index("cell")["test_accuracy"]
        ylabel = "test accuracy (%)"
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for method, rows in cells.groupby("method", sort=False):
        ax.scatter(rows["hessian_top"].abs(), 100 * robust.reindex(rows["cell"]).values, label=method, s=28)
    ax.set_xscale("log")
    ax.set_xlabel("|top Hessian eigenvalue| of the loss in control space")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("sharpness vs robustness (one point per cell)")
    return _png(fig)


def write_report(out: Path, title: str, bn: str = "eval") -> tuple[Path, list[Path]]:
    """Plots (PNG) and ``report.html`` (everything embedded) of the study in ``out``."""
    table = pd.read_parquet(out / "table.parquet")
    if table["system"].nunique() > 1:  # a method on two systems is two curves, not one
        table = table.assign(method=table["system"] + " " + table["method"])
    ok = table[table["status"] == "ok"]
    sweeps = [s for s in dict.fromkeys(ok["sweep"]) if isinstance(s, str)] if "sweep" in ok else []
    figures: list[tuple[str, bytes]] = []
    tables: list[tuple[str, pd.DataFrame]] = [("Per method", cell_summary(table))]
    for sweep in sweeps:
        tables.append((f"Test accuracy (%) over {sweep}, mean ± std over seeds", accuracy_table(ok, sweep)))
        axes = sweep_axes(sweep)
        if len(axes) == 1:
            figures.append((f"sweep-{sweep}", plot_1d(ok, sweep)))
        elif len(axes) == 2:
            figures.append((f"sweep-{sweep}", plot_2d(ok, sweep)))
    first_1d = next((s for s in sweeps if len(sweep_axes(s)) == 1), None)
    if (sharp := plot_sharpness(ok, first_1d)) is not None:
        figures.append(("sharpness-vs-robustness", sharp))
    written = []
    for name, png in figures:
        path = out / f"{name}.png"
        atomic_file.write_bytes(path, png)
        written.append(path)
    failed = table[table["status"] != "ok"].drop_duplicates("cell")
    cells = table.drop_duplicates("cell")
    commits = ", ".join(sorted(set(cells["commit"].dropna().astype(str))))
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(cells)} cells recorded ({int((cells['status'] == 'ok').sum())} ok, {len(failed)} failed); "
             f"satlab commit {html.escape(commits)}. Accuracy on each cell's full test set; "
             f"{html.escape(BN_LABELS[bn])}. Data: <code>table.parquet</code> / <code>table.csv</code>.</p>"]
    for heading, frame in tables:
        parts += [f"<h2>{html.escape(heading)}</h2>", frame.to_html(border=0, classes="t")]
    for name, png in figures:
        parts.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' "
                     f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    if len(failed):
        parts += ["<h2>Failed cells</h2>",
                  failed[["cell", "error"]].to_html(border=0, classes="t", index=False)]
    shown = [c for c in ["cell", "status", "test_accuracy", *SHARPNESS_COLUMNS, "rig_queries", "train_seconds",
                         "cell_seconds", "finished"] if c in cells]
    parts += ["<h2>Cells</h2>", cells[shown].to_html(border=0, classes="t", index=False)]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table.t{border-collapse:collapse;"
             "font-size:13px}table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}"
             "img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    report = out / "report.html"
    atomic_file.write_text(report, page)
    return report, written
