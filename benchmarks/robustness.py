"""Robustness on the default demo: SAT's and plain training's accuracy loss under drift.

Trains the shipped default config (both methods, same seed, same estimator) unless
given an existing run directory, then prints each method's accuracy at dT = 0, 1
and 2 K and the drops, side by side. Target (SAT paper: 98% vs 60% at 1 K): SAT
within 5 points of its nominal accuracy at 1 K while plain training loses >= 20.

Usage: python benchmarks/robustness.py [RUN_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from satlab.cli import main as satlab


def accuracy_at(summary: dict, drift: float) -> float:
    return next(p["accuracy"] for p in summary["drift_sweep"] if abs(p["drift_K"] - drift) < 1e-9)


def main() -> None:
    if len(sys.argv) > 1:
        run = Path(sys.argv[1])
    else:
        run = Path("runs") / "benchmark-robustness"
        if satlab(["train", "--run-dir", str(run)]) != 0:
            sys.exit("training failed")
    print(f"\nrun: {run}")
    print(f"{'method':<8}{'dT=0':>8}{'dT=1':>8}{'dT=2':>8}{'drop@1K':>10}{'drop@2K':>10}{'queries':>12}")
    drops = {}
    for method in ("sat", "plain"):
        s = json.loads((run / method / "summary.json").read_text())
        a0, a1, a2 = (100 * accuracy_at(s, d) for d in (0.0, 1.0, 2.0))
        drops[method] = a0 - a1
        print(f"{method:<8}{a0:>7.1f}%{a1:>7.1f}%{a2:>7.1f}%{a0 - a1:>9.1f}p{a0 - a2:>9.1f}p"
              f"{s['rig_queries']:>12}")
    print(f"\nSAT keeps within 5 points at 1 K: {drops['sat'] <= 5} ({drops['sat']:.1f} points); "
          f"plain loses >= 20 points at 1 K: {drops['plain'] >= 20} ({drops['plain']:.1f} points)")


if __name__ == "__main__":
    main()
