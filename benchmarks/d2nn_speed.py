"""D2NN forward + loss + backward at batch 200, 128x128, two masks (System 3), side by side:

- ``straightforward``: written here from the paper's recipe, as research code does it:
  frequencies, transfer function and lens rebuilt on every call, fftshift/ifftshift
  around every FFT, complex128 throughout;
- ``satlab float64``: ``D2nnModel`` (cached transfer functions already in FFT order);
- ``satlab float32``: the same model in single precision.

Prints seconds per batch, the speed-up, the largest output difference against the
straightforward float64 outputs, and the cosine between each variant's gradient of
the first mask and the straightforward float64 one. Peak memory of each variant is
measured in a fresh process (``--memory``) so the variants do not share an allocator.

All variants run in the process satlab trains in (``prepare_for_training``). There a
whole batch's field (52 MB at complex128) is above glibc's mmap threshold, so each
operation on it maps fresh pages and faults them in; the straightforward code pays that
on every operation, satlab's model avoids it by going a few images at a time.
``--no-mmap`` serves every block from the retained heap instead, for all of them: the
straightforward code's best case, which leaves the arithmetic alone.

Usage: python benchmarks/d2nn_speed.py [--batch 200] [--repeats 3] [--memory] [--no-mmap]
"""

from __future__ import annotations

import argparse
import ctypes
import math
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from satlab.simulators.freespace.d2nn import D2nnModel, D2nnParams

from satlab.data import load_offline_mnist
from satlab.camera_readout import square_regions
from satlab.process import prepare_for_training

P = D2nnParams()


# --- the straightforward implementation -------------------------------------------------
def naive_propagate(field: torch.Tensor, distance: float) -> torch.Tensor:
    n = field.shape[-1]
    f = torch.fft.fftshift(torch.fft.fftfreq(n, d=P.pitch, dtype=torch.float64))
    fy, fx = torch.meshgrid(f, f, indexing="ij")
    kz = 2 * math.pi * torch.sqrt((1 / P.wavelength**2 - fx**2 - fy**2).to(torch.complex128))
    h = torch.exp(1j * kz * distance)
    spectrum = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(field, dim=(-2, -1))), dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(spectrum * h, dim=(-2, -1))),
                              dim=(-2, -1))


def naive_lens(field: torch.Tensor) -> torch.Tensor:
    n = field.shape[-1]
    c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * P.pitch
    y, x = torch.meshgrid(c, c, indexing="ij")
    return field * torch.exp(-1j * math.pi * (x**2 + y**2) / (P.wavelength * P.focal_length))


def naive_threshold(field: torch.Tensor) -> torch.Tensor:
    # the reference: E <- sqrt(ReLU(|E|^2 - mean(|E|^2)/2)) * E/|E|
    intensity = torch.abs(field) ** 2
    amplitude = torch.sqrt(torch.relu(intensity - P.threshold * intensity.mean((-2, -1), keepdim=True)))
    return amplitude * torch.exp(1j * torch.angle(field))


def naive_forward(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    margin = (P.grid - P.image) // 2
    field = F.pad(torch.sqrt(images.double()), (margin,) * 4).to(torch.complex128)
    field = naive_lens(naive_propagate(field, P.to_lens))
    field = naive_threshold(naive_propagate(field, P.to_first_mask) * torch.exp(1j * masks[0]))
    field = naive_threshold(naive_propagate(field, P.between_masks[0]) * torch.exp(1j * masks[1]))
    field = naive_lens(naive_propagate(field, P.to_output_lens))
    intensity = torch.abs(naive_propagate(field, P.to_camera)) ** 2
    regions = square_regions((P.grid, P.grid), P.detector_px, P.detector_layout, P.detector_spacing_px)
    signals = torch.stack([(intensity * r).sum((-2, -1)) for r in regions.double()], -1)
    return signals / signals.sum(-1, keepdim=True)


# --- timing ------------------------------------------------------------------------------
def step(forward, images, labels, masks):
    """Forward, loss, backward; returns (outputs, gradient of the first mask)."""
    masks = masks.detach().clone().requires_grad_(True)
    out = forward(images, masks)
    F.cross_entropy(out / 0.1, labels).backward()
    return out.detach(), masks.grad[0].detach()


def variants():
    model = D2nnModel(P)
    return {
        "straightforward": (naive_forward, torch.float64),
        "satlab float64": (model, torch.float64),
        "satlab float32": (model, torch.float32),
    }


def batch(size: int):
    data = load_offline_mnist(train_per_class=size // 10 + 1, test_per_class=1)
    images = F.interpolate(data.train_x[:size].double(), size=(P.image, P.image),
                           mode="bilinear", align_corners=False)[:, 0]
    masks = torch.rand(2, P.grid, P.grid, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64) * 2 * math.pi
    return images.clamp(min=0), data.train_y[:size], masks


def time_variant(name: str, size: int, repeats: int):
    forward, dtype = variants()[name]
    images, labels, masks = batch(size)
    images, masks = images.to(dtype), masks.to(dtype)
    step(forward, images, labels, masks)  # warm-up: caches, allocator
    start = time.perf_counter()
    for _ in range(repeats):
        out, grad = step(forward, images, labels, masks)
    return (time.perf_counter() - start) / repeats, out.double(), grad.double()


def peak_memory(name: str, size: int, no_mmap: bool) -> float:
    """Peak RSS (GB) of one forward+loss+backward of ``name`` in a fresh process."""
    code = (f"import sys; sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r}); "
            f"import d2nn_speed as b; "
            f"b.prepare_for_training(); {'b.serve_all_blocks_from_heap(); ' if no_mmap else ''}b.time_variant({name!r}, {size}, 1); "
            f"import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1e6


_M_MMAP_MAX = -4  # mallopt parameter, <malloc.h>


def serve_all_blocks_from_heap() -> None:
    """glibc: no block served by mmap, so freed memory is reused."""
    ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_MAX, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also peak RSS per variant (fresh processes)")
    parser.add_argument("--no-mmap", action="store_true",
                        help="serve every block from the retained heap (glibc), for all variants")
    args = parser.parse_args()
    prepare_for_training()
    if args.no_mmap:
        serve_all_blocks_from_heap()
    print(f"D2NN {P.grid}x{P.grid}, two masks, batch {args.batch}, {torch.get_num_threads()} threads"
          + (", no mmap" if args.no_mmap else ""))
    # before this process grows: a forked child starts with its parent's peak RSS
    memory = {name: peak_memory(name, args.batch, args.no_mmap) for name in variants()} if args.memory else {}
    results = {name: time_variant(name, args.batch, args.repeats) for name in variants()}
    base_t, base_out, base_grad = results["straightforward"]
    print(f"{'variant':<18}{'s/batch':>9}{'speed-up':>10}{'max |out diff|':>16}{'grad cos':>11}"
          + ("  peak RSS" if args.memory else ""))
    for name, (t, out, grad) in results.items():
        cos = float(F.cosine_similarity(grad.flatten(), base_grad.flatten(), dim=0))
        line = f"{name:<18}{t:9.3f}{base_t / t:9.2f}x{(out - base_out).abs().max():16.2e}{cos:11.6f}"
        if args.memory:
            line += f"  {memory[name]:.2f} GB"
        print(line)


if __name__ == "__main__":
    main()
