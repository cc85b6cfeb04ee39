"""One study cell: train a method with a seed on a system, sweep its imperfections, measure sharpness.

A cell is idempotent: its training resumes from its own checkpoint, and its result is
written once, atomically, to ``cells/<id>.json``; a cell that already has a result with
the same digest returns it without running. The function runs in this process or on a
Dask worker alike.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from satlab import strict_json
from satlab.rig import UnsafeShutdown
from satlab.study.spec import Cell
from satlab.sweeps import Axis


@dataclass(frozen=True)
class CellJob:
    """What a worker needs to run a cell: picklable, no open resources."""

    cell: Cell
    out: Path
    sweeps: tuple[tuple[Axis, ...], ...]
    draws: int
    bn: str
    sharpness: dict | None
    progress: bool = False

    @property
    def result_path(self) -> Path:
        """Where the cell's result is written."""
        return result_path(self.out, self.cell)


def result_path(out: Path, cell: Cell) -> Path:
    """Where a study in ``out`` keeps ``cell``'s result."""
    return out / "cells" / f"{cell.id}.json"


def read_result(path: Path) -> dict | None:
    """A cell's recorded result, or None if it has none (or an unreadable one)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


@functools.cache
def source_commit() -> str:
    """The git commit of the satlab source running this (``unknown`` for an installed copy)."""
    try:
        here = Path(__file__).resolve().parent
        done = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if done.returncode != 0:
        return "unknown"
    return done.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


@functools.lru_cache(maxsize=4)
def _dataset(data_json: str):
    from satlab.config import DataConfig
    from satlab.data import load_dataset

    d = DataConfig.model_validate_json(data_json)
    return load_dataset(d.source, d.data_dir, d.train_per_class, d.test_per_class, d.limit_train, d.limit_test)


def is_done(result: dict | None, cell: Cell) -> bool:
    """Whether ``result`` is a success recorded for exactly this cell's settings."""
    return bool(result) and result.get("status") == "ok" and result.get("digest") == cell.digest


def now() -> str:
    """The local time as results and manifests record it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _identity(cell: Cell) -> dict:
    """What every record of ``cell`` starts with: which cell, with which settings and code."""
    return {"cell": cell.id, "system": cell.system, "method": cell.method, "seed": cell.seed,
            "digest": cell.digest, "commit": source_commit()}


def failure(cell: Cell, exc: BaseException, **extra) -> dict:
    """The record of a cell that raised ``exc``: its error as one line."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return {**_identity(cell), "status": "failed", "error": f"{type(exc).__name__}: {first}",
            "finished": now(), **extra}


@contextmanager
def cell_lock(path: Path) -> Iterator[None]:
    """Hold the cell whose result is ``path``: a worker Dask gave up on may still be running it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_cell(job: CellJob) -> dict:
    """Run (or resume) one cell and write its result; a failure is recorded, not raised."""
    from satlab.process import prepare_for_training

    cell = job.cell
    with cell_lock(job.result_path):
        previous = read_result(job.result_path)
        if is_done(previous, cell):
            return previous
        prepare_for_training()
        # One thread wherever the cell runs: sums in another order (two threads) would make
        # its numbers depend on where it ran; a study runs cells side by side instead.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        started = time.perf_counter()
        try:
            record = {**_identity(cell), "host": platform.node(), "pid": os.getpid(),
                      **_train_and_measure(job), "status": "ok", "finished": now()}
        except UnsafeShutdown:
            raise  # a rig left unsafe stops the study, not just the cell
        except Exception as exc:  # noqa: BLE001 - a cell's failure is data; the study goes on
            record = failure(cell, exc, host=platform.node(), pid=os.getpid(),
                             traceback=traceback.format_exc(limit=8))
        finally:
            torch.set_num_threads(threads)
        record["cell_seconds"] = round(time.perf_counter() - started, 3)
        strict_json.write_atomic(job.result_path, record)
    return record


def _trained_alike(run_dir: Path, cfg, rig_dump: dict) -> bool:
    """Whether the run folder was trained with these settings (its config and rig files;
    evaluation settings aside: they re-evaluate, never retrain)."""
    resolved = {**cfg.model_dump(mode="json"), "rig": "rig.yaml"}
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        rig = yaml.safe_load((run_dir / "rig.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    drop = lambda d: {k: v for k, v in d.items() if k != "evaluation"}  # noqa: E731
    return isinstance(config, dict) and drop(config) == drop(resolved) and rig == rig_dump


def _train_and_measure(job: CellJob) -> dict:
    from satlab import checkpoint
    from satlab.config import RunConfig
    from satlab.evaluation import imperfection_sweep
    from satlab.rig import Rig
    from satlab.rigfile import load_rig_file
    from satlab.training import build_trainee, train_method, write_run_files

    cell = job.cell
    cfg = RunConfig.model_validate(cell.config)
    method = cfg.training.methods[0]
    data = _dataset(cfg.data.model_dump_json())
    run_dir = job.out / "runs" / cell.id
    spec = load_rig_file(cfg.rig)
    rig_dump = spec.model_dump(mode="json", exclude_none=True)
    if run_dir.exists() and not _trained_alike(run_dir, cfg, rig_dump):
        # trained with other settings: kept aside, never resumed as if it were this cell's
        run_dir.rename(run_dir.with_name(f"{cell.id}.replaced-{time.time_ns()}"))
    with Rig(spec, cfg.rig) as rig:
        write_run_files(run_dir, cfg, rig_dump)
        summary = train_method(cfg, rig, data, run_dir, method, rig.state_dict(), progress=job.progress)
        if cfg.training.space == "weights":  # measured where it is deployed: on its currents
            tr = _deployed(cfg, spec, rig, run_dir / method)
        else:
            state, _ = checkpoint.load_latest(run_dir / method / "checkpoint.pt", ("model", "done"))
            tr = build_trainee(cfg, rig, method)
            tr.model.load_state_dict(state["model"])
        evaluated = time.perf_counter()
        sweeps = []
        for axes in job.sweeps:
            rows = imperfection_sweep(tr.model, rig, data.test_x, data.test_y,
                                      [(a.name, list(a.values)) for a in axes], job.draws, job.bn,
                                      cfg.evaluation.batch_size, progress=job.progress)
            sweeps.append({"axes": [a.name for a in axes], "rows": rows})
        result = {
            "training_method": method,
            "estimator": summary["estimator"],
            "test_accuracy": summary["test_accuracy"],
            "test_images": len(data.test_y),
            "rig_queries": summary["rig_queries"],
            "train_seconds": summary["wall_seconds"],
            "sweeps": sweeps,
            "evaluate_seconds": round(time.perf_counter() - evaluated, 3),
        }
        if job.sharpness is not None:
            from satlab.sharpness import control_sharpness

            s = job.sharpness
            n = s["images"]
            measured = time.perf_counter()
            result["sharpness"] = control_sharpness(
                tr.model, data.train_x[:n], data.train_y[:n], hessian_iters=s["hessian_iters"],
                trace_samples=s["trace_samples"], bench_rho=s["bench_rho"], bench_steps=s["bench_steps"],
                bench_directions=s["bench_directions"], seed=cell.seed)
            result["sharpness_seconds"] = round(time.perf_counter() - measured, 3)
    return result


def _deployed(cfg, spec, rig, method_dir: Path):
    """A weight-space run's weights deployed on the rig as currents: a controls-space trainee."""
    from satlab.deployment import load_weights
    from satlab.systems import system_for
    from satlab.training import build_trainee

    controls = cfg.model_copy(deep=True)
    controls.training.space = "controls"
    weights = load_weights(method_dir, method_dir, cfg.model, system_for(spec, cfg.rig).layer_shapes())
    return build_trainee(controls, rig, "weights", weights)
