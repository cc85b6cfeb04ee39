"""satlab study: the table, resuming, Dask workers (and losing one), failures and bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from conftest import SATLAB, TWO_LAYER_RIG, bank_rig, tiny_config, write_yaml

SWEEP = [0.0, 0.5, 1.0]


def write_study(folder: Path, rig: Path = TWO_LAYER_RIG, epochs: int = 1, **changes) -> Path:
    """A 2 methods x 2 seeds x 3 drift points study of tiny MRR cells."""
    cfg = tiny_config(rig, epochs=epochs)
    cfg["evaluation"]["drift"] = "0"
    write_yaml(folder / "base.yaml", cfg)
    study = {"name": "tiny", "config": "base.yaml", "methods": {"sat": {}, "plain": {}}, "seeds": [0, 1],
             "sweeps": [{"drift_K": ",".join(map(str, SWEEP))}],
             "sharpness": {"images": 48, "hessian_iters": 20, "trace_samples": 4, "bench_rho": 2e-4}, **changes}
    return write_yaml(folder / "study.yaml", study)


def study(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([SATLAB, "study", *map(str, args), "--quiet"], capture_output=True, text=True,
                          timeout=timeout)


def same_results(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Two tables of one study agree in everything but timing and provenance."""
    keep = ["cell", "method", "seed", "status", "test_accuracy", "rig_queries", "sweep", "drift_K",
            "accuracy"]
    pd.testing.assert_frame_equal(a[keep].reset_index(drop=True), b[keep].reset_index(drop=True))


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    path = write_study(folder)
    result = study(path, "--out", folder / "out")
    return folder, path, result


def test_tiny_study_gives_one_row_per_cell_and_point(in_process):
    folder, _, result = in_process
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(folder / "out" / "table.parquet")
    assert len(table) == 2 * 2 * len(SWEEP)
    cells = {f"mrr-sim-{m}-s{s}" for m in ("sat", "plain") for s in (0, 1)}
    assert set(table["cell"]) == cells
    assert table.groupby("cell")["drift_K"].apply(sorted).to_dict() == {c: SWEEP for c in cells}
    assert table["accuracy"].between(0, 1).all() and (table["status"] == "ok").all()
    assert set(table["estimator"]) == {"spsa"} and (table["rig_queries"] > 0).all()
    # the drift-free point of the sweep is the deployed test accuracy training reported
    nominal = table[table["drift_K"] == 0]
    assert (nominal["accuracy"] == nominal["test_accuracy"]).all()
    cells = table.drop_duplicates("cell")
    assert (cells["hessian_trace_stderr"] > 0).all() and cells["hessian_top"].notna().all()
    assert (cells["bench_rise"] >= 0).all() and (cells["bench_queries"] > 0).all()
    csv = pd.read_csv(folder / "out" / "table.csv")
    assert list(csv.columns) == list(table.columns) and len(csv) == len(table)
    html = (folder / "out" / "report.html").read_text()
    assert "data:image/png;base64," in html and "mrr-sim-sat-s1" in html
    assert (folder / "out" / "sweep-drift_K.png").stat().st_size > 1000


def test_killed_study_resumes_with_only_the_missing_cells(in_process, tmp_path):
    _, _, _ = in_process
    path = write_study(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([SATLAB, "study", str(path), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((out / "cells").glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = {p.name: p.read_text() for p in (out / "cells").glob("*.json")}
    assert 1 <= len(kept) < 4

    result = study(path, "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"{len(kept)} already done, {4 - len(kept)} to run" in result.stdout
    for name, text in kept.items():  # finished cells were not run again
        assert (out / "cells" / name).read_text() == text
    table = pd.read_parquet(out / "table.parquet")
    assert len(table) == 12 and not table.duplicated(["cell", "drift_K"]).any()
    same_results(table, pd.read_parquet(in_process[0] / "out" / "table.parquet"))


def test_changed_settings_rerun_only_what_they_change(in_process, tmp_path):
    folder, _, _ = in_process
    path = write_study(tmp_path)
    out = tmp_path / "out"
    shutil.copytree(folder / "out", out)  # the finished study, as if run here
    checkpoints = {p: p.read_bytes() for p in out.glob("runs/*/*/checkpoint.pt")}
    assert len(checkpoints) == 4

    data = yaml.safe_load(path.read_text())
    data["sweeps"] = [{"drift_K": "0,0.5,1,1.5"}]  # evaluation only: nothing is retrained
    write_yaml(path, data)
    result = study(path, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "0 already done, 4 to run" in result.stdout
    assert {p: p.read_bytes() for p in out.glob("runs/*/*/checkpoint.pt")} == checkpoints
    table = pd.read_parquet(out / "table.parquet")
    assert len(table) == 16 and table["drift_K"].max() == 1.5

    data["methods"]["sat"] = {"training": {"rho": 0.5}}  # sat trains otherwise: only sat reruns
    write_yaml(path, data)
    result = study(path, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "2 already done, 2 to run" in result.stdout
    set_aside = sorted(p.name.split(".replaced-")[0] for p in (out / "runs").glob("*.replaced-*"))
    assert set_aside == ["mrr-sim-sat-s0", "mrr-sim-sat-s1"]
    for p, content in checkpoints.items():
        assert (p.read_bytes() == content) == ("plain" in p.parts[-2])


def test_local_cluster_gives_the_in_process_table(in_process, tmp_path):
    folder, path, _ = in_process
    proc = subprocess.Popen([SATLAB, "study", str(path), "--out", str(tmp_path / "out"), "--workers", "2",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    pids = {json.loads(p.read_text())["pid"] for p in (tmp_path / "out" / "cells").glob("*.json")}
    assert len(pids) == 2 and proc.pid not in pids  # two workers ran the cells, not the study's process
    same_results(pd.read_parquet(tmp_path / "out" / "table.parquet"),
                 pd.read_parquet(folder / "out" / "table.parquet"))


def test_cells_on_real_instruments_stay_in_the_study_process(tmp_path):
    # the Q8iv rig drives its heaters through the real Qontrol driver (on an emulated serial
    # line): a rig satlab must not hand to a worker; the simulated bank of the same shape may
    q8iv = TWO_LAYER_RIG.parent / "mrr-q8iv-sim.yaml"
    simulated = write_yaml(tmp_path / "sim.yaml", bank_rig(rows=10, cols=3, seed=11))
    cfg = tiny_config(q8iv)
    cfg["model"]["physical"] = [3, 10]
    cfg["evaluation"]["drift"] = "0"
    write_yaml(tmp_path / "base.yaml", cfg)
    path = write_yaml(tmp_path / "study.yaml", {
        "name": "mixed", "config": "base.yaml", "methods": {"plain": {}}, "seeds": [0, 1],
        "systems": {"q8iv": str(q8iv), "sim": simulated.name}})
    proc = subprocess.Popen([SATLAB, "study", str(path), "--out", str(tmp_path / "out"), "--workers", "2",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    pid = {p.stem: json.loads(p.read_text())["pid"] for p in (tmp_path / "out" / "cells").glob("*.json")}
    assert pid["q8iv-plain-s0"] == pid["q8iv-plain-s1"] == proc.pid
    assert proc.pid not in (pid["sim-plain-s0"], pid["sim-plain-s1"])


def test_a_worker_killed_mid_cell_loses_and_duplicates_no_row(tmp_path):
    cfg = tiny_config(TWO_LAYER_RIG, epochs=3)
    cfg["data"]["train_per_class"] = 30
    cfg["evaluation"]["drift"] = "0"
    write_yaml(tmp_path / "base.yaml", cfg)
    path = write_yaml(tmp_path / "study.yaml", {
        "name": "kill", "config": "base.yaml", "methods": {"sat": {}, "plain": {}}, "seeds": [0],
        "sweeps": [{"drift_K": "0,1"}]})
    proc = subprocess.Popen([SATLAB, "study", str(path), "--out", str(tmp_path / "out"), "--workers", "2",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "out" / "runs"
    deadline = time.monotonic() + 300
    while (not list(runs.glob("*/*/checkpoint.pt")) and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.01)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "spawn_main" in " ".join(p.cmdline())]
    assert workers and not list((tmp_path / "out" / "cells").glob("*.json"))  # mid-cell
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    table = pd.read_parquet(tmp_path / "out" / "table.parquet")
    assert sorted(table["cell"]) == sorted(["mrr-sim-sat-s0"] * 2 + ["mrr-sim-plain-s0"] * 2)
    assert (table["status"] == "ok").all()

    # the cells the killed workers held ran again: the same table as never interrupted
    alone = study(path, "--out", tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr
    same_results(table, pd.read_parquet(tmp_path / "alone" / "table.parquet"))


def test_a_failed_cell_is_recorded_and_the_rest_go_on(tmp_path):
    rig = yaml.safe_load(TWO_LAYER_RIG.read_text())
    rig["instruments"]["heaters_fc2"]["options"] = {"fail_after_writes": 30}
    faulty = write_yaml(tmp_path / "faulty.yaml", rig)
    path = write_study(tmp_path, systems={"good": str(TWO_LAYER_RIG), "faulty": faulty.name},
                       seeds=[0], methods={"plain": {}})
    result = study(path, "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "1 cell(s) failed: faulty-plain-s0 (InstrumentFault: heaters_fc2:" in result.stdout
    table = pd.read_parquet(tmp_path / "out" / "table.parquet")
    good = table[table["cell"] == "good-plain-s0"]
    assert len(good) == 3 and (good["status"] == "ok").all()
    failed = table[table["cell"] == "faulty-plain-s0"]
    assert len(failed) == 1 and failed["status"].item() == "failed" and failed["accuracy"].isna().all()
    assert "Failed cells" in (tmp_path / "out" / "report.html").read_text()

    rig["instruments"]["heaters_fc2"]["options"] = {}  # repaired: the next run retries only that cell
    write_yaml(faulty, rig)
    again = study(path, "--out", tmp_path / "out")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 already done, 1 to run" in again.stdout


@pytest.mark.parametrize("change, field", [
    ({"methods": {"sat": {}, "bogus": {}}}, "methods.bogus.training.methods.0"),
    ({"systems": {"mrr": "missing-rig.yaml"}}, "systems.mrr"),
    ({"sweeps": [{"bogus_K": "0:1:3"}]}, "sweeps.0"),
    ({"sweeps": [{"fabrication_std_nm": "-0.1,0.1"}]}, "sweeps.0"),
    ({"methods": {"sat": {"training": {"rho": -1}}}}, "methods.sat.training.rho"),
    ({"seeds": [0, 0]}, "seeds"),
])
def test_bad_study_is_refused_before_any_cell_runs(tmp_path, change, field):
    path = write_study(tmp_path, **change)
    result = study(path, "--out", tmp_path / "out")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"error: {path}: {field}:")
    assert not (tmp_path / "out").exists()


def test_out_of_range_sweep_names_the_range(tmp_path):
    path = write_study(tmp_path, sweeps=[{"fabrication_std_nm": "-0.1,0.1"}])
    result = study(path, "--out", tmp_path / "out")
    assert "-0.1 is outside fabrication_std_nm's range (>= 0)" in result.stderr


def test_two_studies_cannot_write_one_folder(tmp_path):
    first = write_study(tmp_path, epochs=20)  # long enough to be running when the second starts
    other = tmp_path / "other"
    other.mkdir()
    second = write_study(other, name="another")
    out = tmp_path / "out"
    proc = subprocess.Popen([SATLAB, "study", str(first), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "study.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    same = study(first, "--out", out)  # the same study twice at once
    proc.communicate(timeout=600)
    assert same.returncode == 2 and "is being written by another satlab study process" in same.stderr
    assert proc.returncode == 0
    result = study(second, "--out", out)  # another study afterwards
    assert result.returncode == 2 and "holds study 'tiny'" in result.stderr


STUDIES = sorted(Path(__file__).resolve().parents[1].joinpath("satlab", "configs", "studies").glob("*.yaml"))


def test_the_paper_systems_have_study_files():
    assert {p.stem for p in STUDIES} >= {"system1-drift", "system2-mzi", "system3-d2nn", "system4-freespace"}


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_a_shipped_study_validates_whole(path):
    from satlab.study.spec import load_study

    loaded = load_study(path)
    spec = yaml.safe_load(path.read_text())
    assert len(loaded.cells) == len(spec["methods"]) * len(spec["seeds"])
    assert [tuple(a.name for a in axes) for axes in loaded.sweeps] == [tuple(s) for s in spec["sweeps"]]
    assert all(c.simulated for c in loaded.cells)
    assert len({c.digest for c in loaded.cells}) == len(loaded.cells)
    # the study's sweeps evaluate a cell; training scores the nominal point only
    assert {c.config["evaluation"]["drift"] for c in loaded.cells} == {"0"}
