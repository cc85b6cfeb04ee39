"""Framework overhead of SAT on the simulated MRR rig, measured side by side in one run.

1. Zero-latency instruments: the share of a SAT training step spent inside the
   physics model. The step is timed; then the physics (MrrBench.read: the code the
   simulated detectors run, on the twin's MrrBankModel) is called directly as many
   times, with the same shapes, as the step queried the rig.
   share = physics time / step time.
2. Simulated settle times (1 ms per current write, 0.5 ms per detector read):
   the loop's wall time vs the sum of those waits.

Usage: python benchmarks/rig_loop.py [--steps N] [--conv 6,16]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from satlab.config import DEFAULT_CONFIG, load_config
from satlab.data import load_offline_mnist
from satlab.rig import Rig
from satlab.rigfile import RigSpec, load_rig_file
from satlab.training import build_trainee


def physics_direct(rig: Rig, trainee, batch: int, queries: list[int]) -> float:
    """Seconds for the benches' physics (MrrBench.read), called directly `queries` times."""
    total = 0.0
    for backend, n in zip(trainee.backends, queries):
        bench = rig.resources[rig.spec.instruments[backend.spec.heaters].resource]
        bench.inputs = torch.rand(batch, backend.in_features, dtype=torch.float64)
        bench.currents = backend.upper / 4
        start = time.perf_counter()
        for _ in range(n):
            bench.read()
        total += time.perf_counter() - start
    return total


def time_steps(spec: RigSpec, cfg, data, steps: int) -> tuple[float, list[int], int, Rig, object]:
    with Rig(spec) as rig:
        tr = build_trainee(cfg, rig, "sat")
        bs = cfg.training.batch_size
        tr.controller.step(data.train_x[:bs], data.train_y[:bs])  # warm-up
        before = [b.queries for b in tr.backends]
        writes0 = rig.writes
        start = time.perf_counter()
        for k in range(steps):
            idx = slice((k + 1) * bs, (k + 2) * bs)
            tr.controller.step(data.train_x[idx], data.train_y[idx])
        elapsed = time.perf_counter() - start
        queries = [b.queries - q for b, q in zip(tr.backends, before)]
        return elapsed, queries, rig.writes - writes0, rig, tr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--conv", default="", help="digital conv channels, e.g. 6,16 (default: none)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(DEFAULT_CONFIG)
    cfg.model.conv_channels = [int(c) for c in args.conv.split(",") if c]
    data = load_offline_mnist(40, 1)
    spec = load_rig_file(cfg.rig)

    elapsed, queries, writes, rig, tr = time_steps(spec, cfg, data, args.steps)
    with Rig(spec) as rig2:
        physics = physics_direct(rig2, tr, cfg.training.batch_size, queries)
    print(f"[zero latency] {args.steps} SAT steps, {sum(queries)} rig queries, conv={cfg.model.conv_channels}")
    print(f"  step time {elapsed:.3f} s, physics called directly {physics:.3f} s")
    n = sum(queries)
    print(f"  share of the step inside the physics model: {physics / elapsed:.1%}")
    print(f"  per query: {1e6 * elapsed / n:.1f} us in the step, {1e6 * physics / n:.1f} us of it physics")

    slow = copy.deepcopy(spec.model_dump())
    for name, inst in slow["instruments"].items():
        inst["settle_time"] = {"current_source": 1e-3, "photodetector": 0.5e-3}.get(inst["kind"], 0.0)
    slow_spec = RigSpec.model_validate(slow)
    steps = 1
    elapsed, queries, writes, _, _ = time_steps(slow_spec, cfg, data, steps)
    waits = writes * 1e-3 + sum(queries) * 0.5e-3
    print(f"[settle times] {steps} SAT step: {writes} writes x 1 ms + {sum(queries)} reads x 0.5 ms "
          f"= {waits:.3f} s of waiting")
    print(f"  wall time {elapsed:.3f} s -> {elapsed / waits:.3f}x the sum of the waits")


if __name__ == "__main__":
    main()
