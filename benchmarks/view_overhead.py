"""What watching a run in `satlab view` costs its training, measured side by side in one run.

The same small SAT training on the simulated two-layer MRR rig runs alternately alone and
watched: a `satlab view` server on the runs folder, and a client that does what an open
run page does (the run list every 2 s, the run's event stream read as it comes). Each
training's loop time (summary.json's wall_seconds) is collected; the medians and their
ratio are printed, with the CPU time the server used while watching (the steadier figure
on a shared machine: the server reads only the run folder, so the CPU it takes is all it
can take from the training).

Usage: python benchmarks/view_overhead.py [--repeats 4] [--epochs 3] [--per-class 400]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2
import psutil
import yaml

RIG = Path(__file__).resolve().parents[1] / "satlab" / "configs" / "mrr-sim.yaml"
SATLAB = str(Path(sys.executable).with_name("satlab"))


def write_config(folder: Path, epochs: int, per_class: int) -> Path:
    """A small SAT config whose steps are short: the worst case for a per-step cost."""
    cfg = {"name": "watched", "rig": str(RIG),
           "data": {"source": "offline", "train_per_class": per_class, "test_per_class": 2},
           "model": {"conv_channels": [], "physical": [32, 16, 10]},
           "estimator": {"name": "spsa", "directions": 4},
           "training": {"methods": ["sat"], "epochs": epochs, "batch_size": 10, "log_every": 1},
           "evaluation": {"drift": "0", "batch_size": 50}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def watch(base: str, name: str, stop: threading.Event) -> None:
    """What an open page does: poll the run list until the run is there, read its event stream."""
    with httpx2.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            ids = [r["id"] for r in client.get("/api/runs").json()["runs"] if r["id"].endswith(name)]
            if ids:
                break
            time.sleep(2.0)
        else:
            return
        with client.stream("GET", f"/api/run/{ids[0]}/events") as events:
            for _ in events.iter_lines():
                if stop.is_set():
                    return


def train(config: Path, runs: Path, watched: bool) -> tuple[float, float]:
    """The training loop's wall time (s) of one run, alone or watched, and the view server's
    CPU time meanwhile per second of the training process (0 alone)."""
    run = runs / f"run-{time.time_ns()}"
    server, stop, reader = None, threading.Event(), None
    if watched:
        port = free_port()
        server = subprocess.Popen([SATLAB, "view", str(runs), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):  # until it answers
            try:
                httpx2.get(base + "/api/runs", timeout=1)
                break
            except httpx2.TransportError:
                time.sleep(0.1)
        reader = threading.Thread(target=watch, args=(base, run.name, stop), daemon=True)
        reader.start()
    cpu = psutil.Process(server.pid).cpu_times() if server is not None else None
    started = time.perf_counter()
    try:
        subprocess.run([SATLAB, "train", str(config), "--run-dir", str(run), "--quiet"], check=True,
                       stdout=subprocess.DEVNULL)
        used = 0.0
        if server is not None:
            now = psutil.Process(server.pid).cpu_times()
            used = (now.user + now.system - cpu.user - cpu.system) / (time.perf_counter() - started)
    finally:
        stop.set()
        if server is not None:
            server.terminate()
            server.wait()
    return json.loads((run / "sat" / "summary.json").read_text())["wall_seconds"], used


def main() -> None:
    """Alternate watched and unwatched trainings; print the medians and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        config = write_config(Path(tmp), args.epochs, args.per_class)
        times: dict[bool, list[float]] = {False: [], True: []}
        server_cpu = []
        for i in range(2 * args.repeats):
            watched = bool(i % 2)
            seconds, used = train(config, runs, watched)
            times[watched].append(seconds)
            if watched:
                server_cpu.append(used)
    alone, seen = statistics.median(times[False]), statistics.median(times[True])
    steps = args.epochs * args.per_class  # 10 digits a step, 10 classes
    print(f"SAT training, {steps} steps, {args.repeats} runs each, alternating (loop time, median)")
    print(f"alone:                 {alone:7.2f} s   {times[False]}")
    print(f"watched in satlab view: {seen:7.2f} s   {times[True]}")
    print(f"ratio watched/alone:    {seen / alone:7.3f}")
    print(f"the view server's CPU while watching: {100 * statistics.median(server_cpu):.2f} % of one core "
          f"(of {psutil.cpu_count()}), median")


if __name__ == "__main__":
    main()
