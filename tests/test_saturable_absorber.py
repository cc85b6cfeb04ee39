"""Saturable absorption against its closed forms, and the all-optical network on its bench."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from satlab.simulators.saturable_absorber.absorber import (
    absorb,
    derivative,
    transmitted,
)

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SATLAB, opened_layer, random_inputs, write_yaml

from satlab.estimators import FiniteDifference

SHIPPED = Path(str(files("satlab.configs"))) / "sa-onn-sim.yaml"


@pytest.mark.parametrize("encoding", ["intensity", "amplitude"])
def test_weak_light_is_absorbed_by_the_optical_depth_and_strong_light_passes(encoding):
    od, i_sat = 6.0, 2.0
    weak = torch.tensor([1e-9], dtype=torch.float64)
    strong = torch.tensor([1e9], dtype=torch.float64)
    # intensity: I exp(-OD); a field's intensity E^2 is absorbed the same way
    depth = od if encoding == "intensity" else od / 2
    assert float(transmitted(weak, od, i_sat, encoding) / weak) == pytest.approx(math.exp(-depth), rel=1e-6)
    assert float(transmitted(strong, od, i_sat, encoding) / strong) == pytest.approx(1.0, rel=1e-6)
    if encoding == "amplitude":  # E out squared is the intensity out of an intensity E^2
        e = torch.linspace(0.1, 3, 7, dtype=torch.float64)
        assert torch.allclose(transmitted(e, od, i_sat, "amplitude") ** 2 / (e * e),
                              transmitted(e * e, od, i_sat, "intensity") / (e * e),
                              rtol=1e-12)


@pytest.mark.parametrize("encoding", ["intensity", "amplitude"])
def test_the_exact_derivative_is_the_transmissions_and_the_optical_one_its_formula(encoding):
    od, i_sat = 10.0, 1.0
    x = torch.linspace(0.01, 4, 50, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(transmitted(x, od, i_sat, encoding).sum(), x)
    assert torch.allclose(derivative(x.detach(), od, i_sat, encoding, "exact"), auto, rtol=1e-12)
    s = x.detach() / i_sat if encoding == "intensity" else x.detach() ** 2 / i_sat
    depth = od if encoding == "intensity" else od / 2
    # the formula of shared/REFERENCES.md: the probe sees exp(-OD/(1 + I/I_sat))
    assert torch.allclose(derivative(x.detach(), od, i_sat, encoding, "optical"),
                          torch.exp(-depth / (1 + s)), rtol=1e-14)
    exact = torch.exp(-depth / (1 + s)) * (1 + s * od / (1 + s) ** 2)
    assert torch.allclose(derivative(x.detach(), od, i_sat, encoding, "exact"), exact, rtol=1e-12)


@pytest.mark.parametrize("gradient, expected", [("exact", None), ("optical", None), ("zero", 0.0),
                                                ("unit", 1.0), ("negative", -1.0)])
def test_one_autograd_function_carries_every_derivative(gradient, expected):
    x = torch.linspace(0.1, 2, 9, dtype=torch.float64, requires_grad=True)
    out = absorb(x, 10.0, 1.0, "amplitude", gradient)
    assert torch.equal(out.detach(), transmitted(x.detach(), 10.0, 1.0, "amplitude"))  # forward alike
    (grad,) = torch.autograd.grad((out * 3).sum(), x)
    want = (derivative(x.detach(), 10.0, 1.0, "amplitude", gradient) if expected is None
            else torch.full_like(x, expected))
    assert torch.allclose(grad, 3 * want, rtol=1e-14)


def test_bad_choices_are_named():
    x = torch.ones(2)
    with pytest.raises(ValueError, match="encoding"):
        absorb(x, 1.0, 1.0, "phase")
    with pytest.raises(ValueError, match="gradient"):
        absorb(x, 1.0, 1.0, "amplitude", "approx")


def small_rig(tmp_path: Path, **options) -> Path:
    """The shipped rig with a 16-8-8-3 network."""
    rig = yaml.safe_load(SHIPPED.read_text())
    for where in (rig["resources"]["onn"]["options"], rig["system"]["layers"][0]["twin"]["options"]):
        where.update(sizes=[16, 8, 8, 3], **options)
    rig["system"]["layers"][0].update(in_features=16, out_features=3)
    return write_yaml(tmp_path / "sa.yaml", rig)


def test_the_bench_through_its_instruments_equals_the_twin_bit_for_bit(tmp_path):
    with opened_layer(small_rig(tmp_path)) as (rig, layer):
        assert layer.n_controls == 16 * 8 + 8 * 8 + 8 * 3
        x = random_inputs(4, 16)
        w = layer.initial_controls(torch.Generator().manual_seed(1), 1.0)
        got = layer.query(x, w.numpy())
        # the modulator shows (w + 1)/2 and transmits 2L - 1: exact for these levels
        shown = 2 * ((w + 1) / 2) - 1
        assert np.array_equal(got, layer.twin(x, shown).numpy())
        assert np.allclose(got, layer.twin(x, w).numpy(), rtol=1e-12)
        stack = layer.query_many(x, torch.stack([w, -w]).numpy())  # one reading of both
        assert np.allclose(stack[0], got, rtol=1e-12)
        assert np.allclose(stack[1], layer.twin(x, -w).numpy(), rtol=1e-12)


def test_a_drifting_cell_changes_the_outputs_and_a_reset_restores_them(tmp_path):
    with opened_layer(small_rig(tmp_path)) as (rig, layer):
        x = random_inputs(4, 16, seed=2)
        w = layer.initial_controls(torch.Generator().manual_seed(3), 1.0).numpy()
        before = layer.query(x, w)
        rig.set_imperfection("od_scale", 0.8)
        thinner = layer.query(x, w)
        assert thinner.sum() > before.sum()  # a thinner cell absorbs less
        rig.set_imperfection("i_sat_scale", 2.0)
        assert not np.allclose(layer.query(x, w), thinner)
        rig.reset_imperfections()
        assert np.array_equal(layer.query(x, w), before)


def test_finite_differences_on_the_bench_match_the_exact_gradient(tmp_path):
    with opened_layer(small_rig(tmp_path, gradient="exact")) as (rig, layer):
        x = random_inputs(5, 16, seed=4)
        w = layer.initial_controls(torch.Generator().manual_seed(5), 0.9)
        grad_out = torch.randn(5, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        c = w.clone().requires_grad_(True)
        (layer.twin(x, c) * grad_out).sum().backward()
        y = torch.from_numpy(layer.query(x, w.numpy()))
        got = FiniteDifference(step=1e-6).control_grad(layer, x, w, y, grad_out)
        cos = float(got @ c.grad / (got.norm() * c.grad.norm()))
        assert cos > 0.9999 and float(got.norm() / c.grad.norm()) == pytest.approx(1, abs=1e-3)


def test_the_optical_derivative_points_the_way_the_exact_one_does(tmp_path):
    with opened_layer(small_rig(tmp_path)) as (rig, layer):  # the shipped twin: optical derivative
        x = random_inputs(8, 16, seed=7)
        w = layer.initial_controls(torch.Generator().manual_seed(8), 0.9)
        grad_out = torch.randn(8, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        grads = []
        for mode in ("optical", "exact"):
            layer.twin.model.gradient = mode
            c = w.clone().requires_grad_(True)
            (layer.twin(x, c) * grad_out).sum().backward()
            grads.append(c.grad)
        cos = float(grads[0] @ grads[1] / (grads[0].norm() * grads[1].norm()))
        assert 0.5 < cos < 0.999999  # the same direction, not the same vector


def test_rig_check_opens_the_shipped_rig():
    done = subprocess.run([SATLAB, "rig", "check", str(SHIPPED)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "simulated weight modulator, 118016 pixels" in done.stdout


@pytest.mark.parametrize("change, field", [({"od": -1}, "od"), ({"i_sat": [0.1]}, "i_sat"),
                                           ({"nonlinearity": "tanh"}, "nonlinearity")])
def test_bad_network_options_name_their_field(tmp_path, change, field):
    path = small_rig(tmp_path, **change)
    done = subprocess.run([SATLAB, "rig", "check", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert field in line and str(path) in line


def test_the_network_trains_in_silico_and_is_scored_on_the_bench(tmp_path):
    rig = yaml.safe_load(SHIPPED.read_text())
    for where in (rig["resources"]["onn"]["options"], rig["system"]["layers"][0]["twin"]["options"]):
        where.update(sizes=[16, 8, 8, 10])
    rig["system"]["layers"][0].update(in_features=16)
    rig_path = write_yaml(tmp_path / "sa16.yaml", rig)
    config = yaml.safe_load((SHIPPED.parent / "sa-onn.yaml").read_text())
    config.update(rig=str(rig_path), data={"train_per_class": 2, "test_per_class": 1})
    config["model"]["physical"] = [16, 10]
    config["training"].update(epochs=1, batch_size=10, methods=["sat"])
    run = tmp_path / "run"
    done = subprocess.run([SATLAB, "train", str(write_yaml(tmp_path / "cfg.yaml", config)), "--run-dir",
                           str(run), "--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "sat" / "summary.json").read_text())
    assert summary["rig_queries"] == 0  # in silico: the bench only scores
    assert summary["test_images"] == 10
    weights = torch.load(run / "sat" / "checkpoint.pt", weights_only=False)["model"]["physical.0.controls"]
    assert weights.shape == (16 * 8 + 8 * 8 + 8 * 10,) and float(weights.abs().max()) <= 1
