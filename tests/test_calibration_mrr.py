"""Ring-bank calibration on simulated banks whose hidden parameters the test draws.

The test knows each ring's fabrication offset and the crosstalk it gave the bench; the
calibration sees only what the rig's detectors read.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SATLAB, TWO_LAYER_RIG, bank_rig, write_yaml

from satlab.calibration.bank_steps import WiringError
from satlab.calibration.job import BankOptions, run
from satlab.calibration.store import load_calibration, write_calibration
from satlab.rig import Rig
from satlab.rigfile import load_rig_file
from satlab.systems import system_for
from satlab.validation import ConfigError

ROWS, COLS = 4, 6
TOP_MA = 12.0


def hidden_bank(rng: np.random.Generator, noise_W: float = 0.0) -> tuple[dict, np.ndarray, tuple]:
    """A tait-like bank rig (power tuning) with random crosstalk; the resonance powers (W)."""
    crosstalk = (float(rng.uniform(0.02, 0.08)), float(rng.uniform(0.005, 0.02)))
    overrides = {"crosstalk": list(crosstalk), "detector_noise_W": noise_W,
                 "through_min": 0.03, "drop_max": 0.92}
    rig = bank_rig(ROWS, COLS, "tait_bank", seed=int(rng.integers(1000)), bench_overrides=overrides,
                   limits={"max_current": TOP_MA / 1000, "max_total_power": 1.0,
                           "heater_resistance_ohm": 500})
    rig["resources"]["chip"]["options"].update(shot_noise_bandwidth_Hz=0.0, adc_bits=None)
    rig["system"]["layers"][0]["twin"]["options"] = dict(rig["resources"]["chip"]["options"])
    top_W = 500 * (TOP_MA / 1000) ** 2
    resonance_W = rng.uniform(0.15, 0.7, ROWS * COLS) * top_W
    return rig, resonance_W, crosstalk


def open_calibrated(path: Path, resonance_W: np.ndarray, steps: list[str],
                    offsets: np.ndarray | None = None):
    """Open the rig, give its chip the hidden resonances, and run the calibration steps."""
    spec = load_rig_file(path)
    system = system_for(spec, path)
    rig = Rig(spec, path).__enter__()
    model = rig.resources["chip"].model
    fab = -resonance_W * model.params.tuning_efficiency if offsets is None else offsets
    model.set_fabrication_nm(torch.as_tensor(fab, dtype=torch.float64).reshape(ROWS, COLS))
    return rig, system, run(rig, system, steps, BankOptions(), say=lambda line: None)


def test_resonances_and_crosstalk_are_recovered(tmp_path):
    rng = np.random.default_rng(17)
    noise_W = 2e-6
    spec, resonance_W, crosstalk = hidden_bank(rng, noise_W)
    path = write_yaml(tmp_path / "rig.yaml", spec)
    rig, _, results = open_calibrated(path, resonance_W, ["wiring", "rings", "crosstalk", "weight_map"])
    rig.__exit__(None)
    steps = {s.kind: s for s in results}
    assert not steps["wiring"].problems
    arrays = steps["rings"].arrays
    assert steps["rings"].summary["fc"]["tuning"] == "power"
    ok = arrays["fc.status"] == 0
    assert ok.all(), steps["rings"].problems
    # the bound: the fit's own one-sigma error (from detector noise and sweep density)
    # four times over, plus what 16-point dense sampling cannot resolve
    error = np.abs(arrays["fc.center"] - resonance_W)
    assert (error <= 4 * arrays["fc.errors"][:, 0] + 1e-3 * arrays["fc.hwhm"]).all()
    hwhm_true = 0.3 / 2 / 100  # fwhm 0.3 nm at 100 nm/W
    assert np.allclose(arrays["fc.hwhm"], hwhm_true, rtol=0.02)
    # tuning efficiency: 0.3 nm lines, 100 nm/W
    assert np.allclose(0.3 * arrays["fc.tuning_linewidths_per_unit"], 100, rtol=0.02)
    found = steps["crosstalk"].arrays
    rings = np.arange(ROWS * COLS)
    distance = np.abs(rings[None, :] % COLS - rings[:, None] % COLS)
    same_row = rings[None, :] // COLS == rings[:, None] // COLS
    for d, truth in ((1, crosstalk[0]), (2, crosstalk[1])):
        pairs = found["fc.measured"] & same_row & (distance == d)
        assert pairs.sum() >= ROWS * (COLS - d)  # every neighbour pair on every waveguide
        assert np.allclose(found["fc.coupling"][pairs], truth, rtol=0.1, atol=1e-3)
    assert (found["fc.coupling"][~(same_row & (distance <= 2))] == 0).all()


def test_weight_current_weight_round_trip_within_the_banks_precision(tmp_path):
    rng = np.random.default_rng(5)
    spec, resonance_W, _ = hidden_bank(rng)
    path = write_yaml(tmp_path / "rig.yaml", spec)
    rig, system, results = open_calibrated(path, resonance_W, ["rings", "crosstalk", "weight_map"])
    try:
        out = tmp_path / "cal"
        write_calibration(out, spec["name"], dict(rig.identities), results)
        from satlab.calibration.weight_map import BankMap

        bank = BankMap.from_calibration(load_calibration(out), "fc")
        low, high = bank.reachable()
        target = rng.uniform(low.max(), high.min(), ROWS * COLS)
        currents, clipped = bank.currents_for(target.reshape(ROWS, COLS))
        assert not clipped.any()
        backend = system.build_layers(rig)[0]
        measured = backend.query(torch.eye(COLS, dtype=torch.float64), currents).T.flatten()
        assert np.abs(measured - target).max() < 0.01
        # the same targets through the bank without its crosstalk miss by far more
        bank.coupling[:] = 0
        naive, _ = bank.currents_for(target.reshape(ROWS, COLS))
        missed = backend.query(torch.eye(COLS, dtype=torch.float64), naive).T.flatten()
        assert np.abs(missed - target).max() > 5 * np.abs(measured - target).max()
    finally:
        rig.__exit__(None)


def test_a_ring_with_no_resonance_in_range_is_reported_not_fitted(tmp_path):
    rng = np.random.default_rng(8)
    spec, resonance_W, _ = hidden_bank(rng)
    resonance_W[7] = 3 * resonance_W.max()  # beyond what its heater can reach
    path = write_yaml(tmp_path / "rig.yaml", spec)
    rig, _, results = open_calibrated(path, resonance_W, ["rings", "weight_map"])
    rig.__exit__(None)
    rings = results[0]
    assert rings.arrays["fc.status"][7] != 0 and np.isnan(rings.arrays["fc.center"][7])
    named = [p for p in rings.problems if "ring (1, 1)" in p]
    assert named and "no resonance in range" in named[0]
    assert (rings.arrays["fc.status"][np.arange(ROWS * COLS) != 7] == 0).all()


def test_a_swapped_channel_is_named_and_nothing_is_written(tmp_path):
    rng = np.random.default_rng(2)
    spec, _, _ = hidden_bank(rng)
    channels = list(range(ROWS * COLS))
    channels[3], channels[10] = channels[10], channels[3]
    spec["system"]["layers"][0]["heater_channels"] = channels
    path = write_yaml(tmp_path / "rig.yaml", spec)
    with pytest.raises(WiringError, match=r"ring \(0, 3\).*moves ring \(1, 4\)"):
        open_calibrated(path, np.full(ROWS * COLS, 0.03), ["wiring", "rings", "weight_map"])
    out = tmp_path / "cal"
    proc = subprocess.run([SATLAB, "calibrate", str(path), "-o", str(out), "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: test-bank: wiring: fc ring (0, 3)")
    assert "safe state" in proc.stderr and not out.exists()


def test_calibrate_command_writes_a_folder_a_rig_file_can_name(tmp_path):
    out = tmp_path / "cal"
    proc = subprocess.run([SATLAB, "calibrate", str(TWO_LAYER_RIG), "-o", str(out), "--quiet",
                           "--only", "rings", "--temperature-K", "296.5"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    cal = load_calibration(out)
    assert cal.meta.rig == "mrr-bench-sim" and cal.meta.temperature_K == 296.5
    assert set(cal.meta.steps) == {"rings", "weight_map"}
    assert cal.meta.instruments["heaters_fc2"].startswith("simulated MRR heater source")
    for name in ("rings.png", "weight_map.png", "summary.png"):
        assert (out / name).stat().st_size > 1000
    again = subprocess.run([SATLAB, "calibrate", str(TWO_LAYER_RIG), "-o", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "not an empty folder" in again.stderr


def test_a_twin_from_calibration_matches_another_chip_better_than_the_preset(tmp_path):
    rng = np.random.default_rng(11)
    spec, resonance_W, _ = hidden_bank(rng, noise_W=1e-6)
    path = write_yaml(tmp_path / "rig.yaml", spec)
    rig, _, results = open_calibrated(path, resonance_W, ["rings", "crosstalk", "weight_map"])
    write_calibration(tmp_path / "cal", spec["name"], dict(rig.identities), results)
    rig.__exit__(None)
    spec["calibration"] = "cal"
    calibrated = write_yaml(tmp_path / "calibrated.yaml", spec)
    probe = rng.uniform(0, TOP_MA / 1000 * 0.8, (5, ROWS * COLS))
    errors = {}
    for name, p in (("preset", path), ("calibrated", calibrated)):
        rig_spec = load_rig_file(p)
        with Rig(rig_spec, p) as rig:
            model = rig.resources["chip"].model
            model.set_fabrication_nm(torch.as_tensor(-resonance_W * 100).reshape(ROWS, COLS))
            backend = system_for(rig_spec, p).build_layers(rig)[0]
            eye = torch.eye(COLS, dtype=torch.float64)
            errors[name] = max(float((backend.twin(eye, torch.as_tensor(c)) -
                                      torch.from_numpy(backend.query(eye, c))).abs().max()) for c in probe)
    assert errors["calibrated"] < 0.02 < errors["preset"] / 5


def test_a_corrupt_or_foreign_calibration_is_one_line_before_anything_opens(tmp_path):
    spec = bank_rig()
    spec["calibration"] = "cal"
    path = write_yaml(tmp_path / "rig.yaml", spec)
    with pytest.raises(ConfigError, match="not a calibration folder"):
        load_rig_file(path)
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "calibration.yaml").write_text("satlab_calibration: 1\nrig: x\n")
    proc = subprocess.run([SATLAB, "rig", "check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "calibration.yaml" in proc.stderr


def test_an_interrupted_calibration_leaves_no_loadable_folder(tmp_path):
    from satlab.calibration.store import StepResult

    def broken_plot(path: Path) -> None:
        raise KeyboardInterrupt

    step = StepResult("rings", {}, {"x": np.zeros(3)}, plot=broken_plot)
    with pytest.raises(KeyboardInterrupt):
        write_calibration(tmp_path / "cal", "r", {}, [step])
    assert list(tmp_path.iterdir()) == []


def test_a_calibration_of_other_instruments_warns_or_is_refused_with_strict(tmp_path):
    from satlab.calibration.store import StepResult, check_calibration

    step = StepResult("rings", {}, {"x": np.zeros(3)})
    cal = load_calibration(write_calibration(tmp_path / "cal", "bench-a",
                                             {"heaters": "Qontrol Q8iv SN 12"}, [step]))
    warnings: list[str] = []
    check_calibration(cal, "bench-a", {"heaters": "Qontrol Q8iv SN 12"}, 30, False, warnings.append)
    assert warnings == []
    check_calibration(cal, "bench-a", {"heaters": "Qontrol Q8iv SN 40"}, 30, False, warnings.append)
    assert len(warnings) == 1 and "instruments.heaters: measured on 'Qontrol Q8iv SN 12'" in warnings[0]
    with pytest.raises(ConfigError, match=r"created: 0\.0 days old, older than -1 days \(--strict\)"):
        check_calibration(cal, "bench-a", {}, -1, True, print)


def test_trained_weights_deploy_onto_a_rig_and_evaluate_untrained(tmp_path):
    from conftest import tiny_config

    trained = write_yaml(tmp_path / "train.yaml", {
        **tiny_config(TWO_LAYER_RIG, methods=["plain"]), "estimator": {"name": "twin_autograd"}})
    proc = subprocess.run([SATLAB, "train", str(trained), "--quiet", "--run-dir", str(tmp_path / "a")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    weights = torch.load(tmp_path / "a" / "plain" / "weights.pt", weights_only=True)
    assert weights["layers"]["fc2"].shape == (16, 32) and weights["layers"]["fc3"].shape == (10, 16)
    deployed = tiny_config(TWO_LAYER_RIG, methods=["weights"])
    deployed["model"]["init_from"] = str(tmp_path / "a")
    path = write_yaml(tmp_path / "deploy.yaml", deployed)
    proc = subprocess.run([SATLAB, "train", str(path), "--quiet", "--run-dir", str(tmp_path / "b")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    import json

    before = json.loads((tmp_path / "a" / "plain" / "summary.json").read_text())
    after = json.loads((tmp_path / "b" / "weights" / "summary.json").read_text())
    # the same chip, its exact twin: the weights come back as they were trained
    assert after["rig_queries"] < 100 and after["deployed_from"].endswith("weights.pt")
    assert abs(after["test_accuracy"] - before["test_accuracy"]) <= 0.04
    deployed["model"]["conv_channels"] = [4]
    other = write_yaml(tmp_path / "other.yaml", deployed)
    proc = subprocess.run([SATLAB, "train", str(other), "--quiet", "--run-dir", str(tmp_path / "d")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "model.conv_channels: [4], but" in proc.stderr
    assert not (tmp_path / "d").exists()
    deployed["model"]["init_from"] = str(tmp_path / "nowhere")
    bad = write_yaml(tmp_path / "bad.yaml", deployed)
    proc = subprocess.run([SATLAB, "train", str(bad), "--quiet", "--run-dir", str(tmp_path / "c")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "model.init_from: no weights.pt" in proc.stderr
    assert not (tmp_path / "c").exists()


def test_a_bank_calibrates_through_the_real_q8iv_driver_with_its_wire_time(tmp_path):
    rig = yaml.safe_load((TWO_LAYER_RIG.parent / "mrr-q8iv-sim.yaml").read_text())
    options = rig["resources"]["chip"]["options"]
    for pacing in ("baud_rate", "reply_latency_s", "latency_timer_s"):  # unpaced: a test's time
        options.pop(pacing)
    path = write_yaml(tmp_path / "rig.yaml", rig)
    proc = subprocess.run([SATLAB, "calibrate", str(path), "-o", str(tmp_path / "cal"), "--quiet",
                           "--only", "rings"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    cal = load_calibration(tmp_path / "cal")
    assert cal.meta.instruments["heaters"].startswith("Q8iv")
    wire = cal.meta.wire["heaters"]
    # every sweep point is a write; the four readings with all heaters off need none
    assert wire["writes"] >= cal.meta.steps["rings"].queries - 4 and wire["ms_per_write"] > 0
    assert "heaters: wire" in proc.stdout
    # the chip's own resonances (paper_system1: current tuning, 0.1 nm/mA) come back
    from satlab.simulators.mrr.bank import bank_model

    truth = -bank_model(10, 3, "paper_system1", 11).fabrication_nm.flatten().numpy() / 100
    arrays = cal.arrays("rings")
    assert cal.summary("rings")["fc"]["tuning"] == "current"
    ok = arrays["fc.status"] == 0
    assert ok.sum() >= 10
    assert np.abs(arrays["fc.center"][ok] - truth[ok]).max() < 5e-5  # A; the lines are 1.5 mA wide


def test_a_power_budget_that_cannot_hold_one_ring_is_refused_before_anything_opens(tmp_path):
    spec = bank_rig(limits={"max_current": 0.024, "max_total_power": 0.1, "heater_resistance_ohm": 500})
    path = write_yaml(tmp_path / "rig.yaml", spec)
    proc = subprocess.run([SATLAB, "calibrate", str(path), "-o", str(tmp_path / "cal")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "instruments.heaters.limits.max_total_power: 0.1 W cannot hold one ring" in proc.stderr
    assert "rig:" not in proc.stdout  # nothing opened


def test_sweeps_that_are_not_one_dip_are_classified_not_fitted():
    from satlab.calibration.lorentz import lorentz_dip
    from satlab.calibration.ring_fit import OK, SATURATED, TWO_RESONANCES, fit_dip

    x = np.linspace(0, 0.07, 97)
    one = lorentz_dip(x, 0.03, 0.0015, 1.9, 1.0)
    assert fit_dip(x, one, 1e-4).status == OK
    two = one - 1.9 + lorentz_dip(x, 0.05, 0.0015, 1.9, 1.0)  # a second order in range
    assert fit_dip(x, two, 1e-4).status == TWO_RESONANCES
    clipped = np.maximum(one, -0.4)  # a detector whose range ends above the dip's bottom
    assert fit_dip(x, clipped, 1e-4).status == SATURATED
    # a coarse ADC repeats its lowest step around a round bottom: still one dip
    lsb = 2 / 2**7
    dense = np.linspace(0.027, 0.033, 16)
    x2 = np.concatenate([x, dense])
    quantised = np.round(lorentz_dip(x2, 0.03, 0.0015, 1.9, 1.0) / lsb) * lsb
    fit = fit_dip(x2, quantised, 1e-4)
    assert fit.status == OK and abs(fit.center - 0.03) < 1e-4
    # readings dithering across the half level are not a second dip
    rng = np.random.default_rng(0)
    noisy = one + rng.normal(0, 0.01, one.shape)
    assert fit_dip(x, noisy, 0.01).status == OK
