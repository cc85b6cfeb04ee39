"""Deployment-style evaluation: eval-mode network, full held-out set, on the rig, under drift."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from satlab.rig import Rig


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of correctly classified samples, in eval mode (BatchNorm uses running stats)."""
    was_training = model.training
    model.eval()
    try:
        correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                      for i in range(0, len(y), batch_size))
    finally:
        model.train(was_training)
    return correct / len(y)


def drift_sweep(model: nn.Module, rig: Rig, x: torch.Tensor, y: torch.Tensor,
                drifts: list[float], batch_size: int = 500, progress: bool = True) -> list[dict]:
    """Accuracy at each ambient temperature offset (K) of the simulated rig."""
    results = []
    try:
        for d in tqdm(drifts, desc="drift sweep", unit="dT", disable=not progress):
            rig.set_ambient_offset(d)
            results.append({"drift_K": round(float(d), 6),
                            "accuracy": accuracy(model, x, y, batch_size)})
    finally:
        rig.set_ambient_offset(0.0)
    return results
