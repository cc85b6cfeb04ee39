"""Wire time of the Q8iv driver on a line paced like a real one, per-channel vs vector
writes, side by side in one run, and what it predicts for the demo on a real bench.

The emulator (2 modules, 16 channels) paces bytes at the baud rate (10 bits a byte),
waits the firmware's reply latency and delivers replies at a USB-serial adapter's
latency-timer ticks (docs/instruments.md: where the defaults come from). satlab's
Q8ivSource drives it through pyserial in each write mode:
- channel: one ``I<ch>=`` per changed channel, each read back with ``I<ch>?``;
- vector: one ``IVEC`` per module with a change, read back with one ``Iall?``;
- auto (the default): whichever costs the line less, with the latency measured at opening.
Two workloads: a full-bank write (every channel changes) and a finite-difference probe
(a row of a central-difference stack: one channel moved +h, the previous one restored).

The prediction: the demo (`satlab train`, SAT over 672 heaters by central differences)
queries the rig once per probe; its rig queries per epoch are counted by training one
epoch on the simulated rig, then multiplied by the probe's wire time plus the settle time.

Usage: python benchmarks/q8iv_wire.py [--repeats N] [--settle-ms 1] [--baud 115200]
       [--latency-ms 1] [--latency-timer-ms 16] [--no-demo]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from satlab.drivers.qontrol.q8iv import Q8ivSource
from satlab.simulators.emulators.q8iv import Q8ivEmulator

from satlab.cli import main as satlab
from satlab.config import DEFAULT_CONFIG, load_config

MODES = ("channel", "vector", "auto")


def seconds_per_write(source: Q8ivSource, rows: list[np.ndarray]) -> float:
    """Mean seconds of ``set_currents`` over ``rows`` applied in turn (after one warm-up)."""
    source.set_currents(rows[-1])
    start = time.perf_counter()
    for row in rows:
        source.set_currents(row)
    return (time.perf_counter() - start) / len(rows)


def workloads(channels: int, repeats: int, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Full-bank writes (every channel new) and central-difference probe rows."""
    full = [rng.uniform(0.001, 0.010, channels) for _ in range(repeats)]
    theta, h, probes = rng.uniform(0.002, 0.009, channels), 2e-5, []
    for k in range(repeats):
        for sign in (1, -1):
            row = theta.copy()
            row[k % channels] += sign * h
            probes.append(row)
    return {"full-bank write": full, "FD probe": probes}


def demo_queries_per_epoch() -> tuple[int, int]:
    """SAT's rig queries in one epoch of the demo, counted on the simulated rig, and its heaters."""
    widths = load_config(DEFAULT_CONFIG).model.physical  # one ring per weight of each layer
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        assert satlab(["train", "--epochs", "1", "--run-dir", str(run), "--quiet"]) == 0
        summary = json.loads((run / "sat" / "summary.json").read_text())
    return summary["rig_queries"], sum(a * b for a, b in zip(widths, widths[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=16, help="writes of each kind per mode")
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--latency-ms", type=float, default=1.0, help="firmware reply latency")
    ap.add_argument("--latency-timer-ms", type=float, default=16.0, help="USB adapter's timer")
    ap.add_argument("--settle-ms", type=float, default=1.0,
                    help="heater settle time per write for the prediction")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo prediction")
    args = ap.parse_args()
    emulator = Q8ivEmulator(modules=2, baud_rate=args.baud, reply_latency_s=args.latency_ms * 1e-3,
                            latency_timer_s=args.latency_timer_ms * 1e-3)
    port = emulator.start()
    source = Q8ivSource(port, baud_rate=args.baud, modules=2)
    rng = np.random.default_rng(0)
    loads = workloads(source.channels, args.repeats, rng)
    results = {}
    for mode in MODES:
        source.write_mode = mode
        for name, rows in loads.items():
            results[mode, name] = seconds_per_write(source, rows)
    source.safe_state()
    source.close()
    emulator.stop()

    print(f"Q8iv, 2 modules (16 channels), {args.baud} baud, {args.latency_ms:g} ms firmware "
          f"latency, {args.latency_timer_ms:g} ms USB latency timer; measured latency at "
          f"opening {1e3 * source.latency_s:.1f} ms")
    print(f"{'':<18}" + "".join(f"{mode:>12}" for mode in MODES) + "   vector/channel  auto/channel")
    for name in loads:
        ms = [1e3 * results[mode, name] for mode in MODES]
        print(f"{name:<18}" + "".join(f"{m:>9.1f} ms" for m in ms)
              + f"   {ms[1] / ms[0]:>14.2f}  {ms[2] / ms[0]:>12.2f}")
    if args.no_demo:
        return
    queries, heaters = demo_queries_per_epoch()
    print(f"\ndemo (satlab train, SAT): {queries} rig queries per epoch on {heaters} heaters "
          f"({-(-heaters // 8)} modules), settle {args.settle_ms:g} ms per write, detector time "
          f"not included:")
    for mode in MODES:
        hours = queries * (results[mode, "FD probe"] + args.settle_ms * 1e-3) / 3600
        print(f"  {mode:<8} {hours:6.1f} bench hours per epoch")
    print("  (vector reads back with Iall?, whose reply grows with the chain: on the demo's "
          "chain its probe costs more than measured here)")


if __name__ == "__main__":
    main()
