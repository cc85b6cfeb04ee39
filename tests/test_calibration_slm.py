"""SLM gray level → phase calibration through the camera of the simulated D2NN bench: the
device's true response is hidden in the bench, the calibration sees only the rig."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import write_yaml

from satlab.calibration.slm import calibrate_slm_lut
from satlab.calibration.store import load_calibration, write_calibration
from satlab.phase_lut import TWO_PI, PhaseLut
from satlab.rig import Rig
from satlab.rigfile import load_rig_file
from satlab.systems import system_for
from satlab.validation import ConfigError, OptionError

# A realistic camera: photon shot noise and 5 e read noise on the 12-bit sensor
CAMERA = {"bit_depth": 12, "shot_noise": True, "read_noise_e": 5.0}


def d2nn_rig(path: Path, slm1: dict | None = None, camera: dict | None = None, system: bool = True,
             instruments: tuple[str, ...] = ("slm1", "slm2", "digits", "camera")) -> Path:
    """A System 3 rig file (two SLMs, input, camera) with options for slm1."""
    bench = {"preset": "sat_system3", "slm_bits": 8, "camera": camera or {"bit_depth": 12}, "noise_seed": 7}
    every = {
        "slm1": {"kind": "phase_modulator", "driver": "simulated.d2nn_slm", "resource": "table",
                 "options": {"mask": 0, **(slm1 or {})}},
        "slm2": {"kind": "phase_modulator", "driver": "simulated.d2nn_slm", "resource": "table",
                 "options": {"mask": 1}},
        "digits": {"kind": "input_modulator", "driver": "simulated.d2nn_input", "resource": "table"},
        "camera": {"kind": "camera", "driver": "simulated.d2nn_camera", "resource": "table"},
    }
    rig = {"name": "slm-cal", "resources": {"table": {"driver": "simulated.d2nn_bench", "options": bench}},
           "instruments": {name: every[name] for name in instruments}}
    if system:
        rig["system"] = {"type": "d2nn", "layer": {
            "slms": ["slm1", "slm2"], "inputs": "digits", "camera": "camera", "image": 64, "macro_pixel": 1,
            "exposure_s": 1.0e-3, "twin": {"driver": "twin.d2nn", "options": bench}}}
    return write_yaml(path, rig)


def _rms(errors: np.ndarray) -> float:
    return math.sqrt(float(np.mean(errors**2)))


def shown_errors(rig: Rig, targets: np.ndarray) -> np.ndarray:
    """The bench's true phase of each target shown uniformly on slm1, less the target (wrapped)."""
    bench = rig.resources["table"]
    out = np.empty(len(targets))
    for i, target in enumerate(targets):
        rig.show_phase("slm1", np.full((128, 128), target))
        out[i] = np.angle(np.exp(1j * (float(bench.masks[0, 0, 0]) - target)))
    return out


@pytest.mark.parametrize(("seed", "reach"), [(11, (0.85, 0.95)), (12, (1.05, 1.2))],
                         ids=["short-of-2pi", "past-2pi"])
def test_a_random_response_is_recovered_and_its_lut_shows_phases_accurately(tmp_path, seed, reach):
    rng = np.random.default_rng(seed)
    response = {"gamma": float(rng.uniform(0.6, 1.8)), "max_phase_rad": float(rng.uniform(*reach) * TWO_PI)}
    path = d2nn_rig(tmp_path / "rig.yaml", {"response": response}, CAMERA)
    spec = load_rig_file(path)
    targets = rng.uniform(0, TWO_PI, 300)
    with Rig(spec, path) as rig:
        result = calibrate_slm_lut(rig, system_for(spec, path), levels=24)
        true = rig.instruments["slm1"].response  # the hidden curve, read by the test only
        linear = shown_errors(rig, targets)
    s = result.summary["slm1"]
    gray, phase, std = (result.arrays[f"slm1.{k}"] for k in ("gray", "phase", "phase_std"))
    # every measured point within its stated uncertainty: camera noise (repeat frames), its
    # rounding to counts and the twin library's interpolation, ~2-10 mrad here
    z = (phase - true[gray]) / std
    assert np.all(np.abs(z) < 5) and math.sqrt(np.mean(z**2)) < 2, z
    assert np.median(std) < 0.01
    # the fitted curve over the levels the device can use (those below 2π): ten times the
    # per-point uncertainty, and well inside the 0.05 rad
    curve = result.arrays["slm1.curve"] - result.arrays["slm1.curve"][0]
    usable = true < TWO_PI
    assert math.sqrt(np.mean((curve - true)[usable] ** 2)) < 0.02
    assert abs(s["max_phase_rad"] - true[-1]) < 0.03
    assert s["rms_fit_error_rad"] < 0.02 and s["queries"] > 0
    # the short or long range is reported, never silent
    if true[-1] < TWO_PI:
        assert not s["reaches_2pi"] and any(p.startswith("slm1: reaches only") for p in result.problems)
    else:
        past = int(np.argmax(true >= TWO_PI))
        assert s["reaches_2pi"] and abs(s["first_level_past_2pi"] - past) <= 1
        assert any(p.startswith("slm1: passes 2π") for p in result.problems)
    # mask 2's phase reaches the camera through the threshold after it, which keeps the
    # phase: slm2, the ideal linear device, is calibrated too
    assert "slm2.lut" in result.files and result.summary["slm2"]["measured"]
    assert abs(result.summary["slm2"]["max_phase_rad"] - PhaseLut.linear(8).phases[-1]) < 0.05

    folder = write_calibration(tmp_path / "cal", "slm-cal", {}, [result])
    assert load_calibration(folder).summary("slm_lut")["slm1"]["measured"]
    assert (folder / "slm_lut.png").stat().st_size > 0
    lut = PhaseLut.from_file(folder / "slm1.lut")
    assert lut.bits == 8 and lut.phases[0] == 0

    calibrated_path = d2nn_rig(tmp_path / "calibrated.yaml",
                               {"response": response, "lut_file": str(folder / "slm1.lut")}, CAMERA)
    with Rig.from_file(calibrated_path) as rig:
        calibrated = shown_errors(rig, targets)
        grays = [int(rig.show_phase("slm1", np.full((128, 128), t))[0, 0]) for t in targets]
    reachable = targets < min(true[-1], TWO_PI)
    step = float(np.max(np.diff(true[true < TWO_PI])))
    # within a level's rounding and the fit's error where the device reaches; everywhere,
    # far better than the linear table the driver assumed
    assert _rms(calibrated[reachable]) < step / math.sqrt(12) + 0.01
    assert _rms(calibrated) < _rms(linear) / 4, (_rms(calibrated), _rms(linear))
    if s["reaches_2pi"]:  # the parked levels above 2π are never chosen
        assert max(grays) <= s["first_level_past_2pi"]


def test_the_default_device_is_the_ideal_linear_one_and_show_gray_goes_through_the_rig(tmp_path):
    path = d2nn_rig(tmp_path / "rig.yaml")
    with Rig.from_file(path) as rig:
        slm = rig.instruments["slm1"]
        assert np.array_equal(slm.response, PhaseLut.linear(8).phases)
        assert np.array_equal(slm.lut.phases, PhaseLut.linear(8).phases)
        gray = np.zeros((128, 128), dtype=np.uint8)
        gray[:, 64:] = 200
        rig.show_gray("slm1", gray)
        assert rig.commands[-1].action == "show_gray" and rig.commands[-1].instrument == "slm1"
        np.testing.assert_array_equal(rig.resources["table"].masks[0].numpy(), slm.response[gray])
        with pytest.raises(ValueError, match="gray levels must be integers"):
            rig.show_gray("slm1", gray.astype(float))


def test_a_response_bends_what_the_bench_shows_but_not_what_the_driver_picks(tmp_path):
    path = d2nn_rig(tmp_path / "rig.yaml", {"response": {"gamma": 2.0, "max_phase_rad": 5.0}})
    with Rig.from_file(path) as rig:
        gray = rig.show_phase("slm1", np.full((128, 128), math.pi))
        assert gray[0, 0] == 128  # the linear LUT's choice for π
        shown = float(rig.resources["table"].masks[0, 0, 0])
        assert shown == pytest.approx(5.0 * (128 / 255) ** 2)


@pytest.mark.parametrize(("options", "field"), [
    ({"response": {"gamma": 0.0}}, "response.gamma"),
    ({"response": {"max_phase_rad": float("nan")}}, "response.max_phase_rad"),
    ({"response": {"gamma": 1.0, "offset": 0.1}}, "response"),
    ({"lut_file": "no-such-file.lut"}, "lut_file"),
])
def test_bad_slm_options_are_refused_before_anything_opens(tmp_path, options, field):
    path = d2nn_rig(tmp_path / "rig.yaml", options)
    with pytest.raises(ConfigError) as err:
        load_rig_file(path)
    assert err.value.field == f"instruments.slm1.options.{field}"


def test_a_lut_of_another_bit_depth_is_refused_when_the_slm_opens(tmp_path):
    lut = tmp_path / "lut.txt"
    np.savetxt(lut, PhaseLut.linear(4).phases)
    path = d2nn_rig(tmp_path / "rig.yaml", {"lut_file": str(lut)})
    with pytest.raises(OptionError, match="lut_file.*16 levels"), Rig.from_file(path):
        pass


@pytest.mark.parametrize(("instruments", "field", "named"), [
    (("slm1", "slm2", "digits"), "instruments", "no camera"),
    (("digits", "camera"), "instruments", "no SLM (phase_modulator)"),
    (("slm1", "slm2", "digits", "camera"), "system", "needs a d2nn system"),
])
def test_a_rig_without_what_the_calibration_needs_is_a_config_error(tmp_path, instruments, field, named):
    path = d2nn_rig(tmp_path / "rig.yaml", system=False, instruments=instruments)
    with Rig.from_file(path) as rig:
        with pytest.raises(ConfigError) as err:
            calibrate_slm_lut(rig, None)
        assert all(c.action == "open" for c in rig.commands)  # refused before any write
    assert err.value.field == field and named in str(err.value) and str(path) in str(err.value)


def test_a_lut_file_written_by_hand_is_what_the_driver_uses(tmp_path):
    phases = TWO_PI * (np.arange(256) / 256) ** 1.3
    lut = tmp_path / "slm1.lut"
    lut.write_text("# measured\n" + "".join(f"{p:.17g}\n" for p in phases))
    path = d2nn_rig(tmp_path / "rig.yaml", {"lut_file": str(lut)})
    with Rig.from_file(path) as rig:
        assert np.array_equal(rig.instruments["slm1"].lut.phases, phases)
