"""SAMSGD: one-object SAM + SGD(momentum) for people who want a single line."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from satlab.optim.sam import SAM


class SAMSGD(SAM):
    """SAM around torch.optim.SGD; use step(closure) or the two-step API."""

    def __init__(self, params: Iterable[Any], lr: float, rho: float = 0.05, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 adaptive: bool = False, eta: float = 0.0):
        super().__init__(params, torch.optim.SGD, rho=rho, adaptive=adaptive, eta=eta, lr=lr,
                         momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)
