"""Registration of the incoherent free-space bench: the misalignment a calibration measures
through the rig, and the twin built from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bank_rig, random_weights_and_images, write_yaml
from satlab.simulators.freespace.incoherent import NAMED, IncoherentModel, IncoherentTwin

from satlab.calibration.freespace import calibrate_registration, images, pictures, predict
from satlab.calibration.store import load_calibration, write_calibration
from satlab.rig import Rig
from satlab.rigfile import load_rig_file
from satlab.systems import system_for
from satlab.validation import ConfigError

AXES = ("rotation_deg", "shift_px", "scale")
# what the calibration must recover on the noisy bench below (its shot and read noise give the
# fit about ±0.02°, ±0.005 px and ±3e-4 of scale)
TOLERANCE = {"rotation_deg": 0.1, "shift_px": 0.03, "scale": 2e-3}


def small_rig(read_noise_e: float = 0.0, electrons_per_unit: float = 500.0) -> dict:
    """A two-layer 100 -> 9 -> 4 free-space rig file; the first layer's display misaligns and
    has a stage and a mount, the second is built aligned (misaligns: false)."""
    # 500 e- per unit: a uniform tile of 100 pixels at full brightness would overfill the
    # 40,000 e- well, so the calibration must dim its input
    fc1 = {"side": 10, "outputs": 9, "noise_seed": 5,
           "camera": {"electrons_per_unit": electrons_per_unit, "read_noise_e": read_noise_e}}
    fc2 = {"side": 3, "outputs": 4, "misaligns": False}
    instruments = {}
    for i in (1, 2):
        instruments |= {
            f"weights{i}": {"kind": "input_modulator", "driver": "simulated.weight_display", "resource": f"fc{i}"},
            f"images{i}": {"kind": "input_modulator", "driver": "simulated.image_display", "resource": f"fc{i}"},
            f"camera{i}": {"kind": "camera", "driver": "simulated.tile_camera", "resource": f"fc{i}"}}
    instruments |= {
        "stage1": {"kind": "positioner", "driver": "simulated.stage", "resource": "fc1",
                   "options": {"axis": "shift_px", "travel": [-5, 5]}},
        "mount1": {"kind": "positioner", "driver": "simulated.stage", "resource": "fc1",
                   "options": {"axis": "rotation_deg", "travel": [-5, 5]}}}
    layer = {"weights": "weights{}", "inputs": "images{}", "camera": "camera{}"}
    return {
        "name": "fs-small",
        "resources": {"fc1": {"driver": "simulated.incoherent_bench", "options": fc1},
                      "fc2": {"driver": "simulated.incoherent_bench", "options": fc2}},
        "instruments": instruments,
        "system": {"type": "incoherent_freespace", "layers": [
            {"name": "fc1", "in_features": 100, "out_features": 9,
             **{k: v.format(1) for k, v in layer.items()},
             "twin": {"driver": "twin.incoherent", "options": fc1},
             "alignment": [{"positioner": "stage1", "axis": "shift_px", "step": 0.5},
                           {"positioner": "mount1", "axis": "rotation_deg", "step": 0.5}]},
            {"name": "fc2", "in_features": 9, "out_features": 4,
             **{k: v.format(2) for k, v in layer.items()},
             "twin": {"driver": "twin.incoherent", "options": fc2}}]},
    }


def drawn_misalignment(seed: int) -> dict[str, float]:
    """A misalignment of the display drawn at random: up to 4°, 3 px and 10 % of scale."""
    rng = np.random.default_rng(seed)
    return {"rotation_deg": rng.uniform(-4, 4), "shift_px": rng.uniform(-3, 3),
            "scale": 1 + rng.uniform(-0.1, 0.1)}


def calibrated(path, misalignment: dict[str, float], knobs: dict[str, float] | None = None):
    """Open the rig at ``path``, misalign it, optionally move knobs, and calibrate it."""
    spec = load_rig_file(path)
    with Rig(spec, path) as rig:
        for name, value in misalignment.items():
            rig.set_imperfection(name, value)
        for name, position in (knobs or {}).items():
            rig.move(name, position)
        step = calibrate_registration(rig, system_for(spec, path))
        identities = dict(rig.identities)
        bench = rig.resources["fc1"]
        dark = (float(bench.transmission.abs().max()), float(bench.inputs.abs().max()))
        positions = dict(bench.positions)
    return step, identities, dark, positions


@pytest.mark.parametrize("misalignment", [(0.0, 0.0, 0.0), (2.5, -1.2, 0.07)])
def test_the_fits_prediction_is_the_models_tile_sums(misalignment):
    model = IncoherentModel(10, 9)
    shown, inputs = pictures(model), images(10)
    expected = torch.stack([model.tile_sums(inputs, t, dict(zip(NAMED, misalignment, strict=True)))
                            for t in shown])
    assert expected.std() > 1  # the pictures differ
    np.testing.assert_allclose(predict(model, shown, inputs, np.array(misalignment)), expected.numpy(),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_registration_recovers_a_random_misalignment_within_its_uncertainty(tmp_path, seed):
    path = write_yaml(tmp_path / "rig.yaml", small_rig(read_noise_e=20.0))
    truth = drawn_misalignment(seed)
    step, _, dark, _ = calibrated(path, truth)
    assert step.kind == "registration" and step.problems == []
    fc1 = step.summary["fc1"]
    for axis in AXES:
        value, std = fc1[axis]["value"], fc1[axis]["std"]
        error = abs(value - truth[axis])
        assert error < TOLERANCE[axis], (axis, value, truth[axis])
        assert 0 < std < TOLERANCE[axis] / 3
        assert error < 4 * std, (axis, error, std)  # the uncertainty is honest
    assert not fc1["aligned"]
    assert 0.5 < fc1["chi2"] < 2  # residuals at the camera's noise: the model describes the bench
    assert fc1["input_level"] == 0.5  # dimmed once: at full brightness a tile overfills the well
    assert fc1["queries"] == 7  # six pictures and the saturated first try
    assert dark == (0.0, 0.0)  # both displays left dark
    # the second layer's display takes no misalignment: aligned, and the twin is told none
    assert step.summary["fc2"]["aligned"]
    np.testing.assert_array_equal(step.arrays["fc2.misalignment"], np.zeros(3))
    np.testing.assert_allclose(step.arrays["fc1.misalignment"],
                               [truth["rotation_deg"], truth["shift_px"], truth["scale"] - 1],
                               atol=max(TOLERANCE.values()))


def test_the_registration_measures_the_display_with_its_knobs_at_zero(tmp_path):
    # the knobs are the twin's own inputs: a calibration taken with a knob moved measures
    # the display's misalignment without it
    path = write_yaml(tmp_path / "rig.yaml", small_rig())
    truth = drawn_misalignment(3)
    step, _, _, positions = calibrated(path, truth, knobs={"stage1": 1.5, "mount1": -2.0})
    assert positions["shift_px"] == 1.5 and positions["rotation_deg"] == -2.0  # left where they were
    fc1 = step.summary["fc1"]
    assert fc1["knobs"] == {"stage1": 1.5, "mount1": -2.0}
    assert abs(fc1["shift_px"]["value"] - truth["shift_px"]) < 0.01
    assert abs(fc1["rotation_deg"]["value"] - truth["rotation_deg"]) < 0.01


def test_a_twin_built_from_the_calibration_follows_the_misaligned_bench(tmp_path):
    data = small_rig()
    path = write_yaml(tmp_path / "rig.yaml", data)
    truth = drawn_misalignment(4)
    step, identities, _, _ = calibrated(path, truth)
    folder = write_calibration(tmp_path / "cal", data["name"], identities, [step])
    cal = load_calibration(folder)
    assert cal.summary("registration")["fc1"]["scale"]["value"] == pytest.approx(truth["scale"], abs=1e-3)
    assert (folder / "registration.png").stat().st_size > 0
    calibrated_path = write_yaml(tmp_path / "rig-cal.yaml", {**data, "calibration": "cal"})

    spec, preset_spec = load_rig_file(calibrated_path), load_rig_file(path)
    with Rig(spec, calibrated_path) as rig:
        for name, value in truth.items():  # the same bench: imperfections live on the open rig
            rig.set_imperfection(name, value)
        layers = system_for(spec, calibrated_path).build_layers(rig)
        presets = system_for(preset_spec, path).build_layers(rig)
        w, x = random_weights_and_images(layers[0], 6, batch=8)
        for knobs in ([0.0, 0.0], [1.0, -1.5]):  # and with the stage and mount moved
            layers[0].align(np.array(knobs))
            presets[0].align(np.array(knobs))
            bench = torch.from_numpy(layers[0].query(x, w.numpy()))
            error = (layers[0].twin_output(x, w) - bench).abs().mean()
            preset_error = (presets[0].twin_output(x, w) - bench).abs().mean()
            assert error < preset_error / 1000, (knobs, float(error), float(preset_error))
        # the aligned layer's twin is the preset's, bit for bit
        w2, x2 = random_weights_and_images(layers[1], 7)
        assert torch.equal(layers[1].twin_output(x2, w2), presets[1].twin_output(x2, w2))
        assert torch.equal(layers[1].twin_output(x2, w2), torch.from_numpy(layers[1].query(x2, w2.numpy())))


def test_a_twin_of_another_geometry_or_layer_is_refused_in_one_line(tmp_path):
    data = small_rig()
    path = write_yaml(tmp_path / "rig.yaml", data)
    step, identities, _, _ = calibrated(path, drawn_misalignment(5))
    cal = load_calibration(write_calibration(tmp_path / "cal", data["name"], identities, [step]))
    with pytest.raises(ConfigError, match="measured 9 tiles of 10x10 pixels; the twin has 9 of 12x12") as err:
        IncoherentTwin.from_calibration(cal, "fc1", side=12, outputs=9)
    assert err.value.field == "fc1.geometry"
    with pytest.raises(ConfigError, match="measured fc1, fc2, not 'fc3'") as err:
        IncoherentTwin.from_calibration(cal, "fc3", side=10, outputs=9)
    assert err.value.field == "steps.registration"


def test_a_layer_whose_camera_sees_no_light_is_a_problem_not_a_fit(tmp_path):
    path = write_yaml(tmp_path / "rig.yaml", small_rig(electrons_per_unit=1e-3))
    step, identities, dark, _ = calibrated(path, drawn_misalignment(6))
    assert len(step.problems) == 1 and step.problems[0].startswith("fc1: camera1 reads")
    assert "is the light on?" in step.problems[0]
    assert step.summary["fc1"]["measured"] is False
    assert not any(key.startswith("fc1.") for key in step.arrays)
    assert dark == (0.0, 0.0)
    cal = load_calibration(write_calibration(tmp_path / "cal", "fs-small", identities, [step]))
    assert cal.meta.steps["registration"].problems == step.problems
    with pytest.raises(ConfigError, match="fc1: not measured: camera1 reads .* is the light on") as err:
        IncoherentTwin.from_calibration(cal, "fc1", side=10, outputs=9)
    assert "\n" not in str(err.value)


def test_a_rig_without_the_layers_instruments_is_a_config_error(tmp_path):
    data = small_rig()
    path = write_yaml(tmp_path / "rig.yaml", data)
    system = system_for(load_rig_file(path), path)
    # the same bench, opened from a file that lacks the first layer's camera
    bare = {k: v for k, v in data.items() if k != "system"}
    bare["instruments"] = {k: v for k, v in data["instruments"].items() if k != "camera1"}
    bare_path = write_yaml(tmp_path / "bare.yaml", bare)
    with (Rig(load_rig_file(bare_path), bare_path) as rig,
          pytest.raises(ConfigError, match="no instrument 'camera1' open on the rig") as err):
        calibrate_registration(rig, system)
    assert (err.value.path, err.value.field) == (str(path), "system.layers.0.camera")


def test_a_system_that_is_not_free_space_is_a_config_error(tmp_path):
    path = write_yaml(tmp_path / "bank.yaml", bank_rig())
    spec = load_rig_file(path)
    with (Rig(spec, path) as rig,
          pytest.raises(ConfigError, match="incoherent_freespace.*got 'mrr_weight_bank'") as err):
        calibrate_registration(rig, system_for(spec, path))
    assert err.value.field == "system.type"


def test_the_calibrate_command_registers_a_free_space_rig_and_a_rig_file_uses_it(tmp_path):
    import subprocess

    from conftest import SATLAB

    from satlab.cli import CALIBRATION_STEPS
    from satlab.calibration.job import STEPS

    assert CALIBRATION_STEPS == tuple(STEPS)  # the command offers every step there is
    spec = small_rig()
    path = write_yaml(tmp_path / "rig.yaml", spec)
    refused = subprocess.run([SATLAB, "calibrate", str(path), "--only", "rings", "-o", str(tmp_path / "x")],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--only rings calibrates a mrr_weight_bank system" in refused.stderr
    proc = subprocess.run([SATLAB, "calibrate", str(path), "-o", str(tmp_path / "cal"), "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    cal = load_calibration(tmp_path / "cal")
    assert list(cal.meta.steps) == ["registration"] and cal.summary("registration")["fc1"]["measured"]
    spec["calibration"] = "cal"
    calibrated = write_yaml(tmp_path / "calibrated.yaml", spec)
    rig_spec = load_rig_file(calibrated)
    twin = system_for(rig_spec, calibrated).make_twin("system.layers.0.twin",
                                                      rig_spec.system.layers[0].twin, "fc1")
    assert isinstance(twin, IncoherentTwin) and twin.misalignment is not None
