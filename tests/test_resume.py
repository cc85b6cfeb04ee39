"""A training process killed mid-run and resumed ends exactly where an uninterrupted one does."""

from __future__ import annotations

import csv
import json
import math
import shutil
import signal

import pytest
import torch
import yaml
from conftest import TWO_LAYER_RIG, kill_at_first_checkpoint, tiny_config, write_yaml
from conftest import train_process as train

from satlab import checkpoint

DETERMINISTIC = ["epoch", "step", "loss", "accuracy", "rig_queries"]


def columns(path):
    with open(path) as f:
        return [[row[k] for k in DETERMINISTIC] for row in csv.DictReader(f)]


FINITE_DIFFERENCES = {"name": "finite_difference"}  # slow enough per step to be killed mid-run
# method, training overrides, estimator
CASES = {
    "sat": ("sat", {}, FINITE_DIFFERENCES),
    # noise: its draws survive the kill too; cosine: so does the learning rate's decay
    "noise, cosine": ("noise", {"noise_std": 2e-4, "lr_schedule": "cosine"}, FINITE_DIFFERENCES),
    "noise on weights": ("noise", {"noise_std": 0.05, "noise_on": "weights"}, FINITE_DIFFERENCES),
    "prune": ("prune", {"prune_lambda": 1e-6}, FINITE_DIFFERENCES),
    # in silico, so fast per step: small batches make many steps after the first checkpoint
    "sat in weight space": ("sat", {"space": "weights", "lr_controls": 0.01, "rho": 0.05, "batch_size": 2},
                            {"name": "twin_autograd"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, case):
    method, training, estimator = CASES[case]
    cfg = tiny_config(TWO_LAYER_RIG, methods=[method], epochs=2, checkpoint_every=3, **training)
    cfg["estimator"] = estimator
    steps = math.ceil(120 / cfg["training"]["batch_size"])  # per epoch: 12 digits x 10 classes
    path = write_yaml(tmp_path / "tiny.yaml", cfg)
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    proc = train(path, "--run-dir", killed)
    ckpt = killed / method / "checkpoint.pt"
    kill_at_first_checkpoint(proc, ckpt)
    assert proc.returncode == -signal.SIGKILL
    state = checkpoint.load(ckpt)
    assert not state["done"] and not (killed / method / "summary.json").exists()
    assert 0 < state["epoch"] * steps + state["step"] < 2 * steps  # killed mid-run

    resumed = train("--resume", killed)
    uninterrupted = train(path, "--run-dir", whole)
    for p in (resumed, uninterrupted):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err

    a, b = checkpoint.load(whole / method / "checkpoint.pt"), checkpoint.load(ckpt)
    assert a["done"] and b["done"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert columns(whole / method / "metrics.csv") == columns(killed / method / "metrics.csv")
    sa = json.loads((whole / method / "summary.json").read_text())
    sb = json.loads((killed / method / "summary.json").read_text())
    assert sa["drift_sweep"] == sb["drift_sweep"] and sa["rig_queries"] == sb["rig_queries"]


def test_method_started_after_a_resume_matches_one_started_in_the_first_process(tmp_path):
    rig = yaml.safe_load(TWO_LAYER_RIG.read_text())
    for name in ("chip_fc2", "chip_fc3"):  # detector noise: draws from the bench's RNG
        rig["resources"][name]["options"]["detector_noise_W"] = 2e-5
    rig_path = write_yaml(tmp_path / "rig.yaml", rig)
    path = write_yaml(tmp_path / "cfg.yaml", tiny_config(rig_path))
    whole = tmp_path / "whole"
    p = train(path, "--run-dir", whole)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    partial = tmp_path / "partial"
    shutil.copytree(whole, partial)
    shutil.rmtree(partial / "plain")  # as if stopped right after SAT finished
    p = train("--resume", partial)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    assert columns(whole / "plain" / "metrics.csv") == columns(partial / "plain" / "metrics.csv")
    a = json.loads((whole / "plain" / "summary.json").read_text())
    b = json.loads((partial / "plain" / "summary.json").read_text())
    assert a["drift_sweep"] == b["drift_sweep"]
