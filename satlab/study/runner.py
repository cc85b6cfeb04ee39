"""Running a study's cells: in this process, on a Dask LocalCluster, or on an existing Dask cluster.

Simulated cells fan out to Dask workers; a cell on real instruments runs here, in the
process that owns the rig, one after another (a rig is a resource: two cells never hold
it at once, and Ctrl-C reaches its safe-state handling). Every result is a file written
once; the table is rebuilt from those files after each cell, so a crash never corrupts it
and a rerun does only the cells without a result.
"""

from __future__ import annotations

import fcntl
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from satlab import strict_json
from satlab.study.cell import (
    CellJob,
    cell_lock,
    failure,
    is_done,
    now,
    read_result,
    result_path,
    run_cell,
)
from satlab.study.spec import Study
from satlab.study.table import build_table, write_table
from satlab.validation import ConfigError


@contextmanager
def study_folder(study: Study) -> Iterator[None]:
    """Hold the study folder for this process; refuse it if another study writes there."""
    out = study.out
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "study.json"
    lock = open(out / ".lock", "w")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(study.path, "out", f"{out} is being written by another satlab study "
                              "process; one study per folder at a time") from None
        known = read_result(manifest)
        if known is not None and known.get("name") != study.spec.name:
            raise ConfigError(study.path, "name", f"{out} holds study {known.get('name')!r}; a study "
                              "folder belongs to one study (set out: or --out)")
        (out / "cells").mkdir(exist_ok=True)
        strict_json.write_atomic(manifest, {
            "name": study.spec.name, "study_file": str(study.path.resolve()),
            "cells": [c.id for c in study.cells], "updated": now()})
        (out / "study.yaml").write_text(study.path.read_text())
        yield
    finally:
        lock.close()  # closing releases the lock, as does the process's death


def pending(study: Study) -> list[str]:
    """The cells still to run: no result, a failed one, or one recorded for other settings."""
    return [cell.id for cell in study.cells if not is_done(read_result(result_path(study.out, cell)), cell)]


def _client(workers: int | None, scheduler: str | None):
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    # each worker one thread: torch in two threads of one process contends, processes do not
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    return Client(cluster)


def _line(result: dict) -> str:
    if result.get("status") != "ok":
        return f"{result['cell']}: failed: {result.get('error')}"
    return (f"{result['cell']}: test accuracy {100 * result['test_accuracy']:.2f}%, "
            f"{result['cell_seconds']:.0f} s")


def run_study(study: Study, workers: int | None = None, scheduler: str | None = None,
              progress: bool = True) -> None:
    """Run every pending cell of ``study`` and write its table."""
    with study_folder(study):
        todo = set(pending(study))
        done = len(study.cells) - len(todo)
        jobs = [CellJob(c, study.out, tuple(study.sweeps), study.spec.draws, study.spec.bn,
                        study.spec.sharpness and study.spec.sharpness.model_dump(),
                        progress=progress and not (workers or scheduler))
                for c in study.cells if c.id in todo]
        ids = [c.id for c in study.cells]
        print(f"study {study.spec.name}: {len(study.cells)} cells, {done} already done, "
              f"{len(jobs)} to run -> {study.out}")
        bar = tqdm(total=len(study.cells), initial=done, unit="cell", desc=study.spec.name,
                   disable=not progress, dynamic_ncols=True)

        def finished(result: dict) -> None:
            write_table(build_table(study.out, ids), study.out)
            bar.update()
            bar.write(_line(result))

        with bar:
            fan_out = bool(workers or scheduler)
            remote = [j for j in jobs if fan_out and j.cell.simulated]
            here = [j for j in jobs if not (fan_out and j.cell.simulated)]
            if remote:
                _run_on_dask(remote, workers, scheduler, here, finished)
            else:
                for job in here:
                    finished(run_cell(job))
        write_table(build_table(study.out, ids), study.out)


def _run_on_dask(remote: list[CellJob], workers: int | None, scheduler: str | None,
                 here: list[CellJob], finished) -> None:
    """Submit ``remote`` to Dask; run ``here`` (real instruments) in this process meanwhile."""
    import hashlib

    from distributed import as_completed

    folder = hashlib.sha256(str(remote[0].out).encode()).hexdigest()[:8]  # one study, one key set
    with _client(workers, scheduler) as client:
        futures = {client.submit(run_cell, job, pure=False,
                                 key=f"satlab-cell-{folder}-{job.cell.id}-{job.cell.digest}"): job
                   for job in remote}
        completed = as_completed(futures)
        for job in here:
            finished(run_cell(job))
            for future in completed.next_batch(block=False):  # report what finished meanwhile
                finished(_outcome(future, futures[future]))
        for future in completed:
            finished(_outcome(future, futures[future]))


def _outcome(future, job: CellJob) -> dict:
    """A finished future's result; if the task itself failed (e.g. Dask gave up after workers
    died running it), the cell's recorded failure."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - the cell is recorded failed, the study goes on
        with cell_lock(job.result_path):  # a process still running it writes first
            result = read_result(job.result_path)
            if is_done(result, job.cell):
                return result
            result = failure(job.cell, exc)
            strict_json.write_atomic(job.result_path, result)
        return result


def failed_cells(study: Study) -> list[str]:
    """``id (error)`` of every cell whose recorded result is a failure."""
    failed = []
    for cell in study.cells:
        result = read_result(result_path(study.out, cell))
        if result and result.get("status") == "failed":
            failed.append(f"{cell.id} ({result.get('error')})")
    return failed


def summary_lines(study: Study, failed: list[str]) -> list[str]:
    """Where the study's table is, and the failed cells with the command that retries them."""
    lines = [f"table: {study.out / 'table.parquet'} and {study.out / 'table.csv'}"]
    if failed:
        lines.append(f"{len(failed)} cell(s) failed: {'; '.join(failed)}")
        lines.append(f"run the same command again to retry them ({sys.argv[0]} study {study.path})")
    return lines
