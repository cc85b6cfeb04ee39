"""Deployment-style evaluation: eval-mode network, full held-out set, on the rig, under imperfections."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from contextlib import ExitStack

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from satlab.optim.bn import frozen_bn_stats
from satlab.rig import Rig

BN_MODES = ("eval", "batch")


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             bn: str = "eval") -> float:
    """Fraction of correctly classified samples with the network in eval mode.

    ``bn="eval"`` (deployment: the hardware sees one input at a time) normalises
    with BatchNorm's running statistics; ``bn="batch"`` with each test batch's
    own statistics, as some published code does (a comparison, never the default).
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    was_training = model.training
    model.eval()
    try:
        with ExitStack() as stack:
            if bn == "batch":
                stack.enter_context(frozen_bn_stats(model))  # batch statistics, nothing recorded
                for m in model.modules():
                    if isinstance(m, _BatchNorm):
                        m.train()
            correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                          for i in range(0, len(y), batch_size))
    finally:
        model.train(was_training)
    return correct / len(y)


def imperfection_sweep(model: nn.Module, rig: Rig, x: torch.Tensor, y: torch.Tensor,
                       axes: list[tuple[str, list[float]]], draws: int = 1, bn: str = "eval",
                       batch_size: int = 500, progress: bool = True,
                       before_point: Callable[[], None] | None = None) -> list[dict]:
    """Accuracy at every point of a grid of imperfections (one axis per name), on the rig.

    Each point is evaluated ``draws`` times, draw k setting random imperfections
    to their k-th realisation; rows hold the mean, the standard deviation and
    every draw. The rig returns to its rig-file state afterwards. ``before_point`` runs
    before each point (e.g. to stop on a request).
    """
    rows = []
    grid = list(itertools.product(*(values for _, values in axes)))
    names = [name for name, _ in axes]
    try:
        for point in tqdm(grid, desc="imperfection sweep", unit="point", disable=not progress):
            if before_point is not None:
                before_point()
            scores = []
            for draw in range(draws):
                rig.reset_imperfections()
                for name, value in zip(names, point):
                    rig.set_imperfection(name, value, draw)
                scores.append(accuracy(model, x, y, batch_size, bn))
            rows.append({**{n: float(f"{v:.12g}") for n, v in zip(names, point)},
                         "accuracy": statistics.fmean(scores),
                         "std": statistics.pstdev(scores) if draws > 1 else 0.0,
                         "draws": scores})
    finally:
        rig.reset_imperfections()
    return rows
