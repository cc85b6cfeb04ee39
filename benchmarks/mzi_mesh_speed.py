"""MZI mesh forward + backward, satlab's column-at-once mesh against a per-MZI loop, side by side.

- ``satlab``: ``simulators/mzi/mesh.propagate``: every MZI of a column is one batched 2x2
  product on the fields;
- ``loop``: written here as research code does it: one MZI at a time, its 2x2 transfer
  built from the same formula, the two modes it couples updated in a fresh copy of the
  fields.

Both run a rectangular (Clements) mesh with the same random phases and coupler errors on
a batch of complex fields; the loss is the detected power. Prints, per mode count: seconds
per forward + backward (median of repeats), the speed-up, the memory autograd keeps for
the backward pass (bytes of saved tensors), and the largest output difference.

torchonn's mesh layer is not compared: the package needs mmengine and its authors'
``pyutils`` to build, and ``pyutils`` is not on the registries this project installs from.

Usage: python benchmarks/mzi_mesh_speed.py [--modes 8 16 32 64 128] [--batch 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from satlab.simulators.mzi.mesh import mzi_elements, propagate, rectangular


def per_mzi_loop(field, layout, theta, phi, psi, e1, e2):
    """The mesh one MZI at a time, in the order light meets them."""
    for k, m in enumerate(layout.pairs.tolist()):
        m00, m01, m10, m11 = mzi_elements(theta[k], phi[k], e1[k], e2[k])
        a, b = field[:, m], field[:, m + 1]
        field = field.clone()
        field[:, m] = m00 * a + m01 * b
        field[:, m + 1] = m10 * a + m11 * b
    return field * torch.exp(1j * psi)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward pass of fn()."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def timed(fn, repeats: int) -> float:
    """Median seconds of fn()."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, float64 phases, complex128 fields")
    print(f"{'modes':>5} {'MZIs':>6} {'satlab s':>9} {'loop s':>9} {'speed-up':>9} "
          f"{'satlab MB':>10} {'loop MB':>9} {'max |diff|':>11}")
    for n in args.modes:
        layout = rectangular(n)
        gen = torch.Generator().manual_seed(n)
        theta, phi = (torch.rand(layout.size, generator=gen, dtype=torch.float64) * 6.28 for _ in range(2))
        psi = torch.rand(n, generator=gen, dtype=torch.float64) * 6.28
        e1, e2 = (torch.randn(layout.size, generator=gen, dtype=torch.float64) * 0.1 for _ in range(2))
        field = torch.complex(torch.randn(args.batch, n, generator=gen, dtype=torch.float64),
                              torch.randn(args.batch, n, generator=gen, dtype=torch.float64))
        outputs = {}

        def run(variant: str) -> None:
            t, p, s = (x.detach().requires_grad_(True) for x in (theta, phi, psi))
            mesh = propagate if variant == "satlab" else per_mzi_loop
            out = mesh(field, layout, t, p, s, e1, e2)
            (out.abs() ** 2).sum().backward()
            outputs[variant] = out.detach()

        seconds = {v: timed(lambda v=v: run(v), args.repeats) for v in ("satlab", "loop")}
        memory = {v: saved_bytes(lambda v=v: run(v)) / 1e6 for v in ("satlab", "loop")}
        diff = float((outputs["satlab"] - outputs["loop"]).abs().max())
        print(f"{n:5d} {layout.size:6d} {seconds['satlab']:9.4f} {seconds['loop']:9.4f} "
              f"{seconds['loop'] / seconds['satlab']:8.1f}x {memory['satlab']:10.2f} "
              f"{memory['loop']:9.2f} {diff:11.2e}", flush=True)


if __name__ == "__main__":
    main()
