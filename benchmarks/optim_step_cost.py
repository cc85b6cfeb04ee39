"""SAM step cost vs the base optimizer's, measured side by side (interleaved) on one model."""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from satlab.optim import ASAM, SAM, WSAM

CE = nn.functional.cross_entropy


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


class Timed:
    """Wraps a callable and sums its wall time, to split optimizer bookkeeping from passes."""

    def __init__(self, fn):
        self.fn, self.total = fn, 0.0

    def __call__(self, *a, **k):
        t = time.perf_counter()
        out = self.fn(*a, **k)
        self.total += time.perf_counter() - t
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.batch, 1, 28, 28, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    base_m = model()
    base = torch.optim.SGD(base_m.parameters(), lr=0.01, momentum=0.9)
    variants = {}
    for name, ctor in (("SAM", lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.01,
                                              momentum=0.9)),
                       ("ASAM", lambda m: ASAM(m, torch.optim.SGD, rho=0.5, lr=0.01, momentum=0.9)),
                       ("WSAM", lambda m: WSAM(m.parameters(), torch.optim.SGD, rho=0.05, gamma=0.9,
                                               lr=0.01, momentum=0.9))):
        m = model()
        opt = ctor(m)
        opt.first_step = Timed(opt.first_step)
        opt.base_optimizer.step = Timed(opt.base_optimizer.step)
        opt._update = Timed(opt._update)  # restore + finite check + hooks + base step
        variants[name] = (m, opt)
    t_base, t_var = [], {k: [] for k in variants}
    book = {k: [] for k in variants}
    warm = 5
    for i in range(args.steps + warm):
        # Interleave so drift in machine load hits every variant alike.
        t = time.perf_counter()
        base.zero_grad()
        CE(base_m(x), y).backward()
        base.step()
        if i >= warm:
            t_base.append(time.perf_counter() - t)
        for k, (m, opt) in variants.items():
            f0, u0, b0 = opt.first_step.total, opt._update.total, opt.base_optimizer.step.total
            t = time.perf_counter()
            opt.zero_grad()
            CE(m(x), y).backward()
            opt.first_step(zero_grad=True)
            CE(m(x), y).backward()
            opt.step()
            if i >= warm:
                t_var[k].append(time.perf_counter() - t)
                book[k].append((opt.first_step.total - f0) + (opt._update.total - u0)
                               - (opt.base_optimizer.step.total - b0))
    mb = statistics.median(t_base)
    print("bookkeeping = time in first_step + step() minus the base optimizer's own step")
    print(f"small CNN (2 conv + 2 fc, {sum(p.numel() for p in base_m.parameters())} params), "
          f"batch {args.batch}, {args.steps} interleaved steps, 2 threads")
    print(f"base SGD step (fwd+bwd+step): median {mb * 1e3:.2f} ms")
    for k in variants:
        mv = statistics.median(t_var[k])
        # Medians, not sums: on a shared machine a few preempted steps would dominate a sum.
        frac = statistics.median(book[k]) / mv
        print(f"{k:5s} step: median {mv * 1e3:.2f} ms  ratio to base {mv / mb:.2f}x  "
              f"optimizer bookkeeping (perturb/save/restore/norms/hooks) {frac * 100:.1f}% of step")


if __name__ == "__main__":
    main()
