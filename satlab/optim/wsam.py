"""WSAM: SAM with the sharpness term weighted by gamma, coupled or decoupled from the base step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from satlab.optim._foreach import clip_
from satlab.optim.sam import SAM


class WSAM(SAM):
    """Weighted SAM: minimise L + gamma/(1-gamma) * sharpness; gamma=0.5 is plain SAM."""

    def __init__(self, params: Iterable[Any] | None, base_optimizer: type[Optimizer] | Optimizer,
                 rho: float = 0.05, gamma: float = 0.9, decoupled: bool = True,
                 max_norm: float | None = None, adaptive: bool = False, eta: float = 0.0,
                 **base_kwargs: Any):
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {gamma}")
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, eta=eta,
                         **base_kwargs)
        for g in self.param_groups:
            g.setdefault("gamma", gamma)
        self.defaults["gamma"] = gamma
        self.decoupled = decoupled
        self.max_norm = max_norm

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> bool:
        """Keep a copy of g (clipped if max_norm) for the weighting, then perturb as SAM."""
        ps = [p for _, group in self._with_grad() for p in group]
        gs = torch._foreach_mul([p.grad for p in ps], 1.0) if ps else []  # one batched copy
        perturbed = super().first_step(zero_grad=False)
        # Perturb with the raw g (as the reference); only the update sees clipped gradients.
        if self.max_norm is not None:
            clip_(gs, self.max_norm)
        for p, g in zip(ps, gs):
            self.state[p]["g"] = g
        if zero_grad:
            self.zero_grad()
        return perturbed

    def _pairs(self) -> list[tuple[dict[str, Any], list[torch.Tensor]]]:
        return [(grp, [p for p in ps if "g" in self.state[p]]) for grp, ps in self._with_grad()]

    @torch.no_grad()
    def _pre_base_step(self, was_pending: bool) -> None:
        if not was_pending:
            return
        pairs = self._pairs()
        if self.max_norm is not None:
            clip_([p.grad for _, ps in pairs for p in ps], self.max_norm)
        for grp, ps in pairs:
            if not ps:
                continue
            alpha = grp["gamma"] / (1.0 - grp["gamma"])
            gt, g = [p.grad for p in ps], [self.state[p]["g"] for p in ps]
            if self.decoupled:
                sharp = torch._foreach_sub(gt, g)  # g~ - g, applied after the base step
                for p, s in zip(ps, sharp):
                    self.state[p]["sharp"] = s
                torch._foreach_copy_(gt, g)
            else:
                torch._foreach_mul_(gt, alpha)
                torch._foreach_add_(gt, g, alpha=1.0 - alpha)

    @torch.no_grad()
    def _post_base_step(self, was_pending: bool) -> None:
        for grp, ps in self._with_grad():
            ps = [p for p in ps if "sharp" in self.state[p]]
            if ps:
                alpha = grp["gamma"] / (1.0 - grp["gamma"])
                torch._foreach_add_(ps, [self.state[p].pop("sharp") for p in ps],
                                    alpha=-float(grp["lr"]) * alpha)
        for _, ps in self._with_grad():
            for p in ps:
                self.state[p].pop("g", None)
