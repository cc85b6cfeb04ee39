"""Reports: accuracy-vs-drift and training curves of runs; imperfection-sweep plots."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from pydantic import BaseModel, ConfigDict, FiniteFloat, NonNegativeInt, ValidationError

from satlab.validation import ConfigError, describe_validation_error

if TYPE_CHECKING:
    from satlab.sweeps import Sweep

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def method_runs(paths: list[Path]) -> list[Path]:
    """Folders holding one trained method: the paths themselves or their method subfolders."""
    found = []
    for p in paths:
        p = Path(p)
        if (p / "summary.json").exists() and (p / "metrics.csv").exists():
            found.append(p)
        else:
            found += sorted(c for c in p.iterdir() if (c / "summary.json").exists()) if p.is_dir() else []
    return found


REPORT_SUFFIXES = (".png", ".pdf", ".svg")


class DriftPoint(BaseModel):
    """One point of a summary's drift sweep (accuracy null when it was not a number)."""

    drift_K: FiniteFloat
    accuracy: FiniteFloat | None


class RunSummary(BaseModel):
    """What a report reads from a method's summary.json; other keys are kept as they are."""

    model_config = ConfigDict(extra="allow")
    method: str
    estimator: str
    rig_queries: NonNegativeInt
    test_accuracy: FiniteFloat | None = None
    drift_sweep: list[DriftPoint]


def read_summary(run: Path) -> dict:
    """A method folder's summary.json, checked; ConfigError naming the file and field."""
    path = run / "summary.json"
    try:
        return RunSummary.model_validate_json(path.read_bytes()).model_dump()
    except ValidationError as err:
        raise describe_validation_error(path, err, RunSummary) from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read it ({exc.strerror})") from None


def read_loss_curve(run: Path) -> tuple[list[int], list[float]]:
    """(rig queries, loss) per logged row of metrics.csv; ConfigError on a damaged file."""
    path = run / "metrics.csv"
    queries, losses = [], []
    try:
        with open(path, newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    queries.append(int(row["rig_queries"]))
                    losses.append(float(row["loss"]))
                except (KeyError, TypeError, ValueError):
                    raise ConfigError(path, f"line {line}", "expected integer rig_queries and a "
                                      f"numeric loss, got {dict(row)}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(path, "", f"cannot read this as a CSV file ({exc})") from None
    return queries, losses


def _label(run: Path, summary: dict, many_parents: bool) -> str:
    base = f"{summary['method']} ({summary['estimator']})"
    return f"{run.parent.name}/{base}" if many_parents else base


def make_report(paths: list[Path], out: Path) -> str:
    """Write a PNG comparing the runs and return a text table of their results."""
    runs = method_runs(paths)
    if not runs:
        raise ConfigError(", ".join(map(str, paths)), "", "no finished runs here "
                          "(a method folder holds summary.json and metrics.csv)")
    if out.suffix.lower() not in REPORT_SUFFIXES:
        raise ConfigError(out, "-o", f"expected a file ending in {', '.join(REPORT_SUFFIXES)}")
    summaries = [read_summary(r) for r in runs]
    many = len({r.parent for r in runs}) > 1
    fig, (ax_drift, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    drifting = any(s["drift_sweep"] for s in summaries)
    for i, (run, s) in enumerate(zip(runs, summaries)):
        sweep = s["drift_sweep"]
        label = _label(run, s, many)
        if drifting:
            ax_drift.plot([p["drift_K"] for p in sweep],
                          [math.nan if p["accuracy"] is None else 100 * p["accuracy"] for p in sweep],
                          "o-", label=label)
        elif s["test_accuracy"] is not None:  # a system without drift: its nominal accuracy
            ax_drift.bar(i, 100 * s["test_accuracy"], label=label, color=f"C{i}")
        queries, losses = read_loss_curve(run)
        if queries:
            ax_loss.plot(queries, losses, label=label, alpha=0.8)
    if drifting:
        ax_drift.set(xlabel="thermal drift dT (K)", ylabel="test accuracy (%)", ylim=(0, 100),
                     title="Accuracy under drift (eval mode, full test set)")
    else:
        ax_drift.set(xticks=[], ylabel="test accuracy (%)", ylim=(0, 100),
                     title="Test accuracy (eval mode, full test set; no drift in this system:\n"
                           "sweep its imperfections with satlab evaluate --sweep)")
    ax_loss.set(xlabel="rig queries", ylabel="training loss (batch)",
                title="Training loss vs measurement cost", yscale="log")
    for ax in (ax_drift, ax_loss):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a run with an empty sweep or metrics has none
            ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    drifts = sorted({p["drift_K"] for s in summaries for p in s["drift_sweep"]})
    if not drifts:  # a system without thermal drift: its nominal accuracy
        drifts = [None]
    header = f"{'run':<34}" + "".join(f"{'dT=' + format(d, 'g') if d is not None else 'nominal':>9}"
                                      for d in drifts) + "  rig queries"
    lines = [header]
    for run, s in zip(runs, summaries):
        acc = {p["drift_K"]: p["accuracy"] for p in s["drift_sweep"]} or {None: s["test_accuracy"]}
        cells = "".join(f"{100 * acc[d]:>8.1f}%" if acc.get(d) is not None else f"{'-':>9}"
                        for d in drifts)
        lines.append(f"{_label(run, s, many):<34}{cells}  {s['rig_queries']}")
    return "\n".join(lines)


_ANNOTATE, _ANNOTATE_STD = 100, 36  # heat-map cells up to which values (and ± std) are written


def plot_sweep(sweep: Sweep, results: list[tuple[str, list[dict]]], out: Path) -> bool:
    """Plot an imperfection sweep of one or more methods (label, rows); False for 3-D and more.

    1-D: accuracy against the imperfection, one line per method, a ±std band when
    there are several draws. 2-D: one heat map per method on a shared 0-100 % scale.
    """
    if len(sweep.axes) > 2 or not results:
        return False
    title = f"{sweep.bn_title}\n{sweep.scored_on}"
    if sweep.spread:
        title += f", {sweep.spread_note()}" + (
            ", band: ± std" if len(sweep.axes) == 1 else
            ", cells: mean ± std" if sweep.points <= _ANNOTATE_STD else "")
    if len(sweep.axes) == 1:
        fig = _plot_sweep_1d(sweep, results, title)
    else:
        fig = _plot_sweep_2d(sweep, results, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def _plot_sweep_1d(sweep: Sweep, results: list[tuple[str, list[dict]]], title: str):
    axis = sweep.axes[0]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for label, rows in results:
        x = np.array([r[axis.name] for r in rows])
        mean = np.array([100 * r["accuracy"] for r in rows])
        line, = ax.plot(x, mean, "o-", label=label)
        if sweep.spread:
            std = np.array([100 * r["std"] for r in rows])
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set(xlabel=axis.label, ylabel="test accuracy (%)", ylim=(0, 100),
           title=f"Accuracy vs {axis.name}\n{title}")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _plot_sweep_2d(sweep: Sweep, results: list[tuple[str, list[dict]]], title: str):
    ax_x, ax_y = sweep.axes
    nx, ny = len(ax_x.values), len(ax_y.values)
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(1.0 + 4.6 * n, 4.6), squeeze=False,
                             layout="constrained")
    image = None
    for ax, (label, rows) in zip(axes[0], results):
        # imperfection_sweep varies the last axis fastest: rows reshape to (x, y)
        mean = 100 * np.array([r["accuracy"] for r in rows]).reshape(nx, ny).T
        std = 100 * np.array([r["std"] for r in rows]).reshape(nx, ny).T
        image = ax.imshow(mean, origin="lower", aspect="auto", vmin=0, vmax=100, cmap="viridis")
        for which, axis, count in (("x", ax_x, nx), ("y", ax_y, ny)):
            step = max(1, math.ceil(count / 10))  # at most ~10 tick labels
            ticks = list(range(0, count, step))
            getattr(ax, f"set_{which}ticks")(ticks, [format(axis.values[i], ".4g") for i in ticks])
            getattr(ax, f"set_{which}label")(axis.label)
        if nx * ny <= _ANNOTATE:
            for i in range(nx):
                for j in range(ny):
                    text = f"{mean[j, i]:.0f}" + (f"\n±{std[j, i]:.0f}"
                                                  if sweep.spread and nx * ny <= _ANNOTATE_STD
                                                  else "")
                    ax.text(i, j, text, ha="center", va="center", fontsize=8,
                            color="black" if mean[j, i] > 60 else "white")
        ax.set_title(label)
    fig.colorbar(image, ax=axes[0].tolist(), label="test accuracy (%)")
    fig.suptitle(f"Accuracy vs {ax_x.name} and {ax_y.name}\n{title}", fontsize=9)
    return fig
