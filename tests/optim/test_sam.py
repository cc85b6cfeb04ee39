"""Hand-computed SAM/ASAM updates and the SAM object's contract (flags, groups, restore)."""

import math
import warnings

import pytest
import torch

from satlab.optim import SAM

from .conftest import quad_loss


def _grad(w, a):
    w.grad = None
    quad_loss(w, a).backward()


def test_sam_two_step_quadratic_by_hand():
    # w=[3,2], a=[1,2]: g=[3,4], |g|=5, rho=.5 -> eps=[.3,.4]; g'=a*(w+eps)=[3.3,4.8];
    # SGD lr=.1 from the restored w: [3-.33, 2-.48]
    w = torch.tensor([3.0, 2.0], requires_grad=True)
    a = torch.tensor([1.0, 2.0])
    opt = SAM([w], torch.optim.SGD, rho=0.5, lr=0.1)
    _grad(w, a)
    assert opt.first_step(zero_grad=True) is True
    assert opt.perturbed
    assert torch.allclose(w.detach(), torch.tensor([3.3, 2.4]))
    _grad(w, a)
    opt.second_step()
    assert torch.allclose(w.detach(), torch.tensor([2.67, 1.52]))
    assert not opt.pending


def test_sam_closure_returns_unperturbed_loss_and_same_update():
    w = torch.tensor([3.0, 2.0], requires_grad=True)
    a = torch.tensor([1.0, 2.0])
    opt = SAM([w], torch.optim.SGD, rho=0.5, lr=0.1)

    def closure():
        loss = quad_loss(w, a)
        loss.backward()
        return loss

    with torch.no_grad():  # closure must still get grad enabled
        loss = opt.step(closure)
    assert loss.item() == pytest.approx(0.5 * (9 + 8))
    assert torch.allclose(w.detach(), torch.tensor([2.67, 1.52]))


# eta=0: w=[1,2], g=a*w=[4,2], T=[1,2], Tg=[4,4], |Tg|=4*sqrt2, T^2 g=[4,8];
#   rho=sqrt2 -> eps=[1,2]; g'=a*[2,4]=[8,4]; lr .1 -> [.2, 1.6]
# eta=1: T=[2,3], Tg=[8,6], |Tg|=10, T^2 g=[16,18]; rho=.5 -> eps=[.8,.9];
#   g'=a*[1.8,2.9]=[7.2,2.9]; lr .1 -> [.28, 1.71]
@pytest.mark.parametrize("eta,rho,perturbed,updated", [
    (0.0, math.sqrt(2), [2.0, 4.0], [0.2, 1.6]),
    (1.0, 0.5, [1.8, 2.9], [0.28, 1.71]),
])
def test_asam_by_hand(eta, rho, perturbed, updated):
    a = torch.tensor([4.0, 1.0])
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = SAM([w], torch.optim.SGD, rho=rho, adaptive=True, eta=eta, lr=0.1)
    _grad(w, a)
    opt.first_step()
    assert torch.allclose(w.detach(), torch.tensor(perturbed))
    _grad(w, a)
    opt.second_step()
    assert torch.allclose(w.detach(), torch.tensor(updated))


def test_global_norm_over_groups_with_per_group_rho_and_extra_keys():
    # g1=[3], g2=[4]: global |g|=5; eps1=.5*3/5=.3, eps2=1.0*4/5=.8
    w1 = torch.tensor([3.0], requires_grad=True)
    w2 = torch.tensor([4.0], requires_grad=True)
    opt = SAM([{"params": [w1], "name": "heaters"}, {"params": [w2], "rho": 1.0, "name": "x"}],
              torch.optim.SGD, rho=0.5, lr=0.1)
    (0.5 * (w1 ** 2 + w2 ** 2)).sum().backward()
    opt.first_step()
    assert w1.item() == pytest.approx(3.3) and w2.item() == pytest.approx(4.8)
    assert opt.grad_norm == pytest.approx(5.0)
    assert [g["name"] for g in opt.base_optimizer.param_groups] == ["heaters", "x"]


def test_rho_zero_group_neither_perturbed_nor_in_norm():
    # group 1 g=[3,4] rho=.5 -> eps=[.3,.4] (norm 5, not |[3,4,100]|); group 2 untouched
    w1 = torch.tensor([3.0, 4.0], requires_grad=True)
    w2 = torch.tensor([100.0], requires_grad=True)
    opt = SAM([{"params": [w1]}, {"params": [w2], "rho": 0.0}], torch.optim.SGD, rho=0.5, lr=0.1)
    w1.grad, w2.grad = torch.tensor([3.0, 4.0]), torch.tensor([100.0])
    opt.first_step()
    assert torch.allclose(w1.detach(), torch.tensor([3.3, 4.4])) and w2.item() == 100.0


def test_base_instance_and_param_groups_shared():
    w = torch.tensor([1.0], requires_grad=True)
    base = torch.optim.SGD([{"params": [w], "name": "ctrl"}], lr=0.5)
    opt = SAM(None, base, rho=0.1)
    assert opt.base_optimizer is base and opt.param_groups is base.param_groups
    assert opt.param_groups[0]["rho"] == 0.1
    opt.param_groups[0]["lr"] = 0.25
    w.grad = torch.tensor([2.0])
    opt.step()  # no pending first_step: plain base update
    assert w.item() == pytest.approx(1.0 - 0.25 * 2.0)
    with pytest.raises(ValueError):
        SAM([torch.zeros(1, requires_grad=True)], base)


def test_zero_gradient_no_perturbation_no_nan():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = SAM([w], torch.optim.SGD, rho=0.05, adaptive=True, lr=0.1)
    w.grad = torch.zeros(2)
    assert opt.first_step() is False and not opt.perturbed
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0]))
    opt.second_step()
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0]))
    assert not opt.skipped


def test_nonfinite_gradient_skips_update_keeps_weights():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = SAM([w], torch.optim.Adam, rho=0.05, lr=0.1)
    w.grad = torch.tensor([float("inf"), 1.0])
    assert opt.first_step() is False
    w.grad = torch.tensor([1.0, 1.0])  # finite at the (un)perturbed point, still skip
    opt.second_step()
    assert opt.skipped and torch.equal(w.detach(), torch.tensor([1.0, -2.0]))
    # finite first pass but NaN second pass: also skipped, weights restored
    w.grad = torch.tensor([1.0, 1.0])
    assert opt.first_step()
    w.grad = torch.tensor([float("nan"), 1.0])
    opt.second_step()
    assert opt.skipped and torch.equal(w.detach(), torch.tensor([1.0, -2.0]))


def test_restore_uses_saved_copy_after_in_place_clamp():
    w = torch.tensor([0.9, 0.5], requires_grad=True)
    opt = SAM([w], torch.optim.SGD, rho=0.5, lr=0.1)
    w.grad = torch.tensor([3.0, 4.0])
    opt.first_step()  # w+eps = [1.2, 0.9]
    with torch.no_grad():
        w.clamp_(max=1.0)  # the SAT controller projects into the safe range
    w.grad = torch.tensor([1.0, 1.0])
    opt.second_step()
    # restored to exactly [0.9, 0.5] then SGD: [0.8, 0.4] (subtracting eps would give 0.7 for w0)
    assert torch.allclose(w.detach(), torch.tensor([0.8, 0.4]))


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def test_rho_zero_reproduces_base_exactly():
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3
    m1, m2 = _mlp(), _mlp()
    base = torch.optim.Adam(m1.parameters(), lr=1e-2, weight_decay=1e-3)
    sam = SAM(m2.parameters(), torch.optim.Adam, rho=0.0, lr=1e-2, weight_decay=1e-3)
    lf = torch.nn.functional.cross_entropy
    for _ in range(5):
        base.zero_grad()
        lf(m1(x), y).backward()
        base.step()
        sam.zero_grad()
        lf(m2(x), y).backward()
        sam.first_step(zero_grad=True)
        lf(m2(x), y).backward()
        sam.second_step()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)


def _run(model, opt, sched, x, y, steps):
    lf = torch.nn.functional.cross_entropy
    for _ in range(steps):
        opt.zero_grad()
        lf(model(x), y).backward()
        opt.first_step(zero_grad=True)
        lf(model(x), y).backward()
        opt.second_step()
        sched.step()


def test_resume_bit_identical_with_adam_and_scheduler():
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(2)), torch.arange(16) % 3

    def make():
        m = _mlp()
        o = SAM(m.parameters(), torch.optim.Adam, rho=0.1, adaptive=True, lr=1e-2)
        return m, o, torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)

    m_full, o_full, s_full = make()
    _run(m_full, o_full, s_full, x, y, 6)

    m_a, o_a, s_a = make()
    _run(m_a, o_a, s_a, x, y, 3)
    ckpt = {"m": m_a.state_dict(), "o": o_a.state_dict(), "s": s_a.state_dict()}
    assert len(ckpt["o"]["base"]["state"]) == 4  # Adam moments travel with SAM's checkpoint
    m_b, o_b, s_b = make()
    m_b.load_state_dict(ckpt["m"])
    o_b.load_state_dict(ckpt["o"])
    s_b.load_state_dict(ckpt["s"])
    assert o_b.param_groups is o_b.base_optimizer.param_groups
    _run(m_b, o_b, s_b, x, y, 3)
    for p1, p2 in zip(m_full.parameters(), m_b.parameters()):
        assert torch.equal(p1, p2)
    assert o_b.base_optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 ** 3)


def test_scheduler_drives_base_lr_without_warnings():
    w = torch.tensor([1.0], requires_grad=True)
    opt = SAM([w], torch.optim.SGD, rho=0.1, lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.1 ** e)
        for _ in range(3):
            w.grad = torch.tensor([1.0])
            opt.first_step()
            w.grad = torch.tensor([1.0])
            opt.second_step()
            sched.step()
    # lr used: 1, .1, .01 (grad 1 each time)
    assert w.item() == pytest.approx(1.0 - 1.11)
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_mid_step_checkpoint_keeps_saved_weights():
    w = torch.tensor([3.0, 2.0], requires_grad=True)
    opt = SAM([w], torch.optim.SGD, rho=0.5, lr=0.1)
    w.grad = torch.tensor([3.0, 4.0])
    opt.first_step()
    sd = opt.state_dict()
    w2 = torch.tensor(w.detach().tolist(), requires_grad=True)
    opt2 = SAM([w2], torch.optim.SGD, rho=0.5, lr=0.1)
    opt2.load_state_dict(sd)
    assert opt2.pending
    w2.grad = torch.tensor([1.0, 1.0])
    opt2.second_step()
    assert torch.allclose(w2.detach(), torch.tensor([2.9, 1.9]))
