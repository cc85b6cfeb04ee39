"""What publishing the live status costs a training, measured side by side in one run.

The same small SAT training on the simulated two-layer MRR rig (SPSA, short steps: the
worst case for a per-step cost) runs with the live status on and off, alternately, a few
times each; the training loop's wall time (summary.json's wall_seconds, evaluation
excluded) of each is printed with the ratio of the medians. Then the parts: a step whose
publication is throttled away (one clock reading), the per-step stop-request check (one
os.path.exists), and one publication (status.json built and replaced).

Usage: python benchmarks/live_status_overhead.py [--repeats 5] [--epochs 3] [--per-class 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from satlab.config import RunConfig
from satlab.data import load_dataset
from satlab.live_status import LiveStatus
from satlab.process import prepare_for_training
from satlab.rig import Rig
from satlab.training import train_method, write_run_files

RIG = Path(__file__).resolve().parents[1] / "satlab" / "configs" / "mrr-sim.yaml"


def config(epochs: int, per_class: int) -> RunConfig:
    """A small SAT config: 10 digits a step, so steps are short and many."""
    return RunConfig.model_validate({
        "name": "live-overhead", "rig": str(RIG),
        "data": {"source": "offline", "train_per_class": per_class, "test_per_class": 2},
        "model": {"conv_channels": [], "physical": [32, 16, 10]},
        "estimator": {"name": "spsa", "directions": 4},
        "training": {"methods": ["sat"], "epochs": epochs, "batch_size": 10,
                     "checkpoint_every": 10**6, "log_every": 1},
        "evaluation": {"drift": "0", "batch_size": 50}})


def train(cfg: RunConfig, data, publish: bool) -> tuple[float, int, float]:
    """Training wall time (s), publications, and their total seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        live = LiveStatus(run, "live-overhead.yaml") if publish else None
        writes, seconds = [0], [0.0]
        if live is not None:  # count and time every publication
            inner = live._publish

            def timed(*args, **kwargs):
                start = time.perf_counter()
                out = inner(*args, **kwargs)
                seconds[0] += time.perf_counter() - start
                writes[0] += 1
                return out
            live._publish = timed
        with Rig.from_file(RIG) as rig:
            write_run_files(run, cfg, rig.spec.model_dump(mode="json", exclude_none=True))
            summary = train_method(cfg, rig, data, run, "sat", rig.state_dict(), progress=False,
                                   live=live)
        return summary["wall_seconds"], writes[0], seconds[0]


def per_call(fn, calls: int = 200_000) -> float:
    """Nanoseconds per call of ``fn``."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e9


def main() -> None:
    """Run the comparison and print it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--per-class", type=int, default=100)
    args = p.parse_args()
    prepare_for_training()
    cfg = config(args.epochs, args.per_class)
    d = cfg.data
    data = load_dataset(d.source, d.data_dir, d.train_per_class, d.test_per_class, d.limit_train,
                        d.limit_test)
    steps = args.epochs * -(-len(data.train_y) // cfg.training.batch_size)
    train(cfg, data, True)  # warm-up: imports, allocator, file system
    off, on, writes, publish_s = [], [], [], []
    for _ in range(args.repeats):
        off.append(train(cfg, data, False)[0])
        wall, count, seconds = train(cfg, data, True)
        on.append(wall)
        writes.append(count)
        publish_s.append(seconds / count)
    print(f"{steps} SAT steps (SPSA, 4 directions) on {RIG.name}, {args.repeats} runs each, alternating")
    print(f"  live status off: {', '.join(f'{w:.3f}' for w in off)} s  (median {statistics.median(off):.3f})")
    print(f"  live status on:  {', '.join(f'{w:.3f}' for w in on)} s  (median {statistics.median(on):.3f}, "
          f"{statistics.median(writes):.0f} publications)")
    print(f"  ratio on/off: {statistics.median(on) / statistics.median(off):.3f} of the medians, "
          f"{min(on) / min(off):.3f} of the fastest")

    with tempfile.TemporaryDirectory() as tmp:
        live = LiveStatus(tmp, "x.yaml")
        live._next = float("inf")  # every step throttled away
        step_ns, stop_ns = per_call(lambda: live.step(0, 0, None, 0.0)), per_call(live.stop_requested)
    publication = statistics.median(publish_s)
    # the parts add up to the overhead without the run-to-run noise of whole trainings
    added = steps * (step_ns + stop_ns) * 1e-9 + statistics.median(writes) * publication
    print(f"  a throttled step: {step_ns:.0f} ns; the stop check: {stop_ns:.0f} ns; "
          f"one publication: {1e3 * publication:.2f} ms")
    print(f"  from the parts: {1e3 * added:.1f} ms added to {statistics.median(off):.3f} s "
          f"({100 * added / statistics.median(off):.2f} %)")


if __name__ == "__main__":
    main()
