"""BN freezing, gradient accumulation, m-sharpness, AMP recipes and the sharpness probes."""

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from satlab.optim import (
    SAM,
    WSAM,
    frozen_bn_stats,
    m_sharpness_step,
    max_loss_in_ball,
    sam_train_step,
    top_hessian_eigenvalue,
)

CE = nn.functional.cross_entropy


def _data(n=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.arange(n) % 3


def _mlp(bn=False, momentum=0.1):
    torch.manual_seed(0)
    mid = [nn.BatchNorm1d(8, momentum=momentum)] if bn else []
    return nn.Sequential(nn.Linear(4, 8), *mid, nn.Tanh(), nn.Linear(8, 3))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_stats_after_sam_step_equal_one_forward(momentum):
    x, y = _data()
    model = _mlp(bn=True, momentum=momentum)
    ref = copy.deepcopy(model)
    ref(x)  # one forward pass in train mode at the same (unperturbed) weights
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    sam_train_step(model, CE, (x, y), opt)
    bn, bn_ref = model[1], ref[1]
    assert torch.equal(bn.running_mean, bn_ref.running_mean)
    assert torch.equal(bn.running_var, bn_ref.running_var)
    assert int(bn.num_batches_tracked) == 1 == int(bn_ref.num_batches_tracked)
    assert bn.track_running_stats


def test_bn_frozen_context_is_what_keeps_stats():
    x, _ = _data()
    model = _mlp(bn=True)
    before = model[1].running_mean.clone()
    with frozen_bn_stats(model):
        model(x)
    assert torch.equal(model[1].running_mean, before) and int(model[1].num_batches_tracked) == 0
    model(x)
    assert not torch.equal(model[1].running_mean, before)  # the check above could fail


def test_accumulation_equals_big_batch():
    # mean loss over 12 = sum over 3 chunks of (4/12)*mean loss over chunk: same g and g~.
    x, y = _data()
    m1, m2 = _mlp(), _mlp()
    o1 = SAM(m1.parameters(), torch.optim.SGD, rho=0.2, lr=0.5, momentum=0.9)
    o2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.2, lr=0.5, momentum=0.9)
    for _ in range(3):
        l1, out1 = sam_train_step(m1, CE, (x, y), o1)
        l2, out2 = sam_train_step(m2, CE, (x, y), o2, accumulation_steps=3)
        assert l1.item() == pytest.approx(l2.item(), rel=1e-6)
        assert out1.shape == out2.shape == (12, 3)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(p1, p2, atol=1e-6)
    assert not all(torch.equal(p, q) for p, q in zip(m1.parameters(), _mlp().parameters()))


def test_m_sharpness_matches_manual_per_chunk_perturbation():
    # Independent computation: for each half, eps_i = rho*g_i/|g_i|, g~_i at w+eps_i on that half;
    # SGD step with the mean of g~_i.
    x, y = _data()
    model = _mlp()
    ref = _mlp()
    rho, lr = 0.3, 0.2
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    m_sharpness_step(model, CE, (x, y), opt, num_batch_splits=2)
    ps = list(ref.parameters())
    w0 = [p.detach().clone() for p in ps]
    gts = []
    for xs, ys in ((x[:6], y[:6]), (x[6:], y[6:])):
        g = torch.autograd.grad(CE(ref(xs), ys), ps)
        n = math.sqrt(sum(float((gi ** 2).sum()) for gi in g))
        with torch.no_grad():
            for p, gi in zip(ps, g):
                p.add_(gi * (rho / n))
        gts.append(torch.autograd.grad(CE(ref(xs), ys), ps))
        with torch.no_grad():
            for p, w in zip(ps, w0):
                p.copy_(w)
    for p, w, a, b in zip(model.parameters(), w0, *gts):
        assert torch.allclose(p, w - lr * (a + b) / 2, atol=1e-6)
    # and differs from a global perturbation on the full batch
    glob = _mlp()
    sam_train_step(glob, CE, (x, y), SAM(glob.parameters(), torch.optim.SGD, rho=rho, lr=lr))
    assert not all(torch.allclose(p, q, atol=1e-6) for p, q in zip(model.parameters(),
                                                                    glob.parameters()))


def test_bf16_autocast_cpu_step_close_to_fp32():
    x, y = _data()
    m1, m2 = _mlp(), _mlp()
    o1 = SAM(m1.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    o2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    l1, _ = sam_train_step(m1, CE, (x, y), o1)
    l2, out = sam_train_step(m2, CE, (x, y), o2, autocast_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in m2.parameters())
    assert l2.item() == pytest.approx(l1.item(), rel=2e-2)
    for p1, p2, p0 in zip(m1.parameters(), m2.parameters(), _mlp().parameters()):
        # bf16 noise is far smaller than the update itself
        assert (p2 - p1).abs().max() < 0.1 * (p1 - p0).abs().max() + 1e-3


def test_gradscaler_path_equals_unscaled_step():
    # A power-of-two scale is exact in fp32, so each pass must be unscaled exactly once.
    x, y = _data()
    m1, m2 = _mlp(), _mlp()
    o1 = SAM(m1.parameters(), torch.optim.Adam, rho=0.1, lr=0.01)
    o2 = SAM(m2.parameters(), torch.optim.Adam, rho=0.1, lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = torch.optim.lr_scheduler.StepLR(o2, step_size=1, gamma=0.5)
        for _ in range(2):
            sam_train_step(m1, CE, (x, y), o1)
            o1.param_groups[0]["lr"] *= 0.5
            sam_train_step(m2, CE, (x, y), o2, scaler=scaler)
            sched.step()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(p1, p2, atol=1e-6)
    assert scaler.get_scale() == 2.0 ** 14  # grew once per clean step


def test_gradscaler_overflow_in_first_pass_skips_step():
    x, y = _data()
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=3e38)
    sam_train_step(model, lambda o, t: 1e3 * CE(o, t), (x, y), opt, scaler=scaler)  # 3e41: inf
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert scaler.get_scale() == pytest.approx(1.5e38) and not opt.pending


def test_gradscaler_overflow_in_second_pass_restores_and_skips():
    x, y = _data()
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    calls = []

    def loss_fn(out, t):
        calls.append(1)
        return CE(out, t) * (1.0 if len(calls) == 1 else 1e36)  # blows up at w+eps only

    sam_train_step(model, loss_fn, (x, y), opt, scaler=scaler)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert scaler.get_scale() == 2.0 ** 9 and not opt.pending


def test_wsam_through_m_sharpness_single_split_equals_two_step():
    x, y = _data()
    m1, m2 = _mlp(), _mlp()
    o1 = WSAM(m1.parameters(), torch.optim.SGD, rho=0.2, gamma=0.8, decoupled=True, lr=0.1)
    o2 = WSAM(m2.parameters(), torch.optim.SGD, rho=0.2, gamma=0.8, decoupled=True, lr=0.1)
    sam_train_step(m1, CE, (x, y), o1)
    m_sharpness_step(m2, CE, (x, y), o2, num_batch_splits=1)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(p1, p2, atol=1e-7)


def test_top_hessian_eigenvalue_of_known_quadratic():
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
    h = q @ torch.diag(torch.tensor([1.0, 3.0, 7.0])) @ q.T
    w = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    eig = top_hessian_eigenvalue(lambda: 0.5 * w @ h @ w, [w], iters=200, tol=1e-7)
    assert eig == pytest.approx(7.0, rel=1e-4)


def test_top_hessian_eigenvalue_on_plain_control_tensor_matches_dense_hessian():
    # A stand-in twin: ring transmission vs heater currents (Lorentzian in I^2), controls are a
    # plain tensor without requires_grad, as a controller would hold them.
    currents = torch.tensor([0.8, 1.1], dtype=torch.float64)
    target = torch.tensor([0.3, 0.6], dtype=torch.float64)

    def twin_loss(i):
        detune = 2.0 * i ** 2 - 1.5
        t = 1.0 - 0.9 / (1.0 + (detune / 0.4) ** 2)
        return ((t - target) ** 2).sum()

    eig = top_hessian_eigenvalue(lambda: twin_loss(currents), [currents], iters=500, tol=1e-10)
    dense = torch.linalg.eigvalsh(torch.autograd.functional.hessian(twin_loss, currents))
    assert eig == pytest.approx(float(dense[dense.abs().argmax()]), rel=1e-6)
    assert not currents.requires_grad


def test_max_loss_in_ball_by_hand_and_with_projection():
    # L = .5|w|^2 at [3,4]: base 12.5; worst point in the .5-ball is 5.5/5*w -> .5*5.5^2 = 15.125
    w = torch.tensor([3.0, 4.0])
    base, worst = max_loss_in_ball(lambda: 0.5 * (w ** 2).sum(), [w], rho=0.5, steps=3)
    assert base == pytest.approx(12.5) and worst == pytest.approx(15.125)
    assert torch.equal(w, torch.tensor([3.0, 4.0])) and not w.requires_grad
    # with controls clamped to <= [3.1, 4.1]: worst reachable is .5*(3.1^2+4.1^2) = 13.21
    lim = torch.tensor([3.1, 4.1])
    _, worst = max_loss_in_ball(lambda: 0.5 * (w ** 2).sum(), [w], rho=0.5, steps=3,
                                project=lambda: w.copy_(torch.minimum(w, lim)))
    assert worst == pytest.approx(13.21)
