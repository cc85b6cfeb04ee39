"""Wall time of one 24-cell study in this process vs on a 2-worker Dask LocalCluster, side by side.

The study: 3 methods (SAT by SPSA, plain by SPSA, SAT by twin autograd) x 8 seeds on
the shipped simulated MRR rig, each cell trained on the offline digits and swept over
5 drift points on its test set. Both runs start from empty folders; the tables must
agree (the cells are deterministic), and the ratio of the wall times is printed.
Run it on an otherwise idle machine: the cluster's two workers take one core each.

Usage:
  python benchmarks/study_scaling.py [--out /tmp/study-scaling] [--per-class 400] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

RIG = Path(__file__).resolve().parents[1] / "satlab" / "configs" / "mrr-sim.yaml"
SATLAB = str(Path(sys.executable).with_name("satlab"))


def write_study(folder: Path, per_class: int, epochs: int) -> Path:
    """The 24-cell study file and its base config in ``folder``."""
    base = {"name": "scaling", "rig": str(RIG),
            "data": {"source": "offline", "train_per_class": per_class, "test_per_class": 50},
            "model": {"conv_channels": [], "physical": [32, 16, 10]},
            "estimator": {"name": "spsa", "directions": 4},
            "training": {"epochs": epochs, "batch_size": 32, "rho": 1.0},
            "evaluation": {"drift": "0", "batch_size": 250}}
    study = {"name": "scaling", "config": "base.yaml", "seeds": list(range(8)),
             "methods": {"sat": {}, "plain": {},
                         "sat-twin": {"training": {"methods": ["sat"]}, "estimator": {"name": "twin_autograd"}}},
             "sweeps": [{"drift_K": "0:2:5"}]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def timed(args: list[str]) -> float:
    """Seconds one ``satlab study`` command takes, start to exit (interpreter start included)."""
    start = time.perf_counter()
    subprocess.run([SATLAB, "study", *args, "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    """Run the study both ways and print the wall times and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/study-scaling"))
    parser.add_argument("--per-class", type=int, default=400, help="training digits per class")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    for run in ("in-process", "cluster"):  # both runs start from nothing
        shutil.rmtree(args.out / run, ignore_errors=True)
    path = write_study(args.out, args.per_class, args.epochs)
    # a cell computes with one thread wherever it runs: here one after another, there two at once
    here = timed([str(path), "--out", str(args.out / "in-process")])
    cluster = timed([str(path), "--out", str(args.out / "cluster"), "--workers", "2"])
    a = pd.read_parquet(args.out / "in-process" / "table.parquet")
    b = pd.read_parquet(args.out / "cluster" / "table.parquet")
    same = a[["cell", "drift_K", "accuracy"]].equals(b[["cell", "drift_K", "accuracy"]])
    cells = a["cell"].nunique()
    print(f"{cells} cells on {os.cpu_count()} cores ({args.per_class} digits per class, {args.epochs} epochs)")
    print(f"in-process:               {here:7.1f} s")
    print(f"LocalCluster, 2 workers:  {cluster:7.1f} s")
    print(f"speed-up:                 {here / cluster:7.2f}x   tables identical: {same}")


if __name__ == "__main__":
    main()
