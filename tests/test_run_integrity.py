"""Run directories are never silently reused, half-trained methods are never marked done,
and a damaged checkpoint is named, never loaded as if it were intact."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from conftest import SATLAB, TWO_LAYER_RIG, tiny_config, write_yaml

from satlab import checkpoint


def satlab(*args):
    return subprocess.run([SATLAB, *map(str, args), "--quiet"],
                          capture_output=True, text=True, timeout=600)


def repair(run):
    """The instrument is back: drop the injected fault from the run's rig file."""
    rig = yaml.safe_load((run / "rig.yaml").read_text())
    rig["instruments"]["heaters_fc2"]["options"].pop("fail_after_writes")
    write_yaml(run / "rig.yaml", rig)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A SAT run stopped by an instrument fault in its second epoch (checkpoints every 2 steps)."""
    tmp = tmp_path_factory.mktemp("interrupted")
    rig = yaml.safe_load(TWO_LAYER_RIG.read_text())
    rig["instruments"]["heaters_fc2"]["options"] = {"fail_after_writes": 150}  # 18 per step
    cfg = write_yaml(tmp / "cfg.yaml", tiny_config(write_yaml(tmp / "rig.yaml", rig),
                                                    methods=["sat"], epochs=2))
    run = tmp / "run"
    result = satlab("train", cfg, "--run-dir", run)
    assert result.returncode == 1 and "no reply to write #151" in result.stderr
    return run


@pytest.fixture
def run(interrupted, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(interrupted, copy)
    return copy


def test_a_new_run_refuses_a_folder_that_is_not_empty(run):
    config_before = (run / "config.yaml").read_text()
    result = satlab("train", run / "config.yaml", "--run-dir", run)
    assert result.returncode == 2
    assert f"satlab train --resume {run}" in result.stderr and "Traceback" not in result.stderr
    assert (run / "config.yaml").read_text() == config_before


def test_evaluating_an_unfinished_run_is_partial_and_resume_still_finishes_it(run):
    result = satlab("evaluate", run, "--drift", "0:1:2")
    assert result.returncode == 0, result.stderr
    assert "partial evaluation" in result.stderr and "partial: epoch 1 step" in result.stdout
    assert not (run / "sat" / "summary.json").exists()
    repair(run)
    result = satlab("train", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert "already finished" not in result.stdout
    assert checkpoint.load(run / "sat" / "checkpoint.pt")["done"]
    assert json.loads((run / "sat" / "summary.json").read_text())["epochs"] == 2


def test_a_truncated_newest_checkpoint_resumes_from_the_one_before(run):
    newest = run / "sat" / "checkpoint.pt"
    before = checkpoint.load(checkpoint.previous(newest))
    newest.write_bytes(newest.read_bytes()[:1000])
    repair(run)
    result = satlab("train", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert (f"{newest} cannot be used (kept as checkpoint.damaged.pt); sat resumes from "
            f"checkpoint.prev.pt (epoch {before['epoch']}, step {before['step']})") in result.stderr
    assert checkpoint.load(newest)["done"]
    assert (run / "sat" / "checkpoint.damaged.pt").stat().st_size == 1000


@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(p.read_bytes()[:1000]),
    lambda p: p.write_text("not a checkpoint"),
])
def test_no_usable_checkpoint_is_one_line_and_exit_2(run, damage):
    for path in (run / "sat" / "checkpoint.pt", checkpoint.previous(run / "sat" / "checkpoint.pt")):
        damage(path)
    result = satlab("train", "--resume", run)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run / 'sat' / 'checkpoint.pt'}: ")
    assert "rig:" not in result.stdout  # stopped before the rig opened
