"""SAT through the real Q8iv driver vs the all-simulated rig, same bank, same seed.

One 10 x 3 bank (30 heaters). Run 1 uses `mrr-q8iv-sim.yaml`: the heaters are driven
by the qontrol.q8iv driver over pyserial, talking to an emulated Q8iv chain on a
pseudo-terminal, here unpaced (as fast as the pty goes: the framework's and the
driver's own cost; benchmarks/q8iv_wire.py measures a paced line). Run 2 uses the same
bank with simulated heaters. Printed side by side: accuracy under drift, rig queries,
wall time and the time inside the rig.

Usage: python benchmarks/q8iv_training.py [--epochs N] [--per-class N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from satlab.cli import main as satlab

CONFIGS = Path(__file__).resolve().parents[1] / "satlab" / "configs"


def all_simulated(rig: dict) -> dict:
    """The same bank with the simulated heater source instead of the Q8iv chain."""
    rig = json.loads(json.dumps(rig))
    options = rig["resources"]["chip"]["options"]
    options.pop("modules")
    rig["resources"]["chip"]["driver"] = "simulated.mrr_bench"
    rig["instruments"]["heaters"].update(driver="simulated.mrr_heaters", options={})
    return rig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=100)
    args = ap.parse_args()
    q8iv_rig = yaml.safe_load((CONFIGS / "mrr-q8iv-sim.yaml").read_text())
    for line_option in ("baud_rate", "reply_latency_s", "latency_timer_s"):  # unpaced
        q8iv_rig["resources"]["chip"]["options"].pop(line_option)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, rig in (("Q8iv driver + emulated chain", q8iv_rig),
                           ("all simulated", all_simulated(q8iv_rig))):
            rig_path = tmp / f"{len(results)}-rig.yaml"
            rig_path.write_text(yaml.safe_dump(rig))
            cfg = {"name": "q8iv-bench", "rig": str(rig_path),
                   "data": {"source": "offline", "train_per_class": args.per_class,
                            "test_per_class": 100},
                   "model": {"conv_channels": [], "physical": [3, 10]},
                   "estimator": {"name": "finite_difference", "step": 2e-5},
                   "training": {"methods": ["sat"], "epochs": args.epochs, "batch_size": 32,
                                "lr_controls": 1e-4},
                   "evaluation": {"drift": "0:1:3"}}
            cfg_path = tmp / f"{len(results)}-cfg.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg))
            run = tmp / f"run-{len(results)}"
            assert satlab(["train", str(cfg_path), "--run-dir", str(run), "--quiet"]) == 0
            results[label] = json.loads((run / "sat" / "summary.json").read_text())
    steps = args.epochs * -(-10 * args.per_class // 32)
    print(f"\nSAT, {steps} steps, finite differences on 30 heaters, seed 0:")
    for label, s in results.items():
        acc = " ".join(f"{100 * p['accuracy']:5.1f}" for p in s["drift_sweep"])
        print(f"  {label:<30} accuracy at 0/0.5/1 K: {acc}  {s['rig_queries']} queries, "
              f"wall {s['wall_seconds']:.1f} s, in the rig {s['rig_seconds']:.1f} s "
              f"({1e3 * s['rig_seconds'] / s['rig_queries']:.2f} ms per query)")


if __name__ == "__main__":
    main()
