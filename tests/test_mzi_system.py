"""The MZI-mesh system on its simulated bench: instruments, twin, errors, gradients, rig files."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SATLAB, opened_layer, random_inputs, write_yaml

from satlab.estimators import FiniteDifference, Spsa
from satlab.evaluation import imperfection_sweep
from satlab.rig import Rig
from satlab.rigfile import load_rig_file
from satlab.validation import ConfigError

SHIPPED = Path(str(files("satlab.configs"))) / "mzi-sim.yaml"


def small_rig(tmp_path: Path, modes: int = 8, outputs: int = 4, **bench) -> Path:
    """The shipped rig shrunk to ``modes`` modes, with the bench options given."""
    rig = yaml.safe_load(SHIPPED.read_text())
    options = rig["resources"]["mesh"]["options"]
    options.update({"modes": modes, "outputs": outputs, "sigma_bs": 0.0, "sigma_phase": 0.0, **bench})
    rig["system"]["layers"][0].update(in_features=modes, out_features=outputs)
    rig["system"]["layers"][0]["twin"]["options"].update(modes=modes, outputs=outputs)
    return write_yaml(tmp_path / "mzi.yaml", rig)


def test_the_bench_through_its_instruments_equals_the_twin_bit_for_bit(tmp_path):
    with opened_layer(small_rig(tmp_path)) as (rig, layer):
        assert layer.n_controls == 8 * 7 + 8  # theta and phi of 28 MZIs, 8 output phases
        x = random_inputs(5, 8)
        controls = layer.initial_controls(torch.Generator().manual_seed(1), 1.0)
        assert np.array_equal(layer.query(x, controls.numpy()), layer.twin(x, controls).numpy())
        # a stack of vectors in one call: each row as the twin gives it (vectorised
        # arithmetic may round the last bit differently)
        stack = torch.stack([controls, controls * 0.9])
        got = layer.query_many(x, stack.numpy())
        for row, vector in zip(got, stack, strict=True):
            assert np.allclose(row, layer.twin(x, vector).numpy(), rtol=1e-13, atol=0)
        # the heaters hold the last vector of the stack, as the rig believes
        assert np.array_equal(rig.instruments["heaters"].get_currents(), stack[1].numpy())


def test_power_is_conserved_on_the_detected_ports_and_beyond(tmp_path):
    with opened_layer(small_rig(tmp_path, outputs=8)) as (rig, layer):
        x = random_inputs(4, 8)
        controls = layer.initial_controls(torch.Generator().manual_seed(2), 1.0)
        out = layer.query(x, controls.numpy())
        # a lossless mesh: all ports together carry the input's power (amplitude^2)
        assert np.allclose(out.sum(1), (x ** 2).sum(1).numpy(), rtol=1e-12)


def test_the_device_errors_are_one_fixed_draw_with_the_declared_spread(tmp_path):
    with opened_layer(small_rig(tmp_path, modes=64, outputs=10, sigma_bs=0.15, sigma_phase=0.1)) as (rig, layer):
        bench = rig.resources["mesh"]
        e = torch.cat([bench.mesh.errors["e1"], bench.mesh.errors["e2"]])
        assert e.numel() == 2 * 2016
        se = 0.15 / np.sqrt(e.numel())
        assert abs(float(e.mean())) < 4 * se
        assert abs(float(e.std()) - 0.15) < 4 * 0.15 / np.sqrt(2 * e.numel())
        phase = bench.mesh.errors["phase"]
        assert float(phase[2 * 2016:].abs().max()) == 0  # output phases: none
        assert abs(float(phase[:2 * 2016].std()) - 0.1) < 4 * 0.1 / np.sqrt(2 * 4032)
        x = random_inputs(3, 64)
        controls = layer.initial_controls(torch.Generator().manual_seed(0), 1.0)
        device = layer.query(x, controls.numpy())
        assert not np.allclose(device, layer.twin(x, controls).numpy(), atol=1e-3)  # the twin is ideal
        # a sweep's draw 0 is the device itself; another draw is another device
        rig.set_imperfection("sigma_bs", 0.15, 0)
        assert np.array_equal(layer.query(x, controls.numpy()), device)
        rig.set_imperfection("sigma_bs", 0.15, 1)
        assert not np.allclose(layer.query(x, controls.numpy()), device)
        rig.reset_imperfections()
        assert np.array_equal(layer.query(x, controls.numpy()), device)


def test_imperfection_sweeps_cover_the_errors_and_crosstalk(tmp_path):
    with opened_layer(small_rig(tmp_path)) as (rig, layer):
        from torch import nn

        from satlab.estimators import PhysicsAware
        from satlab.physical_layer import PhysicalLayer

        controls = layer.initial_controls(torch.Generator().manual_seed(3), 1.0)
        model = nn.Sequential(PhysicalLayer(layer, PhysicsAware(), controls)).eval()
        x = random_inputs(40, 8, seed=5)
        with torch.no_grad():
            y = model(x).argmax(1)  # labels the error-free mesh gets right
        rows = imperfection_sweep(model, rig, x, y, [("sigma_phase", [0.0, 0.5])], draws=2,
                                  progress=False)
        assert rows[0]["accuracy"] == 1.0
        assert rows[1]["accuracy"] < 0.9 and len(rows[1]["draws"]) == 2
        rows = imperfection_sweep(model, rig, x, y, [("crosstalk_scale", [1.0, 4.0])], progress=False)
        assert rows[0]["accuracy"] == 1.0 and rows[1]["accuracy"] < 1.0


@pytest.mark.parametrize("estimator", ["fd", "spsa"])
def test_perturbative_gradients_on_a_small_mesh_agree_with_autograd(tmp_path, estimator):
    with opened_layer(small_rig(tmp_path)) as (rig, layer):
        x = random_inputs(6, 8)
        controls = layer.initial_controls(torch.Generator().manual_seed(4), 1.0)
        grad_out = torch.randn(6, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        c = controls.clone().requires_grad_(True)
        (layer.twin(x, c) * grad_out).sum().backward()
        truth = c.grad
        y = torch.from_numpy(layer.query(x, controls.numpy()))
        if estimator == "fd":
            got = FiniteDifference(step=1e-6).control_grad(layer, x, controls, y, grad_out)
            cos = float(got @ truth / (got.norm() * truth.norm()))
            assert cos > 0.9999 and float(got.norm() / truth.norm()) == pytest.approx(1, abs=1e-3)
        else:
            spsa = Spsa(step=1e-6, directions=64, distribution="hadamard")
            got = spsa.control_grad(layer, x, controls, y, grad_out)
            # 64 orthogonal directions over 64 heaters span them all: the full gradient
            cos = float(got @ truth / (got.norm() * truth.norm()))
            assert cos > 0.999 and float(got.norm() / truth.norm()) == pytest.approx(1, abs=0.02)


def test_rig_check_opens_the_shipped_rig_and_leaves_it_safe():
    done = subprocess.run([SATLAB, "rig", "check", str(SHIPPED)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "simulated MZI heater source, 4096 channels" in done.stdout
    assert "3 instruments OK" in done.stdout


@pytest.mark.parametrize("change, field, message", [
    (lambda r: r["resources"]["mesh"]["options"].update(sigma_bs=0.5), "sigma_bs", "[0, 0.3]"),
    (lambda r: r["resources"]["mesh"]["options"].update(layout="hexagonal"), "layout", "rectangular"),
    (lambda r: r["resources"]["mesh"]["options"]["heaters"].update(max_current_A=0.001),
     "heaters.max_current_A", "2 pi"),
])
def test_bad_bench_options_name_their_field(tmp_path, change, field, message):
    rig = yaml.safe_load(small_rig(tmp_path).read_text())
    change(rig)
    path = write_yaml(tmp_path / "bad.yaml", rig)
    done = subprocess.run([SATLAB, "rig", "check", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert field in line and message in line and str(path) in line


def test_a_layer_that_does_not_fit_its_mesh_is_refused_before_training(tmp_path):
    rig = yaml.safe_load(small_rig(tmp_path).read_text())
    rig["system"]["layers"][0]["twin"]["options"]["modes"] = 6
    path = write_yaml(tmp_path / "bad.yaml", rig)
    with pytest.raises(ConfigError) as err, Rig(load_rig_file(path), path):
        pass
    assert err.value.field == "system.layers.0.in_features" and "6 modes" in str(err.value)


def test_training_keeps_the_heaters_inside_the_source_power_budget(tmp_path):
    path = small_rig(tmp_path)
    rig = yaml.safe_load(path.read_text())
    rig["instruments"]["heaters"]["limits"]["max_total_power"] = 0.3  # W over 64 heaters
    path = write_yaml(tmp_path / "tight.yaml", rig)
    with opened_layer(path) as (_, layer):
        controls = layer.initial_controls(torch.Generator().manual_seed(0), 1.0)
        assert float(controls.pow(2).sum()) * 500 > 0.3  # random phases need more
        layer.project(controls)
        assert float(controls.pow(2).sum()) * 500 <= 0.3
        assert float(controls.min()) >= 0


def test_sat_in_situ_trains_on_the_device_and_sweeps_its_errors(tmp_path):
    rig = yaml.safe_load(small_rig(tmp_path, outputs=8).read_text())
    rig["resources"]["mesh"]["options"].update(modes=10, outputs=10, sigma_bs=0.1, sigma_phase=0.1)
    rig["system"]["layers"][0].update(in_features=10, out_features=10)
    rig["system"]["layers"][0]["twin"]["options"].update(modes=10, outputs=10)
    rig_path = write_yaml(tmp_path / "mzi10.yaml", rig)
    config = yaml.safe_load((SHIPPED.parent / "mzi-sat.yaml").read_text())
    config.update(rig=str(rig_path), data={"train_per_class": 2, "test_per_class": 1})
    config["model"]["physical"] = [10, 10]
    config["training"].update(epochs=1, batch_size=10, methods=["sat"])
    path = write_yaml(tmp_path / "cfg.yaml", config)
    run = tmp_path / "run"
    done = subprocess.run([SATLAB, "train", str(path), "--run-dir", str(run), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "sat" / "summary.json").read_text())
    assert summary["rig_queries"] == 2 * 2  # two steps, SAT's two device passes each
    swept = subprocess.run([SATLAB, "evaluate", str(run), "--sweep", "sigma_bs=0,0.1", "--draws", "2"],
                           capture_output=True, text=True, timeout=600)
    assert swept.returncode == 0, swept.stderr
    sweep = json.loads((run / "sat" / "sweep-sigma_bs.json").read_text())
    assert [r["sigma_bs"] for r in sweep["rows"]] == [0.0, 0.1]
    assert all(len(r["draw_accuracies"]) == 2 for r in sweep["rows"])
