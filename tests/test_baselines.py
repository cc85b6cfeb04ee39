"""The baselines beside SAT: noise on weights, hardware-aware pruning, SAM on weights deployed
through the weight-to-control map; each step checked against a hand computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SATLAB, TWO_LAYER_RIG, bank_rig, tiny_config, train_process, write_yaml
from torch import nn

from satlab.config import TrainingConfig
from satlab.estimators import PhysicsAware, TwinAutograd
from satlab.physical_layer import PhysicalLayer
from satlab.rig import Rig
from satlab.rigfile import RigSpec
from satlab.sat import SatController
from satlab.systems.mrr import MrrLayerBackend

D2NN_RIG = Path(__file__).resolve().parents[1] / "satlab" / "configs" / "d2nn-sim.yaml"
ESTIMATORS = {"twin_autograd": TwinAutograd, "physics_aware": PhysicsAware}


def twin_weights_by_hand(backend, currents):
    """W (out, in) from the twin: its output for the identity is W^T."""
    return backend.twin(torch.eye(backend.in_features, dtype=torch.float64), currents).T


def one_layer(rig, spec, estimator, seed=0):
    backend = MrrLayerBackend(rig, spec.system.layers[0])
    start = backend.initial_controls(torch.Generator().manual_seed(seed), 0.5)
    return backend, PhysicalLayer(backend, estimator, start)


def batch(rows, cols, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(6, cols, generator=gen, dtype=torch.float64),
            torch.randint(0, rows, (6,), generator=gen))


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_noise_on_weights_takes_the_gradient_at_noisy_weights_and_updates_the_clean_controls(estimator):
    spec = RigSpec.model_validate(bank_rig(rows=3, cols=4))
    lr = 1e-7
    with Rig(spec) as rig:
        backend, layer = one_layer(rig, spec, ESTIMATORS[estimator]())
        clean = layer.controls.detach().clone()
        x, y = batch(3, 4)
        x.requires_grad_(True)
        noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.2

        # by hand: the loss at W + N, G = dL/d(output) there, then the controls' gradient
        # at the clean currents with that G, and the inputs' through W + N
        w = twin_weights_by_hand(backend, clean).detach()
        out = (x.detach() @ (w + noise).T).requires_grad_(True)
        loss = nn.functional.cross_entropy(out, y)
        (g,) = torch.autograd.grad(loss, out)
        currents = clean.clone().requires_grad_(True)
        (grad_c,) = torch.autograd.grad((g * (x.detach() @ twin_weights_by_hand(backend, currents).T)).sum(),
                                        currents)

        controller = SatController(nn.Sequential(layer), nn.functional.cross_entropy,
                                   torch.optim.SGD([layer.controls], lr=lr), "noise", noise_on="weights")
        got, _ = controller.step(x, y, noise=[noise])
        assert float(got) == pytest.approx(loss.item(), rel=1e-10)
        assert torch.allclose(layer.controls.detach(), clean - lr * grad_c, rtol=1e-12, atol=0)
        assert not torch.equal(layer.controls.detach(), clean)
        assert torch.allclose(x.grad, g @ (w + noise), rtol=1e-9, atol=1e-12)
        # nothing of the noise stays: the next forward is the clean weights' at the new currents
        assert layer.weight_noise is None
        after = twin_weights_by_hand(backend, layer.controls.detach())
        assert torch.allclose(layer(x.detach()), x.detach() @ after.T, rtol=1e-9, atol=1e-12)
        with pytest.raises(ValueError, match="shape"):
            controller.step(x, y, noise=[torch.zeros(12, dtype=torch.float64)])
        assert layer.weight_noise is None


def test_the_weight_noise_of_a_step_depends_on_the_seed_and_the_step_only():
    from satlab.training import control_noise

    spec = RigSpec.model_validate(bank_rig(rows=3, cols=4))
    with Rig(spec) as rig:
        _, layer = one_layer(rig, spec, TwinAutograd())
        t = TrainingConfig(methods=["noise"], noise_std=0.1, noise_on="weights", seed=4)
        (a,), (b,), (c,) = (control_noise(t, 7, [layer]), control_noise(t, 7, [layer]),
                            control_noise(t, 8, [layer]))
    assert a.shape == (3, 4) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0.01 < float(a.std()) < 1.0  # of noise_std's order, not the controls' unit


def explicit_penalty(backend, currents, create_graph=False):
    """Sum over currents k of ||dw/dI_k||, from the full Jacobian of the flattened weights."""
    jac = torch.autograd.functional.jacobian(lambda c: twin_weights_by_hand(backend, c).flatten(),
                                             currents, create_graph=create_graph)
    return jac, jac.norm(dim=0).sum()


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_pruning_adds_the_autograd_gradient_of_the_weight_sensitivity_to_the_estimated_one(estimator):
    # thermal crosstalk: each weight depends on its neighbours' currents too
    spec = RigSpec.model_validate(bank_rig(rows=3, cols=4, bench_overrides={"crosstalk": [0.05, 0.01]}))
    lr, lam = 1e-9, 1e-3
    with Rig(spec) as rig:
        backend, layer = one_layer(rig, spec, ESTIMATORS[estimator]())
        clean = layer.controls.detach().clone()
        jac, penalty = explicit_penalty(backend, clean)
        assert (jac - torch.diag(torch.diagonal(jac))).abs().max() > 0  # not only diagonal
        assert float(backend.weight_sensitivity(clean)) == pytest.approx(float(penalty), rel=1e-10)

        x, y = batch(3, 4, seed=1)
        currents = clean.clone().requires_grad_(True)
        ce = nn.functional.cross_entropy(backend.twin(x, currents), y)
        (grad_ce,) = torch.autograd.grad(ce, currents)
        currents = clean.clone().requires_grad_(True)
        (grad_pen,) = torch.autograd.grad(explicit_penalty(backend, currents, create_graph=True)[1], currents)
        assert float((lam * grad_pen).norm()) > 0.1 * float(grad_ce.norm())  # both terms count

        controller = SatController(nn.Sequential(layer), nn.functional.cross_entropy,
                                   torch.optim.SGD([layer.controls], lr=lr), "prune", prune_lambda=lam)
        loss, _ = controller.step(x, y)
    assert float(loss) == pytest.approx(ce.item() + lam * float(penalty), rel=1e-10)
    assert torch.allclose(layer.controls.detach(), clean - lr * (grad_ce + lam * grad_pen), rtol=1e-12, atol=0)
    assert not torch.equal(layer.controls.detach(), clean)


def test_weight_space_trains_the_weights_and_scores_them_deployed_on_the_rig(tmp_path):
    from satlab import checkpoint
    from satlab.config import load_config
    from satlab.data import load_offline_mnist
    from satlab.deployment import load_weights
    from satlab.rigfile import load_rig_file
    from satlab.systems import system_for
    from satlab.training import build_trainee, evaluate_trainee

    cfg_data = tiny_config(TWO_LAYER_RIG, methods=["sat"], space="weights", lr_controls=0.01, rho=0.05)
    cfg_data["estimator"] = {"name": "twin_autograd"}
    cfg_path = write_yaml(tmp_path / "w.yaml", cfg_data)
    run = tmp_path / "run"
    p = train_process(cfg_path, "--run-dir", run)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err

    trained = torch.load(run / "sat" / "weights.pt", weights_only=True)
    state = checkpoint.load(run / "sat" / "checkpoint.pt")
    names = ("fc2", "fc3")
    for i, name in enumerate(names):  # the trained parameters are the weights themselves
        w = trained["layers"][name]
        assert torch.equal(w.flatten(), state["model"][f"physical.{i}.controls"])
        assert float(w.abs().max()) <= 1.0

    # the same weights deployed by hand on a controls-space model of the same rig
    cfg = load_config(cfg_path)
    cfg.training.space = "controls"
    spec = load_rig_file(cfg.rig)
    weights = load_weights(run / "sat", cfg_path, cfg.model, system_for(spec, cfg.rig).layer_shapes())
    data = load_offline_mnist(12, 5)
    with Rig(spec, cfg.rig) as rig:
        tr = build_trainee(cfg, rig, "weights", weights)
        for layer, name in zip(tr.model.physical, names, strict=True):
            backend, currents = layer.backend, layer.controls.detach()
            assert float(currents.min()) >= 0 and float(currents.max()) <= 0.024
            shown = twin_weights_by_hand(backend, currents).detach()
            target = trained["layers"][name]
            resonance = (-backend.twin.model.fabrication_nm / 100.0).clamp(min=0)  # paper map, A
            lowest = twin_weights_by_hand(backend, resonance.flatten()).detach()
            highest = twin_weights_by_hand(backend, backend.controls.upper).detach()
            reachable = (target > lowest + 1e-6) & (target < highest - 1e-6)
            assert float(reachable.double().mean()) > 0.8
            assert float((shown - target)[reachable].abs().max()) < 1e-3
        deployed = evaluate_trainee(cfg, tr, rig, data, [0.0, 1.0, 2.0], progress=False)
    summary = json.loads((run / "sat" / "summary.json").read_text())
    assert summary["test_accuracy"] == deployed["test_accuracy"] > 0.1
    assert summary["drift_sweep"] == deployed["drift_sweep"]

    # satlab evaluate rebuilds the run's model and scores it deployed, as training did
    import subprocess

    out = subprocess.run([SATLAB, "evaluate", str(run), "--drift", "0:2:3", "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    again = json.loads((run / "sat" / "summary.json").read_text())
    assert again["drift_sweep"] == deployed["drift_sweep"]


def run_cli(capsys, *args) -> tuple[int, str]:
    from satlab.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def d2nn_config(**training) -> dict:
    return {"name": "d2nn", "rig": str(D2NN_RIG), "data": {"train_per_class": 2, "test_per_class": 1},
            "model": {"front": "image", "physical": [4096, 10], "readout_scale": 10},
            "estimator": {"name": "physics_aware"}, "training": training}


BAD = {
    "noise on weights of a D2NN": (d2nn_config(methods=["noise"], noise_std=0.1, noise_on="weights"),
                                   "training.noise_on", "no weights"),
    "prune on a D2NN": (d2nn_config(methods=["prune"], prune_lambda=1.0), "training.methods", "no weights"),
    "weight space on a D2NN": (d2nn_config(methods=["plain"], space="weights"), "training.space", "no weights"),
    "prune without prune_lambda": (tiny_config(TWO_LAYER_RIG, methods=["prune"]), "training",
                                   "prune_lambda > 0"),
    "weight space with finite differences": (
        {**tiny_config(TWO_LAYER_RIG, methods=["sat"], space="weights"),
         "estimator": {"name": "finite_difference"}}, "estimator.name", "expected twin_autograd"),
    "weight space with prune": (
        {**tiny_config(TWO_LAYER_RIG, methods=["prune"], prune_lambda=1e-6, space="weights"),
         "estimator": {"name": "twin_autograd"}}, "training.methods", "space: controls"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_baseline_the_rig_cannot_run_is_refused_before_it_opens(case, tmp_path, capsys):
    data, field, expected = BAD[case]
    path = write_yaml(tmp_path / "cfg.yaml", data)
    code, err = run_cli(capsys, "train", path, "--run-dir", tmp_path / "run", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: {field}: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "run").exists()
