"""Imperfection sweeps of a trained run: the ``--sweep`` grid, its result files and table.

A sweep is a grid over one or more named imperfections of the rig's system
(``System.imperfections``); every grid point is scored on the full test set (or,
to compare with the SAT paper's D2NN protocol, on its first batch as well),
``draws`` times (draw k: the k-th realisation of random imperfections). The
plot is :func:`satlab.report.plot_sweep`.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from satlab import strict_json
from satlab.config import parse_range

if TYPE_CHECKING:
    from satlab.systems import Imperfection

BN_LABELS = {
    "eval": "BatchNorm running statistics (deployment)",
    "batch": "BatchNorm batch statistics: comparison with published protocols, not deployment",
}


class SweepOptionError(ValueError):
    """A ``--sweep``/``--drift`` option that cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class Axis:
    """One swept imperfection and its values."""

    name: str
    unit: str
    values: tuple[float, ...]

    @property
    def label(self) -> str:
        """Name and unit, e.g. ``drift_K (K)``."""
        return f"{self.name} ({self.unit})"


@dataclass(frozen=True)
class Sweep:
    """What one ``satlab evaluate`` call sweeps, and how it scores each point."""

    axes: tuple[Axis, ...]
    draws: int
    bn: str
    test_images: int
    batch_size: int
    batchnorm: bool = True  # whether the network has BatchNorm layers at all
    first: int | None = None  # scored on the first ``first`` test images only (one batch)
    seeds: int = 1  # runs (seeds) each point's mean and spread are taken over

    @property
    def grid(self) -> list[tuple[str, list[float]]]:
        """The axes as :func:`satlab.evaluation.imperfection_sweep` takes them."""
        return [(a.name, list(a.values)) for a in self.axes]

    @property
    def stem(self) -> str:
        """File name without extension: ``sweep-drift_K+crosstalk_scale[-bn-batch]``."""
        return ("seeds-" if self.seeds > 1 else "") + "sweep-" + "+".join(a.name for a in self.axes) + (
            "-bn-batch" if self.bn == "batch" else "") + (f"-first{self.first}" if self.first else "")

    @property
    def spread(self) -> bool:
        """Whether each point has a spread (several draws or seeds)."""
        return self.draws > 1 or self.seeds > 1

    @property
    def scored_on(self) -> str:
        """Which test images score each point."""
        if self.first:
            return f"first {self.first} test images (one batch, as the SAT paper's D2NN sweep scored)"
        return f"full test set ({self.test_images} images)"

    def spread_note(self) -> str:
        """What a point's ± is: the draws' or the seeds' standard deviation."""
        if self.seeds > 1:
            return f"mean ± std over {self.seeds} seeds" + (f" (each the mean of {self.draws} draws)"
                                                             if self.draws > 1 else "")
        return f"{self.draws} draws per point (mean ± std)" if self.draws > 1 else "1 draw per point"

    @property
    def is_drift_evaluation(self) -> bool:
        """A 1-D drift_K sweep, one draw, eval-mode BN: what summary.json's drift_sweep records."""
        return ([a.name for a in self.axes] == ["drift_K"] and self.draws == 1 and self.bn == "eval")

    @property
    def bn_label(self) -> str:
        """How BatchNorm normalised; the batch mode says it is a comparison, not deployment."""
        if not self.batchnorm:
            return "no BatchNorm in this network"
        if self.bn == "batch":
            return f"{BN_LABELS['batch']} (test batches of {self.batch_size})"
        return BN_LABELS["eval"]

    @property
    def bn_title(self) -> str:
        """``bn_label`` in two short lines, for plot titles."""
        if self.bn == "batch" and self.batchnorm:
            return (f"BatchNorm: batch statistics (test batches of {self.batch_size})\n"
                    "comparison with published protocols, not deployment")
        return self.bn_label

    def describe(self) -> str:
        """One line: the grid, test images, draws and BN mode."""
        return (f"{' x '.join(a.name for a in self.axes)}: {self.points} points, {self.scored_on}, "
                f"{self.spread_note()}, {self.bn_label}")

    @property
    def points(self) -> int:
        """Number of grid points."""
        return math.prod(len(a.values) for a in self.axes)


def known_imperfections(imperfections: dict[str, Imperfection]) -> str:
    """``drift_K (K), fabrication_std_nm (nm, random), ...`` for error messages."""
    return ", ".join(f"{name} ({imp.unit}{', random' if imp.random else ''})"
                     for name, imp in imperfections.items())


def imperfection_table(imperfections: dict[str, Imperfection]) -> str:
    """Every imperfection with unit, default and description, one per line."""
    width = max((len(n) for n in imperfections), default=4)
    lines = [f"{'name':<{width}}  {'unit':<5} {'default':>8}  {'range':<15} description"]
    for name, imp in imperfections.items():
        desc = imp.description + (" [random: each draw is another realisation]" if imp.random else "")
        lines.append(f"{name:<{width}}  {imp.unit:<5} {imp.default:>8g}  {imp.range_text:<15} {desc}")
    return "\n".join(lines)


def _option_error(option: str, why: str, imperfections: dict[str, Imperfection]) -> SweepOptionError:
    return SweepOptionError(f"{option}: {why}; known imperfections: {known_imperfections(imperfections)}")


def parse_axes(sweeps: list[str] | None, drift: str | None, default_drift: str,
               imperfections: dict[str, Imperfection]) -> tuple[Axis, ...]:
    """The axes of ``--sweep NAME=GRID`` options, else of ``--drift GRID``, else the run's drift grid.

    GRID is ``start:stop:count`` (inclusive) or ``a,b,c``. Raises SweepOptionError
    naming the option for an unknown or repeated name, a bad grid or a NaN/inf value.
    """
    if sweeps and drift is not None:
        raise SweepOptionError(f"--drift {drift}: --drift GRID is short for --sweep drift_K=GRID; "
                               "give one or the other")
    if sweeps:
        items = [(f"--sweep {text}", *text.partition("=")) for text in sweeps]
    elif drift is not None:
        items = [(f"--drift {drift}", "drift_K", "=", drift)]
    else:
        items = [(f"evaluation.drift {default_drift!r} of the run", "drift_K", "=", default_drift)]
    axes: list[Axis] = []
    for option, name, sep, grid in items:
        name = name.strip()
        if not sep:
            raise _option_error(option, "expected NAME=START:STOP:COUNT or NAME=a,b,c", imperfections)
        if name not in imperfections:
            raise _option_error(option, f"unknown imperfection {name!r}", imperfections)
        if any(a.name == name for a in axes):
            raise _option_error(option, f"{name} is swept twice", imperfections)
        try:
            values = parse_range(grid)
        except ValueError as exc:
            raise _option_error(option, str(exc), imperfections) from None
        imp = imperfections[name]
        if outside := [v for v in values if not imp.admits(v)]:
            raise _option_error(option, f"{outside[0]:g} is outside {name}'s range ({imp.range_text})",
                                imperfections)
        axes.append(Axis(name, imperfections[name].unit, tuple(values)))
    return tuple(axes)


def draws_note(sweep: Sweep, imperfections: dict[str, Imperfection]) -> str | None:
    """A note when several draws are asked for but nothing swept is random."""
    if sweep.draws == 1 or any(imperfections[a.name].random for a in sweep.axes):
        return None
    random = [n for n, imp in imperfections.items() if imp.random]
    hint = f" (random: {', '.join(random)})" if random else ""
    return (f"note: no swept imperfection is random{hint}; the {sweep.draws} draws differ only "
            "through measurement noise, if the rig has any")


def write_files(folder: Path, sweep: Sweep, rows: list[dict], method: str, estimator: str,
                imperfections: dict[str, Imperfection], stem: str | None = None) -> list[Path]:
    """``<stem>.csv`` (one row per grid point) and ``<stem>.json`` (axes, settings, rows) in
    folder; the stem is the sweep's unless given."""
    names = [a.name for a in sweep.axes]
    stem = stem or sweep.stem
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    with open(csv_path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*names, "accuracy", "std", "min", "seeds" if sweep.seeds > 1 else "draws"])
        for row in rows:
            out.writerow([*(row[n] for n in names), row["accuracy"], row["std"], min(row["draws"]),
                          len(row["draws"])])
    record = {
        "method": method,
        "estimator": estimator,
        "axes": [{"name": a.name, "unit": a.unit, "description": imperfections[a.name].description,
                  "random": imperfections[a.name].random, "values": list(a.values)}
                 for a in sweep.axes],
        "bn": sweep.bn,
        "bn_note": sweep.bn_label,
        "draws": sweep.draws,
        "seeds": sweep.seeds,
        "test_images": sweep.test_images,
        "scored_on": sweep.scored_on,
        "batch_size": sweep.batch_size,
        "accuracy": "fraction of the test images classified correctly",
        "rows": [{**{n: row[n] for n in names}, "accuracy": row["accuracy"], "std": row["std"],
                  ("seed_accuracies" if sweep.seeds > 1 else "draw_accuracies"): row["draws"]}
                 for row in rows],
    }
    json_path.write_text(strict_json.dumps(record))
    return [csv_path, json_path]


def format_table(sweep: Sweep, results: list[tuple[str, list[dict]]]) -> str:
    """The imperfection columns, then one accuracy column per method (label, rows)."""
    def cell(row: dict) -> str:
        if sweep.spread:
            return f"{100 * row['accuracy']:.1f} ± {100 * row['std']:.1f}%"
        return f"{100 * row['accuracy']:.1f}%"

    header = [a.label for a in sweep.axes] + [label for label, _ in results]
    body = [[format(v, "g") for v in (row[a.name] for a in sweep.axes)]
            + [cell(rows[i]) for _, rows in results]
            for i, row in enumerate(results[0][1])] if results else []
    widths = [max(len(c) for c in col) for col in zip(header, *body)]
    lines = [f"imperfection sweep, {sweep.describe()}"]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in [header, *body]]
    return "\n".join(lines)


def across_seeds(per_seed: list[list[dict]]) -> list[dict]:
    """One method's sweep rows from several seeds' runs: per point, the mean and standard
    deviation (n − 1) of the seeds' accuracies, which are kept under ``draws``."""
    rows = []
    for points in zip(*per_seed, strict=True):
        scores = [p["accuracy"] for p in points]
        names = {k: v for k, v in points[0].items() if k not in ("accuracy", "std", "draws")}
        rows.append({**names, "accuracy": statistics.fmean(scores),
                     "std": statistics.stdev(scores) if len(scores) > 1 else 0.0, "draws": scores})
    return rows
