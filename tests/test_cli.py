"""The satlab command end to end on a tiny config, and its handling of bad input."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
from conftest import SATLAB, TWO_LAYER_RIG, bank_rig, tiny_config, write_yaml


def satlab(*args, cwd=None):
    return subprocess.run([SATLAB, *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = write_yaml(tmp / "tiny.yaml", tiny_config(TWO_LAYER_RIG))
    run = tmp / "run"
    result = satlab("train", cfg, "--run-dir", run, "--quiet")
    return result, run


def test_train_writes_a_complete_run(trained):
    result, run = trained
    assert result.returncode == 0, result.stderr
    assert f"report: {run / 'report.png'}" in result.stdout
    for name in ("config.yaml", "rig.yaml", "report.png"):
        assert (run / name).stat().st_size > 0
    for method in ("sat", "plain"):
        summary = json.loads((run / method / "summary.json").read_text())
        assert summary["method"] == method and summary["estimator"] == "spsa"
        assert summary["test_images"] == 50
        assert [(c["layer"], c["unit"], c["count"]) for c in summary["controls"]] == [
            ("fc2", "A", 32 * 16), ("fc3", "A", 16 * 10)]
        assert all(0 <= c["min"] <= c["max"] <= 0.024 for c in summary["controls"])
        assert [p["drift_K"] for p in summary["drift_sweep"]] == [0.0, 1.0, 2.0]
        assert all(0 <= p["accuracy"] <= 1 for p in summary["drift_sweep"])
        with open(run / method / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 5  # 120 images / batch 24, logged every step
        queries = [int(r["rig_queries"]) for r in rows]
        # per step: 1 forward per layer + 2 x 4 SPSA directions per layer, twice for SAT
        per_step = 2 * (1 + 8) * (2 if method == "sat" else 1)
        assert queries == [per_step * (i + 1) for i in range(5)]
        assert summary["rig_queries"] == queries[-1]


def test_evaluate_updates_drift_sweep(trained):
    _, run = trained
    result = satlab("evaluate", run, "--drift", "0:1.5:4", "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "sat" / "summary.json").read_text())
    assert [p["drift_K"] for p in summary["drift_sweep"]] == [0.0, 0.5, 1.0, 1.5]
    assert "dT=1.5" in result.stdout


def test_evaluate_takes_a_drift_grid_that_starts_below_zero(trained):
    _, run = trained
    result = satlab("evaluate", run / "sat", "--drift", "-0.5:0.5:3", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "dT=-0.5" in result.stdout and "dT=0.5" in result.stdout


def test_report_compares_runs(trained, tmp_path):
    _, run = trained
    out = tmp_path / "cmp.png"
    result = satlab("report", run / "sat", run / "plain", "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sat (spsa)" in result.stdout and "plain (spsa)" in result.stdout


def test_rig_check_identifies_every_instrument(tmp_path):
    result = satlab("rig", "check", TWO_LAYER_RIG)
    assert result.returncode == 0, result.stderr
    for name in ("heaters_fc2", "inputs_fc2", "pd_fc2", "heaters_fc3", "inputs_fc3", "pd_fc3"):
        assert name in result.stdout
    assert "512 ch" in result.stdout and "left in their safe state" in result.stdout


@pytest.mark.parametrize("persists", [False, True])
def test_rig_check_claims_a_safe_state_only_when_it_was_reached(tmp_path, persists):
    """The opening zero is write 1; the ramp down (write 2) fails, then the safe state
    either works (the fault cleared) or fails too (a dead link)."""
    rig = write_yaml(tmp_path / "rig.yaml", bank_rig(heater_options={
        "fail_after_writes": 1, "fault_persists": persists}))
    result = satlab("rig", "check", rig)
    assert "Traceback" not in result.stderr
    if persists:
        assert result.returncode == 1
        assert "could not put heaters in the safe state" in result.stderr
        assert "no reply to write #2" in result.stderr
        assert "safe state" not in result.stdout
    else:
        assert result.returncode == 0, result.stderr
        assert "left in their safe state" in result.stdout


def test_bad_config_exits_2_with_one_line(tmp_path):
    cfg = tiny_config(TWO_LAYER_RIG)
    cfg["training"]["batch_size"] = 0
    path = write_yaml(tmp_path / "bad.yaml", cfg)
    result = satlab("train", path, "--run-dir", tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {path}: training.batch_size: Input should be "
                                      "greater than 0 (got 0)")
    assert not (tmp_path / "run").exists()


def test_bad_rig_file_touches_no_instrument(tmp_path):
    trace = tmp_path / "heaters.trace"
    rig = bank_rig(heater_options={"trace_file": str(trace)})
    rig["instruments"]["pd"]["driver"] = "simulated.mrr_inputs"  # wrong kind, after the heaters
    rig_path = write_yaml(tmp_path / "rig.yaml", rig)
    result = satlab("rig", "check", rig_path)
    assert result.returncode == 2
    assert "instruments.pd.driver" in result.stderr and str(rig_path) in result.stderr
    assert not trace.exists()


def test_config_and_rig_layer_sizes_must_agree(tmp_path):
    cfg = tiny_config(TWO_LAYER_RIG)
    cfg["model"]["physical"] = [32, 10]
    path = write_yaml(tmp_path / "cfg.yaml", cfg)
    result = satlab("train", path, "--run-dir", tmp_path / "run")
    assert result.returncode == 2
    assert f"{path}: model.physical" in result.stderr and "rig" in result.stderr


def test_rig_drivers_lists_registered_names():
    result = satlab("rig", "drivers")
    assert result.returncode == 0
    assert {"simulated.mrr_bench", "simulated.mrr_heaters", "twin.mrr_bank",
            "mrr_weight_bank"} <= set(result.stdout.split())


def test_help_explains_commands():
    result = satlab("--help")
    assert result.returncode == 0
    for word in ("train", "evaluate", "rig", "report", "--resume"):
        assert word in result.stdout
