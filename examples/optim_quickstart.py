"""Quickstart: SAM around Adam on a tiny regression, both APIs, a scheduler and a checkpoint."""

from __future__ import annotations

import io

import torch
from torch import nn

from satlab.optim import SAM, sam_train_step, top_hessian_eigenvalue


def main() -> None:
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 64).unsqueeze(1)
    y = torch.sin(2 * x)
    model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    mse = nn.functional.mse_loss
    for step in range(300):
        if step % 2:  # two-step API
            mse(model(x), y).backward()
            opt.first_step(zero_grad=True)
            mse(model(x), y).backward()
            opt.second_step(zero_grad=True)
        else:  # one-call helper
            sam_train_step(model, mse, (x, y), opt)
        sched.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)  # includes Adam's moments
    buf.seek(0)
    opt.load_state_dict(torch.load(buf))
    lam = top_hessian_eigenvalue(lambda: mse(model(x), y), list(model.parameters()))
    print(f"final loss {mse(model(x), y).item():.4f}, lr {opt.param_groups[0]['lr']:.4g}, "
          f"top Hessian eigenvalue {lam:.3f}")


if __name__ == "__main__":
    main()
