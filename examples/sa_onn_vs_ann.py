"""ONN (saturable-absorber activations) against ANN (ReLU), as Guo et al. (arXiv:1912.12256)
compare them: the same MLP 784-128-128-10 and a small CNN, trained in silico with Adam
(lr 5e-4, batch 64), every activation of the ONN a cell of optical depth 10 trained
through with its exact derivative or the optical (pump-probe) one; the paper's ablations
(zero, unit, negative derivative) with --ablations. Weights are free here, as in the
paper; on satlab's bench (sa-onn.yaml) they are a modulator's, in [-1, 1].

    python examples/sa_onn_vs_ann.py --data-dir ../shared/data/mnist --epochs 5
    python examples/sa_onn_vs_ann.py            # the 5k offline digits, for a quick look

Prints one table: test accuracy (eval on the full test set) and training time per net.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from satlab.simulators.saturable_absorber.absorber import absorb
from torch import nn

from satlab.data import load_dataset


class Activation(nn.Module):
    """ReLU, or a saturable-absorber cell (amplitude encoding) with a chosen derivative."""

    def __init__(self, kind: str, od: float = 10.0, i_sat: float = 1.0) -> None:
        super().__init__()
        self.kind, self.od, self.i_sat = kind, od, i_sat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return torch.relu(x)
        return absorb(x, self.od, self.i_sat, "amplitude", self.kind.removeprefix("sa-"))


def mlp(kind: str, i_sat: float) -> nn.Module:
    """784-128-128-10 with the activation between layers."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), Activation(kind, i_sat=i_sat),
                         nn.Linear(128, 128), Activation(kind, i_sat=i_sat), nn.Linear(128, 10))


def cnn(kind: str, i_sat: float) -> nn.Module:
    """Two 5x5 convolutions (16, 32 channels) with 2x2 pooling, then 10 outputs."""
    return nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), Activation(kind, i_sat=i_sat), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 5, padding=2), Activation(kind, i_sat=i_sat), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def train(model: nn.Module, data, epochs: int, seed: int) -> tuple[float, float]:
    """Test accuracy after training, and the training time (s)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    x, y = data.train_x.float(), data.train_y
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        tx = data.test_x.float()
        right = sum(int((model(tx[i:i + 1000]).argmax(1) == data.test_y[i:i + 1000]).sum())
                    for i in range(0, len(tx), 1000))
    return right / len(data.test_y), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="folder of the four MNIST IDX files (default: "
                        "the 5k offline digits)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--i-sat", type=float, default=1.0, help="the cells' saturation intensity, "
                        "in the units of the layers' outputs squared (default 1, as the paper)")
    parser.add_argument("--networks", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"])
    parser.add_argument("--ablations", action="store_true", help="also the zero, unit and negative "
                        "derivatives")
    args = parser.parse_args()
    data = load_dataset("idx" if args.data_dir else "offline", args.data_dir)
    kinds = ["relu", "sa-exact", "sa-optical"] + (["sa-zero", "sa-unit", "sa-negative"] if args.ablations else [])
    print(f"{len(data.train_y)} train / {len(data.test_y)} test images, {args.epochs} epochs, "
          f"seed {args.seed}, OD 10, I_sat {args.i_sat:g}")
    print(f"{'network':8} {'activation':12} {'test accuracy':>14} {'train s':>8}")
    for name in args.networks:
        build = {"mlp": mlp, "cnn": cnn}[name]
        for kind in kinds:
            torch.manual_seed(args.seed)
            accuracy, seconds = train(build(kind, args.i_sat), data, args.epochs, args.seed)
            print(f"{name.upper():8} {kind:12} {accuracy:14.2%} {seconds:8.0f}", flush=True)


if __name__ == "__main__":
    main()
