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

Where torchonn imports, a second table sets satlab's mesh beside torchonn's, at equal
unitaries: one Haar-random real orthogonal matrix per mode count (torchonn's MZI layers
program real matrices), programmed into torchonn's Clements mesh by its own decomposer and
into satlab's by ``programming.decompose``; each mesh then maps the same batch of fields.
torchonn's public dispatchers (``decompose``, ``reconstruct``, and so ``MZIBlockLinear``)
call its CUDA extension unconditionally and fail without one, so this calls the CPU paths
they would take (``decompose_clements_cpu``, ``reconstruct_clements_cpu``: numpy, one MZI
at a time); these are not differentiable, so torchonn gets no backward column. torchonn
installs only beside another torch: docs/mzi.md gives the recipe for its own venv.

Usage: python benchmarks/mzi_mesh_speed.py [--modes 8 16 32 64 128] [--batch 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
import warnings

import torch
from satlab.simulators.mzi.mesh import mzi_elements, propagate, rectangular
from satlab.simulators.mzi.programming import decompose


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

    torchonn = _import_torchonn()
    if torchonn is None:
        print("\ntorchonn: not importable here (docs/mzi.md: its own venv); not compared")
        return
    print(f"\nat equal unitaries, against torchonn {torchonn.__version__} (torch {torch.__version__}), "
          f"forward = program phases -> outputs of {args.batch} fields")
    print(f"{'modes':>5} {'satlab fwd s':>13} {'satlab fwd+bwd s':>17} {'torchonn fwd s':>15} "
          f"{'torchonn/satlab fwd':>20} {'satlab |U-O|':>13} {'torchonn |U-O|':>15}")
    for n in args.modes:
        _versus_torchonn(n, args.batch, args.repeats)


def _import_torchonn():
    """torchonn, quietly (it logs missing CUDA extensions on import), or None."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            import torchonn
            from torchonn.op import matrix_parametrization  # noqa: F401
        except ImportError:
            return None
    return torchonn


def _versus_torchonn(n: int, batch: int, repeats: int) -> None:
    from scipy.stats import ortho_group
    from torchonn.op.matrix_parametrization import RealUnitaryDecomposerBatch

    target = ortho_group.rvs(n, random_state=n)
    decomposer = RealUnitaryDecomposerBatch(alg="clements")
    delta, phi_mat = decomposer.decompose_clements_cpu(target.copy())
    layout = rectangular(n)
    phases = decompose(layout, target)
    m = layout.size
    gen = torch.Generator().manual_seed(n)
    field = torch.complex(torch.randn(batch, n, generator=gen, dtype=torch.float64),
                          torch.randn(batch, n, generator=gen, dtype=torch.float64))
    expected = field @ torch.from_numpy(target).to(field.dtype).T
    results = {}

    def satlab_forward(backward: bool) -> None:
        t, p, s = (x.detach().requires_grad_(backward) for x in (phases[:m], phases[m:2 * m], phases[2 * m:]))
        out = propagate(field, layout, t, p, s)
        if backward:
            (out.abs() ** 2).sum().backward()
        results["satlab"] = out.detach()

    def torchonn_forward() -> None:
        u = torch.from_numpy(decomposer.reconstruct_clements_cpu(delta, phi_mat))
        results["torchonn"] = field @ u.to(field.dtype).T

    fwd = timed(lambda: satlab_forward(False), repeats)
    fwd_bwd = timed(lambda: satlab_forward(True), repeats)
    theirs = timed(torchonn_forward, repeats)
    errors = {k: float((v - expected).abs().max()) for k, v in results.items()}
    print(f"{n:5d} {fwd:13.4f} {fwd_bwd:17.4f} {theirs:15.4f} {theirs / fwd:19.1f}x "
          f"{errors['satlab']:13.1e} {errors['torchonn']:15.1e}", flush=True)


if __name__ == "__main__":
    main()
