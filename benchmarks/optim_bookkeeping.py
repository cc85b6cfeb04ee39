"""Optimizer-only cost: first_step + step() vs the base step alone, with fixed fake gradients."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from optim_step_cost import model

from satlab.optim import ASAM, SAM, WSAM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ctors = {"SAM": lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9),
             "ASAM": lambda m: ASAM(m, torch.optim.SGD, rho=0.5, lr=0.01, momentum=0.9),
             "WSAM": lambda m: WSAM(m.parameters(), torch.optim.SGD, rho=0.05, gamma=0.9, lr=0.01,
                                    momentum=0.9)}
    print("min over 5 rounds of 50 (min resists preemption on a shared machine)")
    for name, ctor in ctors.items():
        m = model()
        opt = ctor(m)
        for p in m.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        sam_t, base_t = [], []
        for r in range(6):
            t = time.perf_counter()
            for _ in range(50):
                opt.first_step()
                opt.step()
            sam_t.append((time.perf_counter() - t) / 50)
            t = time.perf_counter()
            for _ in range(50):
                opt.base_optimizer.step()
            base_t.append((time.perf_counter() - t) / 50)
        s, b = min(sam_t[1:]), min(base_t[1:])
        print(f"{name:5s} first_step+step {s * 1e3:.3f} ms, base step alone {b * 1e3:.3f} ms, "
              f"SAM bookkeeping {(s - b) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
