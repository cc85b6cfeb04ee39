"""Physics of the simulated MRR bank, measured through the simulated instruments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bank_rig
from hypothesis import given, settings
from hypothesis import strategies as st
from satlab.simulators.mrr.bank import MrrBankModel, preset_params

from satlab.calibration import fit_lorentzian, sweep_ring
from satlab.rig import Rig
from satlab.rigfile import RigSpec


def open_rig(**kwargs) -> Rig:
    return Rig(RigSpec.model_validate(bank_rig(**kwargs)))


def test_current_sweep_recovers_paper_resonance_width():
    # paper_system1: linear tuning 100 nm/A, FWHM 0.3 nm -> gamma = 0.15 nm / 100 nm/A = 1.5 mA
    with open_rig(rows=2, cols=3, bench_overrides={"fabrication_std_nm": 0.0}) as rig:
        # the paper's drift is a current offset -0.08*dT (paper unit = 10 mA): dip at I = 8 mA
        rig.set_imperfection("drift_K", 10.0)
        currents = np.linspace(0, 0.016, 161)
        w = sweep_ring(rig, "heaters", "inputs", "pd", (1, 2), currents)
    fit = fit_lorentzian(currents, w)
    assert fit.hwhm == pytest.approx(1.5e-3, rel=1e-3)
    assert fit.center == pytest.approx(8e-3, rel=1e-3)
    assert fit.depth == pytest.approx(2.0, rel=1e-3)  # perfect extinction: w from +1 to -1


def test_power_sweep_recovers_tait_width_and_extinction():
    p = preset_params("tait_bank")
    with open_rig(rows=1, cols=4, preset="tait_bank", limits={"max_current": 0.012},
                  bench_overrides={"fabrication_std_nm": 0.0, "detector_noise_W": 0.0,
                                   "adc_bits": None, "crosstalk": []}) as rig:
        rig.set_imperfection("drift_K", -5.0)  # +0.08 nm/K * -5 K = -0.4 nm: dip at P = 0.4 nm / (0.1 nm/mW)
        currents = np.sqrt(np.linspace(0, 10e-3, 201) / p.heater_resistance_ohm)
        w = sweep_ring(rig, "heaters", "inputs", "pd", (0, 1), currents)
    fit = fit_lorentzian(currents**2 * p.heater_resistance_ohm, w)
    assert fit.center == pytest.approx(4e-3, rel=1e-3)
    assert fit.hwhm == pytest.approx(0.15 / 100.0, rel=1e-3)  # 0.15 nm / (100 nm/W)
    # finite extinction: on resonance w = t_min - d_max = 0.03 - 0.92
    assert fit.baseline - fit.depth == pytest.approx(0.03 - 0.92, abs=1e-3)


@pytest.mark.parametrize("coupling", [0.05, -0.03])
def test_crosstalk_moves_neighbour_with_configured_sign_and_size(coupling):
    r = 500.0
    overrides = {"fabrication_std_nm": 0.0, "detector_noise_W": 0.0, "adc_bits": None,
                 "crosstalk": [coupling]}
    powers = np.linspace(0, 10e-3, 201)
    neighbour_power = 20e-3
    base = np.zeros(4)
    base[2] = np.sqrt(neighbour_power / r)  # heater of ring (0, 2), next to ring (0, 1)
    with open_rig(rows=1, cols=4, preset="tait_bank", limits={"max_current": 0.012},
                  bench_overrides=overrides) as rig:
        rig.set_imperfection("drift_K", -5.0)
        alone = fit_lorentzian(powers, sweep_ring(rig, "heaters", "inputs", "pd", (0, 1),
                                                  np.sqrt(powers / r)))
        heated = fit_lorentzian(powers, sweep_ring(rig, "heaters", "inputs", "pd", (0, 1),
                                                   np.sqrt(powers / r), base=base))
    # The neighbour's heat does part of the tuning: the dip needs coupling*P_j less own power.
    assert heated.center - alone.center == pytest.approx(-coupling * neighbour_power, rel=1e-3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 0.012), min_size=6, max_size=6), st.floats(-3, 3))
def test_weights_stay_in_extinction_limited_range(currents, drift):
    model = MrrBankModel(2, 3, preset_params("tait_bank"), seed=5)
    w = model.weights(torch.tensor(currents, dtype=torch.float64), drift)
    low, high = model.params.weight_range
    assert low == pytest.approx(0.03 - 0.92)
    assert bool((w >= low - 1e-12).all()) and bool((w <= high + 1e-12).all())


def test_simulated_detectors_see_what_the_source_writes():
    with open_rig(rows=2, cols=3) as rig:
        rig.load_inputs("inputs", np.ones((1, 3)))
        before = rig.read("pd").copy()
        rig.set_currents("heaters", np.full(6, 0.01))
        after = rig.read("pd")
    # rings start near resonance (w ~ -1 per channel); heating moves them off (w -> +1)
    assert (before < 0).all() and (after > before).all()


def test_detector_noise_and_adc_are_seeded_and_quantised():
    def readings(noise_seed):
        with open_rig(rows=2, cols=3, preset="tait_bank", limits={"max_current": 0.012},
                      bench_overrides={"noise_seed": noise_seed}) as rig:
            rig.load_inputs("inputs", np.full((4, 3), 0.5))
            return rig.read("pd")
    a, b, c = readings(1), readings(1), readings(2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    lsb = 2 * 1e-3 * 3 / 2**12  # full scale = input full scale * channels, 12 bits
    assert np.allclose(a / lsb, np.round(a / lsb))


def test_detector_averaging_reduces_noise_by_sqrt_n():
    def spread(averages):
        data = bank_rig(rows=4, cols=3, preset="tait_bank", limits={"max_current": 0.012},
                        bench_overrides={"adc_bits": None, "detector_noise_W": 1e-5})
        data["instruments"]["pd"]["options"] = {"averages": averages}
        with Rig(RigSpec.model_validate(data)) as rig:
            rig.load_inputs("inputs", np.full((500, 3), 0.5))
            reading = rig.read("pd")
        return float((reading - reading.mean(axis=0)).std())
    single, four = spread(1), spread(4)
    assert single == pytest.approx(1e-5, rel=0.05)
    assert four == pytest.approx(single / 2, rel=0.08)


def test_shot_noise_follows_photodiode_power():
    q, bandwidth = 1.602176634e-19, 1e9

    def spread(level):
        data = bank_rig(rows=2, cols=3, preset="tait_bank", limits={"max_current": 0.012},
                        bench_overrides={"adc_bits": None, "detector_noise_W": 0.0,
                                         "fabrication_std_nm": 0.0, "crosstalk": []})
        with Rig(RigSpec.model_validate(data)) as rig:
            rig.set_currents("heaters", np.full(6, 0.012))  # 36 nm off resonance: T_through ~ 1
            rig.load_inputs("inputs", np.full((4000, 3), level))
            return float(rig.read("pd")[:, 0].std())
    # both photodiodes together receive all 3 channels: P = 3 * level * 1 mW
    for level in (1.0, 0.25):
        expected = (2 * q * 3 * level * 1e-3 * bandwidth / 1.0) ** 0.5
        assert spread(level) == pytest.approx(expected, rel=0.06)
