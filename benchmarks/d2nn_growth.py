"""How a D2NN training step grows with grid size and batch: seconds and peak memory of
forward + loss + backward (System 3's chain, two masks, the digit on half the grid),
each point in a fresh process so peak memory is its own.

Usage: python benchmarks/d2nn_growth.py [--grids 64,128,256,512] [--batches 50,200]
                                        [--dtype float32|float64]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from satlab.process import prepare_for_training
from satlab.simulators.freespace.d2nn import D2nnModel, D2nnParams


def one_point(grid: int, batch: int, dtype: str, repeats: int = 2) -> dict:
    """Seconds per step and peak RSS (GB) of this process."""
    prepare_for_training()
    real = getattr(torch, dtype)
    # System 3's geometry scaled with the grid: digit on half of it, detectors in proportion
    params = replace(D2nnParams(), grid=grid, image=grid // 2, detector_px=max(3, 9 * grid // 128),
                     detector_spacing_px=24 * grid // 128)
    model = D2nnModel(params)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, params.image, params.image, generator=gen, dtype=real)
    labels = torch.randint(0, 10, (batch,), generator=gen)
    masks = (torch.rand(2, grid, grid, generator=gen, dtype=real) * 2 * math.pi).requires_grad_(True)
    times = []
    for _ in range(repeats + 1):  # the first builds the cached transfer functions
        start = time.perf_counter()
        F.cross_entropy(model(images, masks) / 0.1, labels).backward()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times[1:]), "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", default="64,128,256,512")
    parser.add_argument("--batches", default="50,200")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--point", help=argparse.SUPPRESS)  # grid,batch: run one point, print JSON
    args = parser.parse_args()
    if args.point:
        grid, batch = map(int, args.point.split(","))
        print(json.dumps(one_point(grid, batch, args.dtype)))
        return
    print(f"D2NN training step (forward + loss + backward), two masks, {args.dtype}")
    print(f"{'grid':>6}{'batch':>7}{'s/step':>9}{'ms/image':>10}{'peak RSS':>10}")
    for grid in map(int, args.grids.split(",")):
        for batch in map(int, args.batches.split(",")):
            out = subprocess.run([sys.executable, __file__, "--point", f"{grid},{batch}",
                                  "--dtype", args.dtype], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{grid:>6}{batch:>7}  failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            point = json.loads(out.stdout)
            print(f"{grid:>6}{batch:>7}{point['seconds']:9.3f}{point['seconds'] / batch * 1e3:10.2f}"
                  f"{point['peak_gb']:9.2f}G")


if __name__ == "__main__":
    main()
