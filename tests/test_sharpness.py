"""Sharpness in control space: Hessian probes against explicit Hessians, the twin path
against the rig path, and the bench-measured rise against the twin's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TWO_LAYER_RIG, bank_rig, tiny_config, write_yaml

from satlab.config import load_config
from satlab.data import load_dataset
from satlab.optim import hutchinson_trace, max_loss_in_ball, top_hessian_eigenvalue
from satlab.rig import Rig
from satlab.sharpness import bench_sharpness, control_sharpness
from satlab.training import build_trainee


def cubic_problem(spectrum: list[float], seed: int = 0):
    """Two parameter tensors x = (a, b) and f = x^T A x / 2 + sum(c x^3) / 6 with A's
    eigenvalues ``spectrum``; its Hessian at x is A + diag(c x), written out."""
    n = len(spectrum)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    a_mat = q @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ q.T
    c = 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    params = [x[:3].clone(), x[3:].clone()]  # plain tensors: the probes must make them require grad

    def f(z: torch.Tensor) -> torch.Tensor:
        return 0.5 * z @ a_mat @ z + (c * z**3).sum() / 6

    return params, lambda: f(torch.cat(params)), f, a_mat + torch.diag(c * x)


@pytest.mark.parametrize("spectrum", [[-3.0, -1.0, 0.5, 1.0, 2.0, 4.0, 6.0, 10.0],
                                      [-10.0, -6.0, -1.0, 0.5, 1.0, 2.0, 4.0, 5.0]])
def test_power_iteration_finds_the_largest_magnitude_eigenvalue_of_an_explicit_hessian(spectrum):
    params, loss, f, hessian = cubic_problem(spectrum)
    auto = torch.autograd.functional.hessian(f, torch.cat(params))
    assert torch.allclose(auto, hessian, rtol=1e-12, atol=1e-12)  # the written-out Hessian is the true one
    eig = np.linalg.eigvalsh(hessian.numpy())
    expected = eig[np.argmax(np.abs(eig))]
    found = top_hessian_eigenvalue(loss, params, iters=500, tol=1e-12)
    assert found == pytest.approx(expected, rel=1e-4)
    assert np.sign(found) == np.sign(spectrum[np.argmax(np.abs(spectrum))])
    assert not any(p.requires_grad for p in params)


@pytest.mark.parametrize("seed", range(5))
def test_hutchinson_trace_is_within_three_standard_errors_of_the_explicit_trace(seed):
    params, loss, _, hessian = cubic_problem([-3.0, -1.0, 0.5, 1.0, 2.0, 4.0, 6.0, 10.0])
    trace, stderr = hutchinson_trace(loss, params, samples=20, seed=seed)
    assert stderr > 0  # off-diagonal entries make v^T H v vary with v
    assert abs(trace - float(hessian.trace())) < 3 * stderr


def test_hutchinson_standard_error_has_the_rademacher_variance():
    # Var(v^T H v) = 2 sum_{i != j} H_ij^2 for Rademacher v: the stderr must be sd / sqrt(n).
    params, loss, _, hessian = cubic_problem([-3.0, -1.0, 0.5, 1.0, 2.0, 4.0, 6.0, 10.0])
    off = hessian - torch.diag(torch.diag(hessian))
    sd = float((2 * off.pow(2).sum()).sqrt())
    samples = 2000
    _, stderr = hutchinson_trace(loss, params, samples=samples, seed=1)
    assert stderr * samples**0.5 == pytest.approx(sd, rel=0.1)


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    x = torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=torch.float64)
    a = torch.tensor([1.0, -2.0, 5.0, 0.5], dtype=torch.float64)

    def loss() -> torch.Tensor:
        return (a * x**2).sum() / 2 + (x**4).sum()

    trace, stderr = hutchinson_trace(loss, [x], samples=10, seed=3)
    assert stderr == 0.0
    assert trace == pytest.approx(float((a + 12 * x**2).sum()), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        hutchinson_trace(loss, [x], samples=1)


@pytest.fixture(scope="module")
def digits():
    """Five real digits per class, and the labels."""
    data = load_dataset("offline", None, 5, 1)
    return data.train_x, data.train_y


def trainee_model(tmp_path, rig_path, physical, **model):
    cfg = tiny_config(rig_path)
    cfg["model"].update(physical=physical, **model)
    return load_config(write_yaml(tmp_path / "cfg.yaml", cfg))


@pytest.fixture
def one_layer(tmp_path):
    """A 4 -> 10 model on a noise-free one-bank rig (40 heater currents), in train mode."""
    cfg = trainee_model(tmp_path, write_yaml(tmp_path / "rig.yaml", bank_rig(rows=10, cols=4)), [4, 10])
    with Rig.from_file(cfg.rig) as rig:
        yield build_trainee(cfg, rig, "plain").model


@pytest.fixture
def two_layer(tmp_path):
    """The 32 -> 16 -> 10 model on the shipped two-bank simulated rig, logits scaled, in train mode."""
    cfg = trainee_model(tmp_path, TWO_LAYER_RIG, [32, 16, 10], readout_scale=10.0)
    with Rig.from_file(cfg.rig) as rig:
        yield build_trainee(cfg, rig, "plain").model


def test_the_twin_forward_equals_the_rig_forward_on_a_noise_free_rig(two_layer, digits):
    x, _ = digits
    two_layer.eval()
    before = [layer.backend.queries for layer in two_layer.physical]
    with torch.no_grad():
        rig_logits = two_layer(x)
        twin = two_layer(x, twin=True)
    assert [layer.backend.queries - b for layer, b in zip(two_layer.physical, before)] == [1, 1]
    assert torch.equal(twin, rig_logits)
    assert twin.dtype == rig_logits.dtype and twin.shape == (len(x), 10)


def explicit_control_hessian(model, x, y) -> torch.Tensor:
    """d²L/dI² of the twin's loss of a one-layer model, entry by entry."""
    (layer,), (after,) = model.physical, model.between

    def loss(currents: torch.Tensor) -> torch.Tensor:
        h = model.front(x)
        return F.cross_entropy(after(layer.backend.twin(h, currents).to(h.dtype)), y)

    return torch.autograd.functional.hessian(loss, layer.controls.detach().clone())


def test_control_sharpness_matches_the_explicit_hessian_of_the_twin_loss(one_layer, digits):
    x, y = digits
    one_layer.eval()
    hessian = explicit_control_hessian(one_layer, x, y)
    eig = np.linalg.eigvalsh(hessian.numpy())
    top = eig[np.argmax(np.abs(eig))]
    one_layer.train()
    bn = one_layer.front[-2]
    stats = bn.running_mean.clone()
    controls = one_layer.physical[0].controls.detach().clone()
    queries = one_layer.physical[0].backend.queries
    out = control_sharpness(one_layer, x, y, hessian_iters=100, trace_samples=20)
    assert set(out) == {"hessian_top", "hessian_trace", "hessian_trace_stderr"}
    assert out["hessian_top"] == pytest.approx(top, rel=1e-3)
    assert out["hessian_trace_stderr"] > 0
    assert abs(out["hessian_trace"] - float(hessian.trace())) < 3 * out["hessian_trace_stderr"]
    # evaluated as deployed: BatchNorm's running statistics neither used nor updated, mode restored
    assert one_layer.training and bn.training
    assert torch.equal(bn.running_mean, stats)
    assert torch.equal(one_layer.physical[0].controls, controls)
    assert one_layer.physical[0].backend.queries == queries  # the Hessian never touches the rig


def twin_rise(model, x, y, rho: float, steps: int) -> tuple[float, float]:
    """(loss, rise) of the twin's loss in the rho-ball by exact-gradient ascent."""
    def loss() -> torch.Tensor:
        return F.cross_entropy(model(x, twin=True), y)

    def project() -> None:
        for layer in model.physical:
            layer.project(margin=layer.estimator.step)

    base, best = max_loss_in_ball(loss, model.control_parameters(), rho, steps, project)
    return base, best - base


@pytest.mark.parametrize("seed", range(4))
def test_bench_rise_is_close_to_the_twin_rise_and_grows_with_rho(one_layer, digits, seed):
    x, y = digits
    one_layer.eval()
    controls = one_layer.physical[0].controls.detach().clone()
    estimator = one_layer.physical[0].estimator
    rises = []
    for rho in (3e-4, 1e-3):
        loss0, worst, _ = bench_sharpness(one_layer, x, y, rho, steps=3, directions=8, seed=seed)
        base, twin = twin_rise(one_layer, x, y, rho, steps=3)
        rise = worst - loss0
        assert loss0 == pytest.approx(base, abs=1e-6)  # noise-free rig: same loss at the centre
        assert 0.3 * twin <= rise <= 1.1 * twin  # random directions find less than the gradient
        rises.append(rise)
        assert torch.equal(one_layer.physical[0].controls, controls)
        assert one_layer.physical[0].estimator is estimator
    assert 0 < rises[0] < rises[1]


def test_bench_sharpness_costs_forwards_and_two_queries_per_direction_in_every_layer(two_layer, digits):
    x, y = digits
    steps, directions = 2, 3
    backends = [layer.backend for layer in two_layer.physical]
    before = [b.queries for b in backends]
    controls = [c.detach().clone() for c in two_layer.control_parameters()]
    loss0, worst, queries = bench_sharpness(two_layer, x, y, 1e-3, steps, directions, seed=0)
    per_layer = (steps + 1) + steps * 2 * directions  # a forward at each point, SPSA at all but the last
    assert [b.queries - q for b, q in zip(backends, before)] == [per_layer, per_layer]
    assert queries == 2 * per_layer
    assert worst > loss0
    assert all(torch.equal(c, w) for c, w in zip(two_layer.control_parameters(), controls))
    assert two_layer.training  # the mode it was in


def test_bench_sharpness_makes_room_for_probes_at_a_bound_and_restores_the_controls(one_layer, digits):
    x, y = digits
    layer = one_layer.physical[0]
    with torch.no_grad():
        layer.controls[:5] = layer.backend.controls.lower[:5]  # currents at 0 A: a -step probe is illegal
    controls = layer.controls.detach().clone()
    loss0, worst, _ = bench_sharpness(one_layer, x, y, 1e-3, steps=2, directions=4)
    assert worst > loss0
    assert torch.equal(layer.controls, controls)


def test_control_sharpness_reports_the_bench_rise_when_asked(one_layer, digits):
    x, y = digits
    out = control_sharpness(one_layer, x, y, bench_rho=1e-3, bench_steps=2, bench_directions=4)
    assert out["bench_queries"] == (2 + 1) + 2 * 2 * 4
    assert out["bench_rise"] > 0
    one_layer.eval()
    with torch.no_grad():
        assert out["bench_loss"] == pytest.approx(float(F.cross_entropy(one_layer(x), y)), abs=1e-6)
