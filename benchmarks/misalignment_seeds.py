"""Robustness to misalignment over several seeds: SAT and plain training, mean ± spread.

Trains a config once per seed (every method it lists; the config's own seed replaced),
evaluates each run under one misalignment sweep on the full held-out set (eval mode),
and prints each method's accuracy per sweep point as mean ± standard deviation over the
seeds, beside the SAT paper's figures where it gives them.

Usage:
  python benchmarks/misalignment_seeds.py satlab/configs/freespace-sat.yaml \\
      --sweep shift_px=-3:3:7 --seeds 0,1,2
  python benchmarks/misalignment_seeds.py satlab/configs/d2nn-sat.yaml \\
      --sweep mask_rotation_deg=0:2:5 --seeds 0,1,2 --out runs/d2nn-seeds
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from satlab.cli import main as satlab
from satlab.config import load_config

# The SAT paper's figures (shared/REFERENCES.md): sweep name -> {point: (BP, SAT)}
PAPER = {
    "mask_rotation_deg": {0.0: (97.3, None), 1.0: (6.5, 96.5)},
    "shift_px": {-3.0: (45.0, 85.0), 3.0: (45.0, 85.0)},
    "rotation_deg": {-3.0: (53.0, 91.0), 3.0: (53.0, 91.0)},
    "scale": {0.9: (10.0, 91.0), 1.1: (10.0, 91.0)},
}


def train_seed(config: Path, seed: int, out: Path) -> Path:
    """One training run of ``config`` with ``seed``; returns its run directory."""
    cfg = load_config(config)
    data = yaml.safe_load(config.read_text())
    data["rig"] = str(cfg.rig)  # the copy lives elsewhere: paths made absolute
    if cfg.data.data_dir is not None:
        data["data"]["data_dir"] = str(cfg.data.data_dir)
    data.setdefault("training", {})["seed"] = seed
    copy = out / f"seed{seed}.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    run = out / f"seed{seed}"
    if not (run / "report.png").exists():  # not trained yet, or stopped: train or resume
        where = ["--resume", str(run)] if run.exists() else [str(copy), "--run-dir", str(run)]
        if satlab(["train", *where, "--quiet"]) != 0:
            raise SystemExit(f"training seed {seed} failed")
    return run


def sweep_points(run: Path, method: str, name: str) -> dict[float, float]:
    """Accuracy (%) per sweep point of one method's evaluation."""
    rows = json.loads((run / method / f"sweep-{name}.json").read_text())["rows"]
    return {float(r[name]): 100 * r["accuracy"] for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--sweep", required=True, help="one imperfection sweep, e.g. shift_px=-3:3:7")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: runs/NAME-seeds)")
    args = parser.parse_args()
    name = args.sweep.split("=", 1)[0]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out or Path("runs") / f"{load_config(args.config).name}-seeds"
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[float, float]]] = {}
    for seed in seeds:
        run = train_seed(args.config, seed, out)
        if satlab(["evaluate", str(run), "--sweep", args.sweep]) != 0:
            raise SystemExit(f"evaluating seed {seed} failed")
        for method in ("sat", "plain"):
            if (run / method).is_dir():
                results.setdefault(method, []).append(sweep_points(run, method, name))
    points = sorted(next(iter(results.values()))[0])
    paper = PAPER.get(name, {})
    print(f"\n{args.config.name}, {name}, seeds {args.seeds}: accuracy (%) mean ± std on the full "
          f"held-out set, eval mode")
    print("| method | " + " | ".join(f"{p:g}" for p in points) + " |")
    print("|---" * (len(points) + 1) + "|")
    for method, per_seed in results.items():
        cells = []
        for p in points:
            values = np.array([r[p] for r in per_seed])
            cells.append(f"{values.mean():.1f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.1f}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    for column, label in ((0, "paper BP"), (1, "paper SAT")):
        if any(p in paper and paper[p][column] is not None for p in points):
            print(f"| {label} | " + " | ".join(
                f"{paper[p][column]:g}" if p in paper and paper[p][column] is not None else ""
                for p in points) + " |")


if __name__ == "__main__":
    main()
