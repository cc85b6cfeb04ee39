"""GSAM: surrogate-gap guided SAM with rho tied to the learning-rate schedule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from satlab.optim._foreach import global_dot
from satlab.optim.sam import SAM


class GSAM(SAM):
    """GSAM: base optimizer gets g_p - alpha * g_perp, g_perp the part of g orthogonal to g_p."""

    def __init__(self, params: Iterable[Any] | None, base_optimizer: type[Optimizer] | Optimizer,
                 rho_max: float = 0.05, rho_min: float | None = None, alpha: float = 0.1,
                 lr_max: float | None = None, lr_min: float = 0.0, adaptive: bool = False,
                 eta: float = 0.0, **base_kwargs: Any):
        super().__init__(params, base_optimizer, rho=rho_max, adaptive=adaptive, eta=eta,
                         **base_kwargs)
        rho_min = rho_max if rho_min is None else rho_min
        for g in self.param_groups:
            # lr_max defaults to the group's lr now, i.e. the peak of a decaying schedule.
            g.setdefault("rho_max", rho_max)
            g.setdefault("rho_min", rho_min)
            g.setdefault("gsam_alpha", alpha)
            g.setdefault("lr_max", g["lr"] if lr_max is None else lr_max)
            g.setdefault("lr_min", lr_min)

    @staticmethod
    def rho_for(group: dict[str, Any]) -> float:
        """rho_t = rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)."""
        span = group["lr_max"] - group["lr_min"]
        if span == 0:
            return group["rho_max"]
        frac = (float(group["lr"]) - group["lr_min"]) / span
        return group["rho_min"] + (group["rho_max"] - group["rho_min"]) * frac

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> bool:
        """Set rho from the current LR, keep g, then perturb as SAM."""
        for g in self.param_groups:
            g["rho"] = self.rho_for(g)
        for _, ps in self._with_grad():
            for p in ps:
                self.state[p]["g"] = p.grad.detach().clone()
        return super().first_step(zero_grad=zero_grad)

    @torch.no_grad()
    def _pre_base_step(self, was_pending: bool) -> None:
        if not was_pending:
            return
        groups = [(grp, [p for p in ps if "g" in self.state[p]]) for grp, ps in self._with_grad()]
        ps = [p for _, q in groups for p in q]
        gp, g = [p.grad for p in ps], [self.state[p].pop("g") for p in ps]
        # The projection is global (one inner product over all groups), like the norm in SAM.
        gp_sq = float(global_dot(gp, gp))
        coef = float(global_dot(g, gp)) / gp_sq if gp_sq > 0 else 0.0
        i = 0
        for grp, q in groups:
            n = len(q)
            if n:
                perp = torch._foreach_add(g[i:i + n], gp[i:i + n], alpha=-coef)
                torch._foreach_add_(gp[i:i + n], perp, alpha=-grp["gsam_alpha"])
            i += n
