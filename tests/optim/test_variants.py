"""Hand-computed updates for WSAM (coupled/decoupled/clipped), GSAM, ASAM groups and SAMSGD."""

import math

import pytest
import torch

from satlab.optim import ASAM, GSAM, SAM, SAMSGD, WSAM, asam_param_groups

from .conftest import quad_loss

A = torch.tensor([1.0, 2.0])
# Shared hand computation at w=[3,2], a=[1,2], rho=.5: g=[3,4], |g|=5, eps=[.3,.4],
# g~ = a*(w+eps) = [3.3, 4.8].


def _two_step(opt, w, a=A):
    w.grad = None
    quad_loss(w, a).backward()
    opt.first_step(zero_grad=True)
    quad_loss(w, a).backward()
    opt.second_step(zero_grad=True)


def test_wsam_coupled_with_adam_by_hand():
    # gamma=.8 -> alpha=4: grad = (1-4)*[3,4] + 4*[3.3,4.8] = [4.2, 7.2];
    # Adam's first step moves each coordinate by lr*sign(grad) -> [2.9, 1.9]
    w = torch.tensor([3.0, 2.0], requires_grad=True)
    _two_step(WSAM([w], torch.optim.Adam, rho=0.5, gamma=0.8, decoupled=False, lr=0.1), w)
    assert torch.allclose(w.detach(), torch.tensor([2.9, 1.9]), atol=1e-6)


def test_wsam_coupled_anisotropic_by_formula():
    # w=[3,-0.1], a=[1,10]: g=[3,-1], |g|=sqrt10, rho=.1 -> eps=.1*g/sqrt10;
    # g~ = a*(w+eps); coupled grad with alpha=4 is -3g + 4g~, SGD lr .01.
    w = torch.tensor([3.0, -0.1], requires_grad=True)
    a = torch.tensor([1.0, 10.0])
    g = [3.0, -1.0]
    eps = [0.1 * gi / math.sqrt(10) for gi in g]
    gt = [1.0 * (3.0 + eps[0]), 10.0 * (-0.1 + eps[1])]
    comb = [-3 * g[i] + 4 * gt[i] for i in range(2)]
    _two_step(WSAM([w], torch.optim.SGD, rho=0.1, gamma=0.8, decoupled=False, lr=0.01), w, a)
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.01 * comb[0], -0.1 - 0.01 * comb[1]]))


def test_wsam_decoupled_with_adam_by_hand():
    # Adam steps on g=[3,4] -> [2.9,1.9]; then w -= lr*alpha*(g~-g) = .1*4*[.3,.8] -> [2.78,1.58]
    w = torch.tensor([3.0, 2.0], requires_grad=True)
    _two_step(WSAM([w], torch.optim.Adam, rho=0.5, gamma=0.8, decoupled=True, lr=0.1), w)
    assert torch.allclose(w.detach(), torch.tensor([2.78, 1.58]), atol=1e-6)


def test_wsam_max_norm_clips_perturbed_gradient():
    # gamma=.5 (alpha=1) coupled: grad = g~ clipped to norm 1 = [3.3,4.8]/sqrt(33.93); lr=1
    w = torch.tensor([3.0, 2.0], requires_grad=True)
    _two_step(WSAM([w], torch.optim.SGD, rho=0.5, gamma=0.5, decoupled=False, max_norm=1.0,
                   lr=1.0), w)
    n = math.sqrt(3.3 ** 2 + 4.8 ** 2)
    assert torch.allclose(w.detach(), torch.tensor([3 - 3.3 / n, 2 - 4.8 / n]), atol=1e-5)


def test_wsam_gamma_half_is_sam():
    torch.manual_seed(0)
    w1 = torch.randn(5, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    a = torch.arange(1.0, 6.0)
    s1 = SAM([w1], torch.optim.Adam, rho=0.2, lr=0.05)
    s2 = WSAM([w2], torch.optim.Adam, rho=0.2, gamma=0.5, decoupled=False, lr=0.05)
    for _ in range(4):
        _two_step(s1, w1, a)
        _two_step(s2, w2, a)
    assert torch.allclose(w1, w2, atol=1e-7)


def test_gsam_by_hand():
    # dot(g,g~) = 9.9+19.2 = 29.1, |g~|^2 = 33.93, perp = g - (29.1/33.93) g~,
    # update direction g~ - .5*perp, SGD lr .1
    w = torch.tensor([3.0, 2.0], requires_grad=True)
    opt = GSAM([w], torch.optim.SGD, rho_max=0.5, alpha=0.5, lr=0.1)
    _two_step(opt, w)
    c = 29.1 / 33.93
    perp = [3 - c * 3.3, 4 - c * 4.8]
    d = [3.3 - 0.5 * perp[0], 4.8 - 0.5 * perp[1]]
    assert torch.allclose(w.detach(), torch.tensor([3 - 0.1 * d[0], 2 - 0.1 * d[1]]))
    assert abs(perp[0] * 3.3 + perp[1] * 4.8) < 1e-9  # sanity of the hand formula itself


def test_gsam_rho_follows_lr_schedule():
    # rho_max=.1, rho_min=0, lr_max=1 (initial), lr_min=0; after halving lr, rho_t=.05,
    # so eps at w=[3,4] (g=w, |g|=5) is .05*[.6,.8]
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    opt = GSAM([w], torch.optim.SGD, rho_max=0.1, rho_min=0.0, alpha=0.0, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with torch.no_grad():
        w.grad = torch.zeros(2)
    opt.step()  # zero-grad update, just to advance the schedule legally
    sched.step()
    w.grad = w.detach().clone()
    opt.first_step()
    assert opt.param_groups[0]["rho"] == pytest.approx(0.05)
    assert torch.allclose(w.detach(), torch.tensor([3.03, 4.04]))


def test_asam_module_groups_weights_adaptive_bias_plain():
    # Linear w=[1,2], b=1, x=[1,1], L=out: g_w=[1,1], g_b=1; T=[1,2] (eta=0) for the weight only.
    # norm = |[1*1, 2*1, 1]| = sqrt6; rho=sqrt6 -> eps_w = T^2 g = [1,4], eps_b = 1.
    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
        lin.bias.fill_(1.0)
    groups = asam_param_groups(lin)
    assert groups[0]["params"][0] is lin.weight and groups[1]["params"][0] is lin.bias
    opt = ASAM(lin, torch.optim.SGD, rho=math.sqrt(6), eta=0.0, lr=0.1)
    lin(torch.ones(1, 2)).sum().backward()
    opt.first_step()
    assert torch.allclose(lin.weight.detach(), torch.tensor([[2.0, 6.0]]))
    assert torch.allclose(lin.bias.detach(), torch.tensor([2.0]))


def test_samsgd_equals_sam_sgd():
    torch.manual_seed(1)
    w1 = torch.randn(4, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    s1 = SAM([w1], torch.optim.SGD, rho=0.1, lr=0.05, momentum=0.9, nesterov=True)
    s2 = SAMSGD([w2], lr=0.05, rho=0.1, momentum=0.9, nesterov=True)
    for _ in range(3):
        _two_step(s1, w1, a)

        def closure():
            loss = quad_loss(w2, a)
            loss.backward()
            return loss
        s2.step(closure)
    assert torch.equal(w1, w2)
