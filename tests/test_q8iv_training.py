"""Training through the real Q8iv driver: an emulated chain on a pty drives the simulated
rings. A dropped connection mid-run is reported honestly, and after the port is back,
--resume ends exactly where an uninterrupted run does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
import yaml
from conftest import SATLAB, write_yaml

from satlab import checkpoint

RIG = Path(__file__).resolve().parents[1] / "satlab" / "configs" / "mrr-q8iv-sim.yaml"


def satlab(*args):
    return subprocess.run([SATLAB, *map(str, args), "--quiet"], capture_output=True, text=True,
                          timeout=600)


def config(tmp: Path, drop_after: int | None) -> Path:
    rig = yaml.safe_load(RIG.read_text())
    if drop_after is not None:
        rig["resources"]["chip"]["options"]["drop_after_commands"] = drop_after
    rig_path = write_yaml(tmp / f"rig-{drop_after}.yaml", rig)
    return write_yaml(tmp / f"cfg-{drop_after}.yaml", {
        "name": "q8iv", "rig": str(rig_path),
        "data": {"source": "offline", "train_per_class": 12, "test_per_class": 5},
        "model": {"conv_channels": [], "physical": [3, 10]},
        "estimator": {"name": "spsa", "directions": 4},
        "training": {"methods": ["sat"], "epochs": 1, "batch_size": 24, "checkpoint_every": 2,
                     "log_every": 1},
        "evaluation": {"drift": "0:1:2", "batch_size": 50}})


def test_a_disconnect_mid_training_then_resume_matches_the_uninterrupted_run(tmp_path):
    whole = satlab("train", config(tmp_path, None), "--run-dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    wire = json.loads((tmp_path / "whole" / "sat" / "summary.json").read_text())["wire"]["heaters"]
    assert wire["writes"] > 0 and wire["ms_per_write"] > 0  # the line's time, measured

    cut = tmp_path / "cut"
    result = satlab("train", config(tmp_path, 300), "--run-dir", cut)
    assert result.returncode == 1
    # the port is dead: nobody can confirm the heaters are off, and the message says so
    assert "could not put heaters in the safe state" in result.stderr
    assert "after InstrumentFault: heaters: Q8iv-0001 at /dev/pts/" in result.stderr
    assert not checkpoint.load(cut / "sat" / "checkpoint.pt")["done"]

    rig = yaml.safe_load((cut / "rig.yaml").read_text())
    rig["resources"]["chip"]["options"].pop("drop_after_commands")  # the cable is back
    write_yaml(cut / "rig.yaml", rig)
    resumed = satlab("train", "--resume", cut)
    assert resumed.returncode == 0, resumed.stderr

    a = checkpoint.load(tmp_path / "whole" / "sat" / "checkpoint.pt")
    b = checkpoint.load(cut / "sat" / "checkpoint.pt")
    assert b["done"] and b["rig_queries"] == a["rig_queries"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
