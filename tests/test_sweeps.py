"""``satlab evaluate --sweep``: imperfection grids, draws, BatchNorm modes, bad options."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess

import pytest
import yaml
from conftest import SATLAB, TWO_LAYER_RIG, tiny_config, write_yaml

from satlab.sweeps import Axis, SweepOptionError, parse_axes
from satlab.systems import Imperfection

PNG = b"\x89PNG\r\n\x1a\n"


def satlab(*args):
    return subprocess.run([SATLAB, *map(str, args)], capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run with one method (sat): 50 test images on the noise-free two-layer rig."""
    tmp = tmp_path_factory.mktemp("sweeps")
    cfg = write_yaml(tmp / "tiny.yaml", tiny_config(TWO_LAYER_RIG, methods=["sat"]))
    result = satlab("train", cfg, "--run-dir", tmp / "run", "--quiet")
    assert result.returncode == 0, result.stderr
    return tmp / "run"


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def summary(run):
    return json.loads((run / "sat" / "summary.json").read_text())


def test_2d_grid_writes_one_row_per_point_and_a_heat_map(run):
    before = summary(run)
    result = satlab("evaluate", run, "--sweep", "drift_K=0:1:3", "--sweep", "crosstalk_scale=0.5,1",
                    "--draws", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    stem = "sweep-drift_K+crosstalk_scale"
    rows = read_csv(run / "sat" / f"{stem}.csv")
    assert list(rows[0]) == ["drift_K", "crosstalk_scale", "accuracy", "std", "min", "draws"]
    assert [(float(r["drift_K"]), float(r["crosstalk_scale"])) for r in rows] == [
        (d, c) for d in (0.0, 0.5, 1.0) for c in (0.5, 1.0)]
    record = json.loads((run / "sat" / f"{stem}.json").read_text())
    assert [(a["name"], a["unit"]) for a in record["axes"]] == [("drift_K", "K"), ("crosstalk_scale", "x")]
    assert (record["bn"], record["draws"], record["test_images"]) == ("eval", 2, 50)
    assert len(record["rows"]) == 6
    # deterministic imperfections on a noise-free rig: every draw scores the same
    assert all(r["draws"] == "2" and float(r["std"]) == 0 for r in rows)
    assert all(len(set(r["draw_accuracies"])) == 1 for r in record["rows"])
    assert "no swept imperfection is random" in result.stderr
    # the calibration point (0 K, crosstalk as calibrated) is the accuracy training recorded
    nominal = next(r for r in rows if float(r["drift_K"]) == 0 and float(r["crosstalk_scale"]) == 1)
    assert float(nominal["accuracy"]) == pytest.approx(before["test_accuracy"])
    assert (run / f"{stem}.png").read_bytes()[:8] == PNG
    assert f"wrote {run / f'{stem}.png'}" in result.stdout
    assert "drift_K (K)" in result.stdout and "crosstalk_scale (x)" in result.stdout
    assert summary(run) == before  # only a 1-D drift sweep (one draw, eval BN) updates summary.json


def test_draws_of_a_random_imperfection_differ(run):
    result = satlab("evaluate", run, "--sweep", "fabrication_std_nm=0.05,0.2", "--draws", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    record = json.loads((run / "sat" / "sweep-fabrication_std_nm.json").read_text())
    assert record["draws"] == 3
    for row in record["rows"]:
        draws = row["draw_accuracies"]
        assert len(draws) == 3 and row["std"] > 0
        assert row["accuracy"] == pytest.approx(statistics.fmean(draws))
        assert row["std"] == pytest.approx(statistics.pstdev(draws))
    # three chips, three accuracies (at 0.2 nm this tiny network is near chance, where
    # 50 test images give accuracies in steps of 2 % and two draws may tie)
    assert len(set(record["rows"][0]["draw_accuracies"])) == 3
    assert [r["draws"] for r in read_csv(run / "sat" / "sweep-fabrication_std_nm.csv")] == ["3", "3"]
    assert "±" in result.stdout
    assert (run / "sweep-fabrication_std_nm.png").read_bytes()[:8] == PNG


def test_bn_batch_is_labelled_and_differs_from_deployment(run):
    eval_mode = {p["drift_K"]: p["accuracy"] for p in summary(run)["drift_sweep"]}
    result = satlab("evaluate", run, "--sweep", "drift_K=0:2:3", "--bn", "batch", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "published protocols, not deployment" in result.stdout
    record = json.loads((run / "sat" / "sweep-drift_K-bn-batch.json").read_text())
    assert record["bn"] == "batch" and "not deployment" in record["bn_note"]
    assert len(read_csv(run / "sat" / "sweep-drift_K-bn-batch.csv")) == 3
    assert (run / "sweep-drift_K-bn-batch.png").read_bytes()[:8] == PNG
    batch_mode = {r["drift_K"]: r["accuracy"] for r in record["rows"]}
    common = batch_mode.keys() & eval_mode.keys()
    assert common
    assert any(batch_mode[d] != eval_mode[d] for d in common)
    assert {p["drift_K"]: p["accuracy"] for p in summary(run)["drift_sweep"]} == eval_mode


@pytest.fixture
def traced_run(run, tmp_path):
    """A copy of the run whose rig writes a trace file when its heaters open."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("sweep-*"))
    rig = yaml.safe_load((copy / "rig.yaml").read_text())
    trace = tmp_path / "heaters.trace"
    rig["instruments"]["heaters_fc2"].setdefault("options", {})["trace_file"] = str(trace)
    write_yaml(copy / "rig.yaml", rig)
    return copy, trace


def test_unknown_imperfection_exits_2_with_one_line_and_opens_no_rig(traced_run):
    copy, trace = traced_run
    result = satlab("evaluate", copy, "--sweep", "temperature=0:1:3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --sweep temperature=0:1:3: unknown imperfection 'temperature'")
    assert "known imperfections: drift_K (K), fabrication_std_nm (nm, random)" in lines[0]
    assert not trace.exists()
    assert not list(copy.rglob("sweep-*"))


IMPERFECTIONS = {"drift_K": Imperfection("K", 0.0, "drift"),
                 "fabrication_std_nm": Imperfection("nm", 0.0, "spread", random=True)}


@pytest.mark.parametrize("sweeps, drift, message", [
    (["drift_K"], None, "--sweep drift_K: expected NAME=START:STOP:COUNT"),
    (["drift_K=0:1"], None, "--sweep drift_K=0:1: expected 'start:stop:count'"),
    (["drift_K=0:1:0"], None, "--sweep drift_K=0:1:0: expected 'start:stop:count'"),
    (["drift_K=0:nan:3"], None, "--sweep drift_K=0:nan:3: values must be finite"),
    (["drift_K=1,inf"], None, "--sweep drift_K=1,inf: values must be finite"),
    (["drift_K=0,1", "drift_K=2"], None, "--sweep drift_K=2: drift_K is swept twice"),
    (None, "0:1:x", "--drift 0:1:x: expected 'start:stop:count'"),
    (["drift_K=0,1"], "0:1:3", "--drift 0:1:3: --drift GRID is short for --sweep drift_K=GRID"),
])
def test_bad_sweep_options_name_the_option(sweeps, drift, message):
    with pytest.raises(SweepOptionError) as err:
        parse_axes(sweeps, drift, "0:2:5", IMPERFECTIONS)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_sweep_options_give_axes_with_units():
    axes = parse_axes(["fabrication_std_nm=0,0.1", "drift_K=-1:1:3"], None, "0:2:5", IMPERFECTIONS)
    assert axes == (Axis("fabrication_std_nm", "nm", (0.0, 0.1)), Axis("drift_K", "K", (-1.0, 0.0, 1.0)))
    assert parse_axes(None, "0,2", "0:2:5", IMPERFECTIONS) == (Axis("drift_K", "K", (0.0, 2.0)),)
    assert parse_axes(None, None, "0:2:3", IMPERFECTIONS) == (Axis("drift_K", "K", (0.0, 1.0, 2.0)),)


def test_list_imperfections_needs_no_rig(traced_run):
    copy, trace = traced_run
    result = satlab("evaluate", copy, "--list-imperfections")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split()[1:3] for line in result.stdout.splitlines()[1:]}
    assert lines == {"drift_K": ["K", "0"], "fabrication_std_nm": ["nm", "0"],
                     "crosstalk_scale": ["x", "1"], "detector_noise_W": ["W", "0"]}
    assert not trace.exists()


def test_drift_option_still_updates_summary_and_report(run):
    report = run / "report.png"
    report.unlink()
    result = satlab("evaluate", run, "--drift", "0:0.5:2", "--quiet")
    assert result.returncode == 0, result.stderr
    sweep = summary(run)["drift_sweep"]
    assert [p["drift_K"] for p in sweep] == [0.0, 0.5]
    rows = read_csv(run / "sat" / "sweep-drift_K.csv")
    assert [(float(r["drift_K"]), float(r["accuracy"])) for r in rows] == [
        (p["drift_K"], p["accuracy"]) for p in sweep]
    assert report.read_bytes()[:8] == PNG
    assert "dT=0.5" in result.stdout and f"report: {report}" in result.stdout


def test_subset_scores_the_first_images_beside_the_full_set(run):
    result = satlab("evaluate", run, "--sweep", "drift_K=0,1", "--subset", 20, "--quiet")
    assert result.returncode == 0, result.stderr
    full = json.loads((run / "sat" / "sweep-drift_K.json").read_text())
    first = json.loads((run / "sat" / "sweep-drift_K-first20.json").read_text())
    assert full["test_images"] == 50 and first["test_images"] == 20
    assert "first 20 test images" in first["scored_on"] and "full test set" in full["scored_on"]
    # 20 images score in steps of 5 %; the same model, so the subset's count bounds the full one's
    for f, s in zip(full["rows"], first["rows"], strict=True):
        assert round(s["accuracy"] * 20, 9) == int(round(s["accuracy"] * 20))
        wrong_in_first = round((1 - s["accuracy"]) * 20)
        assert round((1 - f["accuracy"]) * 50) >= wrong_in_first
    assert "first 20 test images" in result.stdout and "full test set (50 images)" in result.stdout
    assert (run / "sweep-drift_K-first20.png").read_bytes().startswith(PNG)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """The tiny config trained with seeds 0 and 1 (plain, to be quick)."""
    tmp = tmp_path_factory.mktemp("seeds")
    runs = []
    for seed in (0, 1):
        cfg = write_yaml(tmp / f"tiny{seed}.yaml", tiny_config(TWO_LAYER_RIG, methods=["plain"], seed=seed,
                                                               log_every=2))  # unlike `run`'s
        result = satlab("train", cfg, "--run-dir", tmp / f"s{seed}", "--quiet")
        assert result.returncode == 0, result.stderr
        runs.append(tmp / f"s{seed}")
    return runs


def test_seeds_give_each_point_the_mean_and_spread_of_the_runs(seeds, tmp_path):
    result = satlab("evaluate", *seeds, "--sweep", "drift_K=0:2:3", "--out", tmp_path, "--quiet")
    assert result.returncode == 0, result.stderr
    own = [read_csv(run / "plain" / "sweep-drift_K.csv") for run in seeds]
    merged = read_csv(tmp_path / "seeds-sweep-drift_K-plain.csv")
    assert list(merged[0]) == ["drift_K", "accuracy", "std", "min", "seeds"]
    for i, row in enumerate(merged):
        scores = [float(rows[i]["accuracy"]) for rows in own]
        assert float(row["accuracy"]) == pytest.approx(statistics.fmean(scores))
        assert float(row["std"]) == pytest.approx(statistics.stdev(scores))
        assert float(row["min"]) == min(scores) and row["seeds"] == "2"
    assert "mean ± std over 2 seeds" in result.stdout
    assert (tmp_path / "seeds-sweep-drift_K.png").read_bytes().startswith(PNG)


def test_runs_that_are_not_seeds_of_one_config_are_refused_before_any_rig_opens(seeds, run, tmp_path):
    result = satlab("evaluate", seeds[0], run, "--sweep", "drift_K=0,1", "--quiet")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(run) in result.stderr and "training: differs" in result.stderr
    assert "seeds of one config" in result.stderr
    result = satlab("evaluate", seeds[0], seeds[0], "--sweep", "drift_K=0,1", "--quiet")
    assert result.returncode == 2 and "seed 0 is given twice" in result.stderr
