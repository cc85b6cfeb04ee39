"""The SAT step: hand-computed updates on a quadratic, and projection on a real rig layer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import bank_rig
from torch import nn

from satlab.estimators import FiniteDifference
from satlab.optim import SAM
from satlab.physical_layer import PhysicalLayer
from satlab.rig import Rig
from satlab.rigfile import RigSpec
from satlab.sat import SatController
from satlab.systems.mrr import MrrLayerBackend

A = torch.tensor([[3.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
B = torch.tensor([1.0, -2.0], dtype=torch.float64)


class Quadratic(nn.Module):
    def __init__(self, theta):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float64))

    def forward(self, x):
        return self.theta


def quad_loss(theta, _target):
    return 0.5 * theta @ A @ theta - B @ theta


def run_step(adaptive: bool, theta0, rho=0.3, lr=0.1):
    model = Quadratic(theta0)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr)
    SatController(model, quad_loss, opt, "sat").step(torch.zeros(1), torch.zeros(1))
    return model.theta.detach()


def test_sat_step_matches_hand_computation_on_quadratic():
    t = torch.tensor([0.7, -0.4], dtype=torch.float64)
    g = A @ t - B
    eps = 0.3 * g / g.norm()
    expected = t - 0.1 * (A @ (t + eps) - B)
    assert torch.allclose(run_step(False, t.tolist()), expected, atol=1e-12)


def test_adaptive_sat_step_scales_perturbation_per_control():
    t = torch.tensor([0.7, -0.4], dtype=torch.float64)
    g = A @ t - B
    T = t.abs()
    eps = 0.3 * T**2 * g / (T * g).norm()
    expected = t - 0.1 * (A @ (t + eps) - B)
    assert torch.allclose(run_step(True, t.tolist()), expected, atol=1e-12)


def test_plain_step_is_one_gradient_step():
    model = Quadratic([0.7, -0.4])
    t = model.theta.detach().clone()
    SatController(model, quad_loss, torch.optim.SGD(model.parameters(), lr=0.1), "plain").step(
        torch.zeros(1), torch.zeros(1))
    assert torch.allclose(model.theta.detach(), t - 0.1 * (A @ t - B))


def test_sat_keeps_currents_applicable_with_large_rho_and_lr():
    spec = RigSpec.model_validate(bank_rig(rows=3, cols=4, heater_options={"record": True},
                                           limits={"max_current": 0.006}))
    with Rig(spec) as rig:
        backend = MrrLayerBackend(rig, spec.system.layers[0])
        est = FiniteDifference(step=1e-5)
        layer = PhysicalLayer(backend, est, torch.full((12,), 3e-3))
        model = nn.Sequential(layer)
        opt = SAM([{"params": [layer.controls], "lr": 5e-3}], torch.optim.SGD, rho=2.0)
        ctrl = SatController(model, nn.functional.cross_entropy, opt, "sat")
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(16, 4, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        for _ in range(5):
            ctrl.step(x, y)  # the rig raises RigLimitError on any out-of-range write
        history = np.array(rig.source("heaters").history)
        currents = layer.controls.detach()
    assert history.min() >= 0 and history.max() <= 0.006
    assert bool((currents >= 1e-5).all()) and bool((currents <= 0.006 - 1e-5).all())
    assert bool(((currents == 1e-5) | (currents == 0.006 - 1e-5)).any())  # the big steps hit a bound


def test_projection_keeps_probes_inside_the_power_budget():
    from satlab.estimators import Spsa

    limits = {"max_current": 0.006, "max_total_power": 2e-4, "heater_resistance_ohm": 500.0}
    spec = RigSpec.model_validate(bank_rig(rows=3, cols=4, limits=limits))
    with Rig(spec) as rig:
        backend = MrrLayerBackend(rig, spec.system.layers[0])
        for estimator in (FiniteDifference(step=1e-5), Spsa(step=1e-5, directions=4, seed=0)):
            layer = PhysicalLayer(backend, estimator, torch.full((12,), 3e-3))
            opt = SAM([{"params": [layer.controls], "lr": 1e-3}], torch.optim.SGD, rho=1.0)
            ctrl = SatController(nn.Sequential(layer), nn.functional.cross_entropy, opt, "sat")
            gen = torch.Generator().manual_seed(0)
            x, y = torch.rand(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)
            for _ in range(3):
                ctrl.step(x, y)  # the rig raises on any probe beyond the power limit
            currents = layer.controls.detach()
            assert float(currents.pow(2).sum()) * 500 <= 2e-4
            assert float(currents.min()) >= 1e-5 - 1e-15


def test_initial_currents_reach_their_target_weights_on_the_rising_branch():
    from satlab.systems.mrr import currents_for_weights

    spec = RigSpec.model_validate(bank_rig(rows=16, cols=32, seed=11))  # paper preset: x0 ~ N(0, 0.8 mA)
    with Rig(spec) as rig:
        backend = MrrLayerBackend(rig, spec.system.layers[0])
        target = torch.linspace(-0.5, 0.5, 512, dtype=torch.float64).reshape(16, 32)
        currents = currents_for_weights(backend, target)
        eye = torch.eye(32, dtype=torch.float64)
        reached = backend.twin(eye, currents).T.flatten()
        # the paper map: resonance at I = -x0 where x0 = fabrication offset / (100 nm/A)
        resonance = (-backend.twin.model.fabrication_nm.flatten() / 100.0).clamp(min=0)
        lowest = backend.twin(eye, resonance).T.flatten()  # lowest weight reachable with I >= 0
    target = target.flatten()
    reachable = target >= lowest
    assert bool((resonance > 5e-4).any()) and bool((~reachable).any())  # both cases occur
    assert torch.allclose(reached[reachable], target[reachable], atol=1e-6)
    assert torch.allclose(reached[~reachable], lowest[~reachable], atol=1e-3)  # nearest possible
    assert bool((currents >= resonance - 1e-4).all())  # on the rising branch


def test_noise_method_takes_the_gradient_at_noisy_controls_and_updates_the_clean_ones():
    from satlab.estimators import TwinAutograd

    spec = RigSpec.model_validate(bank_rig(rows=3, cols=4))
    with Rig(spec) as rig:
        backend = MrrLayerBackend(rig, spec.system.layers[0])
        clean = torch.full((12,), 0.01, dtype=torch.float64)
        layer = PhysicalLayer(backend, TwinAutograd(), clean)
        x = torch.rand(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        noise = torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1e-3
        loss_fn = lambda out, _y: out.pow(2).sum()
        # by hand: the twin's gradient at clean + noise, one SGD step from clean
        at = (clean + noise).requires_grad_(True)
        loss_fn(backend.twin(x, at), None).backward()
        controller = SatController(nn.Sequential(layer), loss_fn,
                                   torch.optim.SGD([layer.controls], lr=1e-6), "noise")
        loss, _ = controller.step(x, torch.zeros(5), noise=[noise])
        assert float(loss) == pytest.approx(float(loss_fn(backend.twin(x, clean + noise), None)))
        assert torch.allclose(layer.controls.detach(), clean - 1e-6 * at.grad, rtol=1e-12, atol=0)
        with pytest.raises(ValueError, match="noise vector"):
            controller.step(x, torch.zeros(5))


def test_the_cosine_schedule_decays_both_rates_from_their_values_to_zero():
    from satlab.config import TrainingConfig
    from satlab.training import set_learning_rates

    t = TrainingConfig(lr_controls=1e-4, lr_digital=1e-3, lr_schedule="cosine")
    model = Quadratic([0.1, 0.2])
    opt = torch.optim.SGD([{"params": [model.theta], "name": "controls"},
                           {"params": [nn.Parameter(torch.zeros(1))], "name": "digital"}], lr=1.0)
    for step, factor in ((0, 1.0), (25, 0.5 * (1 + math.cos(math.pi / 4))), (50, 0.5), (100, 0.0)):
        set_learning_rates(t, opt, step, 100)
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-4 * factor, abs=1e-18)
        assert opt.param_groups[1]["lr"] == pytest.approx(1e-3 * factor, abs=1e-18)
    set_learning_rates(TrainingConfig(lr_controls=1e-4), opt, 50, 100)
    assert opt.param_groups[0]["lr"] == 1e-4  # constant: the config's rate at every step
