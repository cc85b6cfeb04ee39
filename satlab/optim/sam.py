"""Sharpness-Aware Minimisation (SAM / ASAM) wrapped around any torch base optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

_XI = 1e-12  # keeps eps finite when the norm is tiny but non-zero


class SAM(Optimizer):
    """SAM/ASAM: ascend to w+eps, take the gradient there, restore w, let the base optimizer step."""

    def __init__(self, params: Iterable[Any] | None, base_optimizer: type[Optimizer] | Optimizer,
                 rho: float = 0.05, adaptive: bool = False, eta: float = 0.0, **base_kwargs: Any):
        if rho < 0 or eta < 0:
            raise ValueError(f"rho and eta must be >= 0, got rho={rho}, eta={eta}")
        sam_defaults = {"rho": rho, "adaptive": adaptive, "eta": eta}
        if isinstance(base_optimizer, Optimizer):
            if base_kwargs:
                raise TypeError("base_kwargs only apply when base_optimizer is a class")
            base = base_optimizer
            if params is not None and {id(p) for p in _flatten(params)} != {
                    id(p) for g in base.param_groups for p in g["params"]}:
                raise ValueError("params differ from the base optimizer instance's params")
            super().__init__(base.param_groups, sam_defaults)
        else:
            super().__init__(params, {**sam_defaults, **base_kwargs})
            base = base_optimizer(self.param_groups, **base_kwargs)
        self.base_optimizer = base
        # One list of group dicts for both objects: schedulers and users edit SAM's groups and
        # the base optimizer sees it; load_state_dict re-links after torch replaces the list.
        self.param_groups = base.param_groups
        for g in self.param_groups:
            for k, v in sam_defaults.items():
                g.setdefault(k, v)
        self.defaults.update(base.defaults)
        self.perturbed = False   # did the last first_step move the weights?
        self.pending = False     # first_step done, update not yet applied
        self.skipped = False     # did the last update skip the base step (non-finite gradient)?
        self.grad_norm = 0.0     # global (scaled) gradient norm seen by the last first_step
        self._saved: list[torch.Tensor] = []  # params whose w was saved by the pending first_step

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "base_optimizer"):
            return super().add_param_group(param_group)
        for k in ("rho", "adaptive", "eta"):
            param_group.setdefault(k, self.defaults[k])
        self.base_optimizer.add_param_group(param_group)

    def _with_grad(self) -> list[tuple[dict[str, Any], list[torch.Tensor]]]:
        return [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]

    def _grad_norm(self) -> torch.Tensor:
        """Global L2 norm of g (plain groups) and T_w*g (adaptive groups) over all rho>0 groups."""
        norms = []
        for g, ps in self._with_grad():
            # rho=0 groups are not perturbed, so they must not shrink the others' eps either.
            if not ps or g["rho"] == 0:
                continue
            grads = [p.grad for p in ps]
            if g["adaptive"]:
                t = torch._foreach_abs([p.detach() for p in ps])
                torch._foreach_add_(t, g["eta"])
                self._t[id(g)] = t  # reused by first_step for T^2 g
                grads = torch._foreach_mul(t, grads)
            norms.extend(torch._foreach_norm(grads))
        if not norms:
            return torch.zeros(())
        dev = norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(dev) for n in norms]))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> bool:
        """Save w and move to w+eps along the current .grad; returns whether it perturbed."""
        self._t: dict[int, list[torch.Tensor]] = {}
        norm = float(self._grad_norm())
        self.grad_norm = norm
        self.perturbed = norm > 0.0 and math.isfinite(norm)
        self._saved = []
        for g, ps in self._with_grad():
            if not ps:
                continue
            old = [self.state[p].get("old_p") for p in ps]
            if all(o is not None and o.shape == p.shape for o, p in zip(old, ps)):
                torch._foreach_copy_(old, ps)
            else:
                for p in ps:
                    self.state[p]["old_p"] = p.detach().clone()
            self._saved.extend(ps)
            if not self.perturbed or g["rho"] == 0:
                continue
            scale = g["rho"] / (norm + _XI)
            grads = [p.grad for p in ps]
            if g["adaptive"]:
                t = self._t[id(g)]
                torch._foreach_mul_(t, t)
                grads = torch._foreach_mul(t, grads)
            torch._foreach_add_(ps, grads, alpha=scale)
        self._t = {}
        self.pending = True
        if zero_grad:
            self.zero_grad()
        return self.perturbed

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights saved by first_step without stepping (e.g. after a skipped AMP step)."""
        # Copy back (not w - eps): callers may clamp w in place while perturbed.
        if self._saved:
            torch._foreach_copy_(self._saved, [self.state[p]["old_p"] for p in self._saved])
        self._saved = []
        self.pending = False

    @torch.no_grad()
    def _update(self) -> None:
        was_pending, first_ok = self.pending, math.isfinite(self.grad_norm)
        if self.pending:
            self.restore()
        grads = [p.grad for _, ps in self._with_grad() for p in ps]
        finite = not grads or bool(torch.stack(
            [n.to(grads[0].device) for n in torch._foreach_norm(grads)]).isfinite().all())
        self.skipped = not finite or (was_pending and not first_ok)
        if not self.skipped:
            self._pre_base_step(was_pending)
            self.base_optimizer.step()
            self._post_base_step(was_pending)

    def _pre_base_step(self, was_pending: bool) -> None:
        """Hook for variants (WSAM, GSAM) that rewrite .grad before the base optimizer sees it."""

    def _post_base_step(self, was_pending: bool) -> None:
        """Hook for variants that apply a correction after the base step (decoupled WSAM)."""

    def second_step(self, zero_grad: bool = False) -> None:
        """Restore the saved w and apply the base optimizer with the gradient now in .grad."""
        self.step()  # through step() so LR schedulers and step hooks see one update
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Without closure: restore w if perturbed and apply the update; with closure: both passes."""
        if closure is None:
            self._update()
            return None
        closure = torch.enable_grad()(closure)
        self.zero_grad()
        loss = closure()
        self.first_step(zero_grad=True)
        closure()
        self._update()
        return loss

    def state_dict(self) -> dict[str, Any]:
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        saved = {index[id(p)]: dict(self.state[p]) for p in self._saved}
        return {"base": self.base_optimizer.state_dict(),
                "sam": {"saved": saved, "pending": self.pending,
                        "perturbed": self.perturbed, "grad_norm": self.grad_norm,
                        "skipped": self.skipped}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups
        sam = state_dict["sam"]
        params = [p for g in self.param_groups for p in g["params"]]
        self.state.clear()
        self._saved = [params[int(i)] for i in sam["saved"]]
        for i, entry in sam["saved"].items():
            p = params[int(i)]
            self.state[p] = {k: v.to(device=p.device, dtype=p.dtype).clone() for k, v in entry.items()}
        self.pending, self.perturbed = sam["pending"], sam["perturbed"]
        self.grad_norm, self.skipped = sam["grad_norm"], sam["skipped"]


def _flatten(params: Iterable[Any]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for item in params:
        ps = item["params"] if isinstance(item, dict) else item
        out.extend([ps] if isinstance(ps, torch.Tensor) else ps)
    return out
