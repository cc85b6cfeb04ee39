"""What a calibration buys on a chip that differs from its preset, measured side by side.

The device is the tait_bank rig (heater-power tuning, 5 %/1 % thermal crosstalk, finite
extinction, 12-bit detection) with another chip's fabrication offsets (bench seed 99)
while every twin and weight map keeps the preset's (seed 11), as on a new bench.

1. Weights are trained in silico (SAT through the preset twin, twin autograd).
2. They are deployed on the device through the naive map (a search on the preset twin)
   and through the calibrated map (``satlab calibrate``, crosstalk compensated), and
   evaluated untrained (``methods: [weights]``).
3. SAT by finite differences on the device, from the calibrated start vs from scratch.
4. Physics-aware training (forward on the device, backward through a twin) with the
   preset twin vs the calibrated twin.

Usage: python benchmarks/calibrated_deployment.py [--out runs/calibrated-deployment]
       [--epochs-insilico 5] [--epochs 2]
Prints one table: accuracy (0 K, full offline test set) and rig queries per run.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

from satlab.cli import main as satlab

CONFIGS = Path(__file__).resolve().parents[1] / "satlab" / "configs"


def device_rig(out: Path, calibration: Path | None) -> Path:
    """The tait rig with another chip on the bench; the twins keep the preset's chip."""
    rig = yaml.safe_load((CONFIGS / "mrr-tait-sim.yaml").read_text())
    rig["name"] = "tait-other-chip"
    for name in ("chip_fc2", "chip_fc3"):
        rig["resources"][name]["options"] = {**rig["resources"][name]["options"], "seed": 99}
    if calibration is not None:
        rig["calibration"] = str(calibration)
    path = out / ("device-calibrated.yaml" if calibration else "device.yaml")
    path.write_text(yaml.safe_dump(rig, sort_keys=False))
    return path


def run(out: Path, name: str, rig: Path, epochs: int, methods: list[str], estimator: dict,
        init_from: Path | None = None) -> dict:
    """Train (or deploy) one config and return each method's summary."""
    config = {
        "name": name, "rig": str(rig),
        "data": {"source": "offline", "train_per_class": 400, "test_per_class": 100},
        "model": {"conv_channels": [6, 16], "physical": [32, 16, 10], "init_weight_range": 0.5,
                  **({"init_from": str(init_from)} if init_from else {})},
        "estimator": estimator,
        "training": {"methods": methods, "epochs": epochs, "batch_size": 64, "lr_controls": 1e-4,
                     "lr_digital": 1e-3, "rho": 1.0, "seed": 0},
        "evaluation": {"drift": "0:0:1", "batch_size": 500},
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = out / name
    if satlab(["train", str(path), "--run-dir", str(run_dir), "--quiet"]) != 0:
        raise SystemExit(f"{name} failed")
    return {m: json.loads((run_dir / m / "summary.json").read_text()) for m in methods}


def main() -> None:
    """Run every step and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/calibrated-deployment"))
    p.add_argument("--epochs-insilico", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    fd = {"name": "finite_difference", "step": 2e-5, "scheme": "central"}
    rows = []
    insilico = run(out, "insilico", CONFIGS / "mrr-tait-sim.yaml", args.epochs_insilico, ["sat"],
                   {"name": "twin_autograd"})["sat"]
    rows.append(("in silico SAT, on the preset chip", insilico))
    device = device_rig(out, None)
    rows.append(("deployed through the naive map", run(
        out, "naive", device, 1, ["weights"], fd, out / "insilico" / "sat")["weights"]))
    if satlab(["calibrate", str(device), "-o", str(out / "cal"), "--quiet"]) != 0:
        raise SystemExit("calibration failed")
    calibration = yaml.safe_load((out / "cal" / "calibration.yaml").read_text())
    calibrated = device_rig(out, out / "cal")
    rows.append(("deployed through the calibrated map", run(
        out, "calibrated", calibrated, 1, ["weights"], fd, out / "insilico" / "sat")["weights"]))
    rows.append((f"SAT (FD), {args.epochs} epochs from the calibrated start", run(
        out, "sat-from-calibrated", calibrated, args.epochs, ["sat"], fd, out / "insilico" / "sat")["sat"]))
    rows.append((f"SAT (FD), {args.epochs} epochs from scratch", run(
        out, "sat-from-scratch", device, args.epochs, ["sat"], fd)["sat"]))
    pat = {"name": "physics_aware"}
    rows.append((f"physics-aware SAT, {args.epochs} epochs, preset twin", run(
        out, "pat-preset", device, args.epochs, ["sat"], pat)["sat"]))
    rows.append((f"physics-aware SAT, {args.epochs} epochs, calibrated twin", run(
        out, "pat-calibrated", calibrated, args.epochs, ["sat"], pat)["sat"]))
    queries = sum(s["queries"] for s in calibration["steps"].values())
    print(f"\ncalibration of the device: {queries} rig queries")
    print(f"{'run':58s} {'accuracy':>9s} {'rig queries':>12s}")
    for label, summary in rows:
        print(f"{label:58s} {100 * summary['test_accuracy']:8.2f}% {summary['rig_queries']:12d}")


if __name__ == "__main__":
    main()
