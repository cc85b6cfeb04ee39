"""Ring calibration accuracy against detector noise and coarse sweep points, with its cost.

An 8 x 8 bank (heater-power tuning, 0.3 nm lines at 0.1 nm/mW, 12 mA heaters, through
0.03 / drop 0.92) whose resonances and crosstalk are drawn at random: the calibration
sees only its detectors, this script knows the truth. For each detector noise and
coarse sweep it prints the resonance error (rms, in half-widths), the crosstalk error
(rms, relative), the rig queries of the wiring, rings and crosstalk steps, and the
bench time those queries would take at the stated settle times (a write settles, then
a read integrates; each query is one of each).

Usage: python benchmarks/calibration_accuracy.py [--write-ms 1] [--read-ms 1] [--seeds 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from satlab.calibration.job import BankOptions, run
from satlab.rig import Rig
from satlab.rigfile import load_rig_file
from satlab.systems import system_for

ROWS = COLS = 8
TOP_A, OHM = 0.012, 500.0


def bank(noise_W: float, seed: int, crosstalk: tuple[float, float]) -> dict:
    """The rig file of one hidden bank."""
    chip = {"rows": ROWS, "cols": COLS, "preset": "tait_bank", "seed": seed, "adc_bits": None,
            "shot_noise_bandwidth_Hz": 0.0, "detector_noise_W": noise_W, "crosstalk": list(crosstalk)}
    return {"name": "hidden-bank", "resources": {"chip": {"driver": "simulated.mrr_bench", "options": chip}},
            "instruments": {
                "heaters": {"kind": "current_source", "driver": "simulated.mrr_heaters", "resource": "chip",
                            "limits": {"max_current": TOP_A, "max_total_power": 2.0,
                                       "heater_resistance_ohm": OHM}},
                "inputs": {"kind": "input_modulator", "driver": "simulated.mrr_inputs", "resource": "chip"},
                "pd": {"kind": "photodetector", "driver": "simulated.mrr_detectors", "resource": "chip"}},
            "system": {"type": "mrr_weight_bank", "layers": [{
                "name": "fc", "in_features": COLS, "out_features": ROWS, "heaters": "heaters",
                "inputs": "inputs", "detector": "pd", "twin": {"driver": "twin.mrr_bank", "options": chip}}]}}


def calibrate(noise_W: float, coarse: int, seed: int) -> tuple[float, float, dict[str, int]]:
    """Resonance error (half-widths, rms), crosstalk error (relative, rms), queries per step."""
    rng = np.random.default_rng(seed)
    crosstalk = (float(rng.uniform(0.02, 0.08)), float(rng.uniform(0.005, 0.02)))
    resonance_W = rng.uniform(0.15, 0.7, ROWS * COLS) * OHM * TOP_A**2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rig.yaml"
        path.write_text(yaml.safe_dump(bank(noise_W, seed, crosstalk)))
        spec = load_rig_file(path)
        with Rig(spec, path) as rig:
            model = rig.resources["chip"].model
            model.set_fabrication_nm(torch.as_tensor(-resonance_W * 100).reshape(ROWS, COLS))
            steps = run(rig, system_for(spec, path), ["wiring", "rings", "crosstalk", "weight_map"],
                        BankOptions(coarse=coarse), say=lambda line: None)
    found = {s.kind: s for s in steps}
    rings = found["rings"].arrays
    hwhm = 0.3 / 2 / 100
    ok = rings["fc.status"] == 0
    center = np.sqrt(np.mean(((rings["fc.center"] - resonance_W) / hwhm)[ok] ** 2))
    x = found["crosstalk"].arrays
    index = np.arange(ROWS * COLS)
    distance = np.abs(index[None, :] % COLS - index[:, None] % COLS)
    truth = np.select([distance == 1, distance == 2], crosstalk, 0.0)
    measured = x["fc.measured"]
    relative = np.sqrt(np.mean((x["fc.coupling"][measured] / truth[measured] - 1) ** 2))
    return float(center), float(relative), {s.kind: s.queries for s in steps}


def main() -> None:
    """Print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write-ms", type=float, default=1.0, help="settle time after a write")
    p.add_argument("--read-ms", type=float, default=1.0, help="a detector reading's integration")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    per_query = (args.write_ms + args.read_ms) / 1000
    print(f"{ROWS}x{COLS} bank, {args.seeds} hidden banks per row; bench time at "
          f"{args.write_ms:g} ms per write + {args.read_ms:g} ms per read")
    print(f"{'noise (uW)':>10s} {'coarse':>6s} {'resonance rms (hwhm)':>21s} {'crosstalk rms (rel)':>20s} "
          f"{'queries w/r/x':>16s} {'bench s':>8s}")
    for noise in (0.0, 1e-6, 1e-5, 3e-5):
        for coarse in (32, 64, 128):
            results = [calibrate(noise, coarse, seed) for seed in range(args.seeds)]
            center = np.mean([r[0] for r in results])
            relative = np.mean([r[1] for r in results])
            q = results[0][2]
            total = q["wiring"] + q["rings"] + q["crosstalk"]
            print(f"{noise * 1e6:10.1f} {coarse:6d} {center:21.4f} {relative:20.4f} "
                  f"{q['wiring']:>5d}/{q['rings']:>4d}/{q['crosstalk']:>4d} {total * per_query:8.1f}")


if __name__ == "__main__":
    main()
