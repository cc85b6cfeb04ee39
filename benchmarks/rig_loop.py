"""Framework overhead of SAT on the simulated MRR rig, measured side by side in one run.

1. Zero-latency instruments: the share of a SAT training step spent inside the
   physics. The step is timed while every call of the simulated benches' physics
   (MrrBench.read, the code the simulated detectors run) is timed and recorded
   with its shape: how many current settings it evaluated at once, and the batch.
   share = time inside the physics / step time. As a check, the physics is then
   called again directly with the same shapes, outside the framework. The rest of
   the step is split into the guard's checks of every probe and everything else
   (network forward and backward, twin, optimizer, estimator and rig bookkeeping).
2. The same SAT steps with batched probes switched off (Rig.stack_probes = False:
   every probe written and read one at a time, as on hardware): speed-up of
   batching.
3. Simulated settle times (1 ms per current write, 0.5 ms per detector read):
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
from satlab.process import prepare_for_training
from satlab.rig import Rig
from satlab.rigfile import RigSpec, load_rig_file
from satlab.training import build_trainee


def record_physics(rig: Rig) -> tuple[list[tuple[object, int, int]], list[float]]:
    """Wrap every bench's read to log (bench, settings held, batch) and its seconds per call."""
    calls, seconds = [], []
    for bench in rig.resources.values():
        def read(averages=1, bench=bench, inner=bench.read):
            held = bench.currents.shape[0] if bench.currents.ndim == 2 else 1
            calls.append((bench, held, bench.inputs.shape[0]))
            start = time.perf_counter()
            out = inner(averages)
            seconds.append(time.perf_counter() - start)
            return out
        bench.read = read
    return calls, seconds


def time_guard(rig: Rig) -> list[float]:
    """Wrap every current guard's stack check; seconds per call."""
    seconds = []
    for guard in rig.guards.values():
        def check_many(requested, inner=guard.check_many):
            start = time.perf_counter()
            out = inner(requested)
            seconds.append(time.perf_counter() - start)
            return out
        guard.check_many = check_many
    return seconds


def physics_direct(calls: list[tuple[object, int, int]]) -> float:
    """Seconds for the benches' physics called directly with the recorded shapes."""
    total = 0.0
    gen = torch.Generator().manual_seed(0)
    for bench, held, batch in calls:
        upper = bench.model.params.max_current_A
        currents = torch.rand(held, bench.model.channels, generator=gen, dtype=torch.float64) * upper
        bench.currents = currents[0] if held == 1 else currents
        bench.inputs = torch.rand(batch, bench.model.cols, generator=gen, dtype=torch.float64)
        start = time.perf_counter()
        type(bench).read(bench)
        total += time.perf_counter() - start
    return total


def time_steps(spec: RigSpec, cfg, data, steps: int, stack: bool = True, record: bool = False):
    """Seconds for `steps` SAT steps after a warm-up, the rig queries and writes they made,
    and (with ``record``) the physics calls, seconds inside the physics and in the guard."""
    with Rig(spec) as rig:
        rig.stack_probes = stack
        tr = build_trainee(cfg, rig, "sat")
        bs = cfg.training.batch_size
        tr.controller.step(data.train_x[:bs], data.train_y[:bs])  # warm-up
        calls, in_physics = record_physics(rig) if record else ([], [])
        in_guard = time_guard(rig) if record else []
        queries0, writes0 = tr.rig_queries, rig.writes
        start = time.perf_counter()
        for k in range(steps):
            idx = slice((k + 1) * bs, (k + 2) * bs)
            tr.controller.step(data.train_x[idx], data.train_y[idx])
        elapsed = time.perf_counter() - start
        return (elapsed, tr.rig_queries - queries0, rig.writes - writes0, list(calls),
                sum(in_physics), sum(in_guard))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--conv", default="", help="digital conv channels, e.g. 6,16 (default: none)")
    args = ap.parse_args()
    prepare_for_training()  # as the satlab command does
    cfg = load_config(DEFAULT_CONFIG)
    cfg.model.conv_channels = [int(c) for c in args.conv.split(",") if c]
    data = load_offline_mnist(40, 1)
    spec = load_rig_file(cfg.rig)

    elapsed, queries, _, calls, in_situ, guard = time_steps(spec, cfg, data, args.steps, record=True)
    replayed = physics_direct(calls)
    print(f"[zero latency] {args.steps} SAT steps, {queries} rig queries in {len(calls)} physics "
          f"calls, conv={cfg.model.conv_channels}")
    print(f"  step time {elapsed:.3f} s; inside the physics {in_situ:.3f} s "
          f"(the same calls replayed alone: {replayed:.3f} s)")
    print(f"  share of the step inside the physics model: {in_situ / elapsed:.1%} "
          f"(replayed: {replayed / elapsed:.1%})")
    print(f"  the rest: guard checks {guard / elapsed:.1%}, network, estimator and rig bookkeeping "
          f"{(elapsed - in_situ - guard) / elapsed:.1%}")
    print(f"  per query: {1e6 * elapsed / queries:.1f} us in the step, {1e6 * in_situ / queries:.1f} us "
          "of it physics")

    loop, loop_queries, *_ = time_steps(spec, cfg, data, args.steps, stack=False)
    assert loop_queries == queries
    print(f"[one probe at a time] same steps {loop:.3f} s -> batched probes are {loop / elapsed:.1f}x "
          "faster")

    slow = copy.deepcopy(spec.model_dump())
    for inst in slow["instruments"].values():
        inst["settle_time"] = {"current_source": 1e-3, "photodetector": 0.5e-3}.get(inst["kind"], 0.0)
    slow_spec = RigSpec.model_validate(slow)
    elapsed, queries, writes, *_ = time_steps(slow_spec, cfg, data, 1)
    waits = writes * 1e-3 + queries * 0.5e-3
    print(f"[settle times] 1 SAT step: {writes} writes x 1 ms + {queries} reads x 0.5 ms "
          f"= {waits:.3f} s of waiting")
    print(f"  wall time {elapsed:.3f} s -> {elapsed / waits:.3f}x the sum of the waits")


if __name__ == "__main__":
    main()
