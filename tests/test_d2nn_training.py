"""SAT on the simulated D2NN through `satlab train`, and the config checks of an image front."""

from __future__ import annotations

import json
import subprocess
from importlib.resources import files

import pytest
import torch
from conftest import SATLAB, write_yaml

from satlab import checkpoint
from satlab.config import load_config
from satlab.rig import Rig
from satlab.rigfile import load_rig_file
from satlab.systems import system_for
from satlab.validation import ConfigError


def tiny(tmp_path, **training):
    return write_yaml(tmp_path / "d2nn.yaml", {
        "name": "d2nn-tiny", "rig": str(files("satlab.configs") / "d2nn-sim.yaml"),
        "data": {"train_per_class": 2, "test_per_class": 1},
        "model": {"front": "image", "physical": [4096, 10], "readout_scale": 10},
        "estimator": {"name": "physics_aware"},
        "training": {"methods": ["sat"], "epochs": 1, "batch_size": 10, "lr_controls": 0.1,
                     "rho": 0.5, "adaptive": False, **training}})


def test_sat_trains_the_masks_on_the_bench_and_evaluates_under_rotation(tmp_path):
    run = tmp_path / "run"
    done = subprocess.run([SATLAB, "train", str(tiny(tmp_path)), "--run-dir", str(run), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "nominal" in done.stdout  # no drift sweep for this system: its nominal accuracy
    summary = json.loads((run / "sat" / "summary.json").read_text())
    assert summary["rig_queries"] == 2 * 2  # two steps, SAT's two rig passes each
    assert summary["test_images"] == 10
    state = checkpoint.load(run / "sat" / "checkpoint.pt")
    controls = state["model"]["physical.0.controls"]
    assert controls.shape == (2 * 128 * 128,)  # the shipped rig: one control per SLM pixel
    rig_file = files("satlab.configs") / "d2nn-sim.yaml"
    with Rig(load_rig_file(rig_file), rig_file) as rig:  # where seed 0 starts the phases
        (layer,) = system_for(rig.spec, rig_file).build_layers(rig)
        start = layer.initial_controls(torch.Generator().manual_seed(0), 0.5)
    # Adam moves a lit phase by about lr per step (two steps of 0.1 rad); macro-pixels that
    # no light reaches have no gradient and stay
    moved = (controls - start).abs()
    assert (moved > 0.05).float().mean() > 0.1 and moved.max() < 0.25
    swept = subprocess.run([SATLAB, "evaluate", str(run), "--sweep", "mask_rotation_deg=0,1"],
                           capture_output=True, text=True)
    assert swept.returncode == 0, swept.stderr
    assert "mask_rotation_deg" in swept.stdout
    assert "no BatchNorm in this network" in swept.stdout  # not a BatchNorm mode it lacks


def test_an_image_front_needs_a_square_input(tmp_path):
    path = tiny(tmp_path)
    text = path.read_text().replace("- 4096", "- 4000")
    path.write_text(text)
    with pytest.raises(ConfigError, match="square first layer input") as err:
        load_config(path)
    assert "model" in err.value.field
