"""Reports: accuracy-vs-drift and training curves of one or more runs, as PNG and text."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

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


def _label(run: Path, summary: dict, many_parents: bool) -> str:
    base = f"{summary['method']} ({summary['estimator']})"
    return f"{run.parent.name}/{base}" if many_parents else base


def make_report(paths: list[Path], out: Path) -> str:
    """Write a PNG comparing the runs and return a text table of their results."""
    runs = method_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no finished runs (summary.json + metrics.csv) under "
                                f"{', '.join(map(str, paths))}")
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    many = len({r.parent for r in runs}) > 1
    fig, (ax_drift, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run, s in zip(runs, summaries):
        sweep = s["drift_sweep"]
        label = _label(run, s, many)
        ax_drift.plot([p["drift_K"] for p in sweep], [100 * p["accuracy"] for p in sweep], "o-",
                      label=label)
        with open(run / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        if rows:
            ax_loss.plot([int(r["rig_queries"]) for r in rows], [float(r["loss"]) for r in rows],
                         label=label, alpha=0.8)
    ax_drift.set(xlabel="thermal drift dT (K)", ylabel="test accuracy (%)", ylim=(0, 100),
                 title="Accuracy under drift (eval mode, full test set)")
    ax_loss.set(xlabel="rig queries", ylabel="training loss (batch)",
                title="Training loss vs measurement cost", yscale="log")
    for ax in (ax_drift, ax_loss):
        ax.grid(alpha=0.3)
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
        cells = "".join(f"{100 * acc[d]:>8.1f}%" if d in acc else f"{'-':>9}" for d in drifts)
        lines.append(f"{_label(run, s, many):<34}{cells}  {s['rig_queries']}")
    return "\n".join(lines)
