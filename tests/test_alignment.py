"""Alignment knobs: positioners that move a bench's light, and SAT's ascent over them."""

from __future__ import annotations

import csv
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import FREESPACE_RIG as RIG_FILE
from conftest import (
    SATLAB,
    freespace_config,
    kill_at_first_checkpoint,
    random_weights_and_images,
    train_process,
    write_yaml,
)

from satlab.config import load_config
from satlab.rig import Rig, RigLimitError
from satlab.rigfile import load_rig_file
from satlab.systems import system_for
from satlab.training import build_trainee, check_model_matches_rig
from satlab.validation import ConfigError


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(20, 1, 28, 28, generator=gen) * 0.5
    return images, torch.randint(0, 10, (20,), generator=gen)


def test_a_stage_misaligns_the_bench_like_the_imperfection_and_the_twin_follows(freespace_opened):
    rig, (fc1, _) = freespace_opened
    assert [k.positioner for k in fc1.knobs] == ["stage1", "mount1", "zoom1"]
    w, x = random_weights_and_images(fc1, 0)
    aligned = fc1.query(x, w.numpy())
    fc1.align(np.array([2.0, 0.0, 0.0]))
    assert rig.instruments["stage1"].position() == 2.0
    moved = fc1.query(x, w.numpy())
    assert np.abs(moved - aligned).max() > 0.01
    assert torch.equal(torch.from_numpy(moved), fc1.twin_output(x, w))  # the twin knows the stage
    fc1.align(np.zeros(3))
    rig.set_imperfection("shift_px", 2.0)  # the same shift, unknown to the twin
    assert np.array_equal(fc1.query(x, w.numpy()), moved)
    assert torch.equal(fc1.twin_output(x, w), torch.from_numpy(aligned))


def test_a_move_beyond_the_travel_is_refused_and_the_stage_stays(freespace_opened):
    rig, _ = freespace_opened
    rig.move("stage1", 1.5)
    for bad in (10.5, -11.0, float("nan")):
        with pytest.raises(RigLimitError, match=r"stage1: .*travel \[-10, 10\] px"):
            rig.move("stage1", bad)
    assert rig.resources["fc1"].positions["shift_px"] == 1.5
    with pytest.raises(TypeError, match="camera1 is a camera, not a positioner"):
        rig.move("camera1", 0.0)


def test_the_knob_slope_is_the_change_across_its_probes_on_the_rig_weighted_by_dl_dy(tmp_path):
    cfg = load_config(freespace_config(tmp_path, rho_alignment={"stage1": 3.0}))
    images, labels = batch(1)
    with Rig.from_file(cfg.rig) as rig:
        tr = build_trainee(cfg, rig, "sat")
        net, fc1 = tr.model, tr.model.physical[0]
        assert list(fc1.alignment_radius) == [3.0, 0.0, 0.0]  # no radius: never probed
        net.train()
        fc1.probe_alignment = True
        F.cross_entropy(net(images), labels).backward()
        slope = fc1.alignment_grad
        assert slope[1:].tolist() == [0.0, 0.0]
        assert fc1.backend.alignment.tolist() == [0.0] * 3  # put back

        # the same slope from outside: dL/dy by autograd downstream of fc1, and fc1's
        # outputs read with the stage at ± its step
        x = net.front(images)
        y = fc1(x).detach().requires_grad_(True)
        def loss_from(y):
            return F.cross_entropy(net.physical[1](net.between[0](y)) * net.readout_scale, labels)
        loss_from(y).backward()
        read = {}
        for px in (0.5, -0.5):
            fc1.backend.align(np.array([px, 0.0, 0.0]))
            read[px] = fc1(x).detach()
        assert slope[0] == pytest.approx(float((y.grad * (read[0.5] - read[-0.5])).sum()), rel=1e-5)


def test_a_sat_step_moves_the_knob_by_its_radius_to_the_worse_side_and_back(tmp_path):
    cfg = load_config(freespace_config(tmp_path, rho_alignment={"stage1": 3.0}))
    images, labels = batch(2)
    with Rig.from_file(cfg.rig) as rig:
        tr = build_trainee(cfg, rig, "sat")
        rig.commands.clear()
        tr.controller.step(images, labels)
        moves = [c.value for c in rig.commands if c.instrument == "stage1"]
        slope = tr.model.physical[0].alignment_grad[0]
        assert slope != 0.0
        # the slope's probes (central, 0.5 px), back, the ascent, back
        assert moves == [0.5, -0.5, 0.0, 3.0 * np.sign(slope), 0.0]
        # knobs without a radius never move; every knob ends aligned
        assert not [c for c in rig.commands if c.instrument in ("mount1", "zoom1")]
        assert set(rig.resources["fc1"].positions.values()) == {0.0}

        plain = build_trainee(cfg, rig, "plain")
        rig.commands.clear()
        plain.controller.step(images, labels)
        assert not [c for c in rig.commands if c.instrument in ("stage1", "mount1", "zoom1")]


def test_worst_moves_only_the_knob_whose_radius_times_slope_is_largest_to_its_radius(tmp_path):
    radii = {"stage1": 2.0, "mount1": 2.0, "zoom1": 0.1}
    cfg = load_config(freespace_config(tmp_path, rho_alignment=radii, knobs_at_once="worst"))
    images, labels = batch(3)
    with Rig.from_file(cfg.rig) as rig:
        tr = build_trainee(cfg, rig, "sat")
        rig.commands.clear()
        tr.controller.step(images, labels)
        layer = tr.model.physical[0]
        rise = np.abs(layer.alignment_radius * layer.alignment_grad)
        assert np.count_nonzero(rise) == 3  # every knob was probed
        worst = layer.backend.knobs[int(np.argmax(rise))].positioner
        for knob in layer.backend.knobs:
            moves = [c.value for c in rig.commands if c.instrument == knob.positioner]
            # probes at ±step and back; then the worst knob alone to its radius, and back
            ascent = [radii[knob.positioner] * np.sign(layer.alignment_grad[layer.backend.knobs.index(knob)]),
                      0.0] if knob.positioner == worst else []
            assert moves == pytest.approx([knob.step, -knob.step, 0.0, *ascent]), knob.positioner
        assert set(rig.resources["fc1"].positions.values()) == {0.0}


def test_the_ascent_stays_within_the_travel_and_spreads_over_knobs_by_their_radii(tmp_path):
    cfg = load_config(freespace_config(tmp_path, rho_alignment={"stage1": 30.0, "mount1": 2.0}))
    with Rig.from_file(cfg.rig) as rig:
        layer = build_trainee(cfg, rig, "sat").model.physical[0]
        layer.alignment_grad = np.array([1e-3, -1e-3, 0.0])
        eps = layer.alignment_ascent()
        r = layer.alignment_radius
        assert eps[0] == 10.0  # 30 px asked, the stage travels 10
        expected = r**2 * layer.alignment_grad / np.linalg.norm(r * layer.alignment_grad)
        assert eps[1] == pytest.approx(expected[1]) and eps[1] < 0
        assert np.linalg.norm(expected[:2] / r[:2]) == pytest.approx(1.0)  # on the ellipsoid
        assert eps[2] == 0.0  # zoom1 has no radius
        layer.alignment_grad = np.zeros(3)
        assert layer.alignment_ascent().tolist() == [0.0] * 3  # no slope, no move (never NaN)


def rig_with(tmp_path, edit) -> str:
    spec = yaml.safe_load(RIG_FILE.read_text())
    edit(spec)
    return str(write_yaml(tmp_path / "rig.yaml", spec))


@pytest.mark.parametrize("edit, field, expected", [
    (lambda s: s["system"]["layers"][0]["alignment"][0].update(positioner="camera1"),
     "system.layers.0.alignment.0.positioner", "must be a positioner"),
    (lambda s: s["system"]["layers"][0]["alignment"][0].update(axis="tilt_deg"),
     "system.layers.0.alignment.0.axis", "expected one of rotation_deg, shift_px, scale"),
    (lambda s: s["system"]["layers"][1].update(
        alignment=[{"positioner": "stage1", "axis": "shift_px", "step": 0.5}]),
     "system.layers", "one layer's display, not two"),
])
def test_a_bad_knob_is_refused_before_anything_opens(tmp_path, edit, field, expected):
    rig = rig_with(tmp_path, edit)
    with pytest.raises(ConfigError, match=expected) as err:
        system_for(load_rig_file(rig), rig).check()
    assert err.value.field == field


@pytest.mark.parametrize("edit, field, expected", [
    (lambda s: s["system"]["layers"][0]["alignment"][0].update(axis="rotation_deg"),
     "system.layers.0.alignment.0.axis", "stage1 moves the bench's shift_px, not rotation_deg"),
    (lambda s: s["system"]["layers"][0]["alignment"][0].update(step=12.0),
     "system.layers.0.alignment.0.step", r"12 leaves the travel \[-10, 10\] of stage1"),
])
def test_a_knob_that_does_not_fit_its_stage_is_refused_on_opening(tmp_path, edit, field, expected):
    rig = rig_with(tmp_path, edit)
    with pytest.raises(ConfigError, match=expected) as err, Rig.from_file(rig):
        pass
    assert err.value.field == field


def test_train_refuses_a_radius_for_a_knob_the_rig_lacks_and_opens_nothing(tmp_path):
    path = freespace_config(tmp_path, rho_alignment={"stage9": 1.0})
    done = subprocess.run([SATLAB, "train", str(path), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert str(path) in done.stderr and "training.rho_alignment" in done.stderr
    assert "'stage9' is not an alignment positioner" in done.stderr and "stage1, mount1, zoom1" in done.stderr
    assert not (tmp_path / "run").exists()
    cfg = load_config(freespace_config(tmp_path, rho_alignment={"stage1": 1.0}))
    cfg.estimator.name = "twin_autograd"
    with pytest.raises(ConfigError, match="twin_autograd never queries it"):
        check_model_matches_rig(cfg, load_rig_file(cfg.rig), "fs.yaml")


def test_gamma_below_one_half_mixes_the_unperturbed_gradient_into_the_update(tmp_path):
    from satlab.optim import SAM, WSAM

    cfg = load_config(freespace_config(tmp_path, gamma=1 / 3))
    with Rig.from_file(cfg.rig) as rig:
        optimizer = build_trainee(cfg, rig, "sat").controller.optimizer
        assert isinstance(optimizer, WSAM) and not optimizer.decoupled
        assert all(g["gamma"] == pytest.approx(1 / 3) for g in optimizer.param_groups)
        cfg.training.gamma = 0.5
        assert type(build_trainee(cfg, rig, "sat").controller.optimizer) is SAM
    bad = freespace_config(tmp_path, gamma=1.0)
    with pytest.raises(ConfigError, match="training.gamma") as err:
        load_config(bad)
    assert str(bad) in str(err.value)


def test_a_run_killed_while_sat_moves_the_knobs_resumes_to_the_uninterrupted_result(tmp_path):
    from satlab import checkpoint

    def edit(spec):
        spec["instruments"]["stage1"]["settle_time"] = 0.03  # a stage takes time to move
        for res in ("fc1", "fc2"):  # camera read noise: the benches' RNG must resume too
            spec["resources"][res]["options"]["camera"] = {"read_noise_e": 2.0}
    rig = rig_with(tmp_path, edit)
    # the worst knob of two at a radius drawn per step: the draws must resume too
    path = freespace_config(tmp_path, rig=rig, rho_alignment={"stage1": 3.0, "mount1": 2.0}, gamma=1 / 3,
                            epochs=2, checkpoint_every=2, knobs_at_once="worst", knob_radius="uniform")
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    ckpt = killed / "sat" / "checkpoint.pt"
    kill_at_first_checkpoint(train_process(path, "--run-dir", killed), ckpt)
    state = checkpoint.load(ckpt)
    assert not state["done"]  # killed mid-run, knobs possibly off their aligned position
    for p in (train_process("--resume", killed), train_process(path, "--run-dir", whole)):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    a, b = checkpoint.load(whole / "sat" / "checkpoint.pt"), checkpoint.load(ckpt)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    def columns(run):
        with open(run / "sat" / "metrics.csv") as f:
            return [[row[k] for k in ("epoch", "step", "loss", "accuracy", "rig_queries")]
                    for row in csv.DictReader(f)]
    assert columns(whole) == columns(killed) and len(columns(whole)) == 2  # a row per epoch


def test_a_uniform_knob_radius_is_a_fraction_in_0_1_drawn_from_the_seed_and_step():
    from satlab.config import TrainingConfig
    from satlab.training import knob_fraction

    fixed, uniform = TrainingConfig(), TrainingConfig(knob_radius="uniform", seed=4)
    assert {knob_fraction(fixed, step) for step in range(50)} == {1.0}
    draws = [knob_fraction(uniform, step) for step in range(2000)]
    assert all(0 < d <= 1 for d in draws) and len(set(draws)) == 2000
    assert abs(np.mean(draws) - 0.5) < 0.03 and abs(np.mean(np.array(draws) < 0.25) - 0.25) < 0.03
    assert draws[:5] == [knob_fraction(uniform, step) for step in range(5)]  # the same again
    assert draws[:5] != [knob_fraction(TrainingConfig(knob_radius="uniform", seed=5), s) for s in range(5)]


def test_rig_check_reports_where_each_positioner_is():
    done = subprocess.run([SATLAB, "rig", "check", str(RIG_FILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "positioner" in lines["stage1"] and lines["stage1"].endswith("| at 0 px")
    assert lines["mount1"].endswith("-10..10 deg | at 0 deg")
