"""Sharpness of a trained hybrid network in its control space: from the twin, and on the bench."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from satlab.estimators import Spsa
from satlab.network import HybridNet
from satlab.optim import hutchinson_trace, top_hessian_eigenvalue
from satlab.optim.sharpness import ascend_in_ball
from satlab.physical_layer import PhysicalLayer


@contextmanager
def _evaluating(model: HybridNet) -> Iterator[None]:
    # BatchNorm on its running statistics: the loss is then a function of the controls alone,
    # as deployed. Each module's own flag comes back, not one flag for all.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _probe_step(layer: PhysicalLayer) -> float:
    step = getattr(layer.estimator, "step", None)
    if step is not None:
        return float(step)
    c = layer.backend.controls
    return 1e-3 * float((c.upper - c.lower).min())


def bench_sharpness(model: HybridNet, x: torch.Tensor, y: torch.Tensor, rho: float, steps: int = 3,
                    directions: int = 8, seed: int = 0) -> tuple[float, float, int]:
    """(loss, highest loss found within ||delta controls|| <= rho, rig queries), all measured on the rig.

    Normalised ascent as satlab.optim.max_loss_in_ball, but each layer's control
    gradient is SPSA on its own input batch (central differences along
    ``directions`` sign vectors, 2 x directions queries per layer and step). As in
    training, dL/d(output) reaches an earlier layer through the later layers' twin
    input VJPs. Queries per layer: (steps + 1) forwards + steps x 2 x directions.
    The controls, estimators and alignment probing are restored at the end.
    """
    layers = list(model.physical)
    controls = model.control_parameters()
    original = [c.detach().clone() for c in controls]
    saved = [(layer.estimator, layer.probe_alignment) for layer in layers]
    steps_h = [_probe_step(layer) for layer in layers]
    queries = sum(layer.backend.queries for layer in layers)
    seen: list[float] = []
    try:
        with _evaluating(model):
            for i, (layer, h) in enumerate(zip(layers, steps_h)):
                layer.estimator = Spsa(step=h, directions=directions, seed=seed + i)
                layer.probe_alignment = False  # knob probes would move stages and cost queries
                layer.project(margin=h)  # the first probes need room inside the bounds too
            centre = [c.detach().clone() for c in controls]
            for _ in range(steps):
                # The forward that measures the loss at this point also carries its gradient:
                # no second rig pass at the same controls.
                with torch.enable_grad():
                    loss = F.cross_entropy(model(x), y)
                    grads = list(torch.autograd.grad(loss, controls))
                seen.append(float(loss.detach()))
                if not ascend_in_ball(controls, grads, centre, rho):
                    break
                for layer, h in zip(layers, steps_h):
                    layer.project(margin=h)
            else:
                with torch.no_grad():
                    seen.append(float(F.cross_entropy(model(x), y)))
    finally:
        with torch.no_grad():
            for c, w in zip(controls, original):
                c.copy_(w)
        for layer, (estimator, probe) in zip(layers, saved):
            layer.estimator, layer.probe_alignment = estimator, probe
    return seen[0], max(seen), sum(layer.backend.queries for layer in layers) - queries


def control_sharpness(model: HybridNet, x: torch.Tensor, y: torch.Tensor, *, hessian_iters: int = 50,
                      trace_samples: int = 20, bench_rho: float | None = None, bench_steps: int = 3,
                      bench_directions: int = 8, seed: int = 0) -> dict[str, float | int]:
    """Top Hessian eigenvalue and trace of the twin's loss in the controls; the bench rise given bench_rho."""
    controls = model.control_parameters()

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(x, twin=True), y)

    with _evaluating(model), torch.enable_grad():
        top = top_hessian_eigenvalue(loss, controls, iters=hessian_iters, seed=seed)
        trace, stderr = hutchinson_trace(loss, controls, samples=trace_samples, seed=seed)
    out: dict[str, float | int] = {"hessian_top": top, "hessian_trace": trace, "hessian_trace_stderr": stderr}
    if bench_rho is not None:
        loss0, worst, queries = bench_sharpness(model, x, y, bench_rho, bench_steps, bench_directions, seed)
        out.update(bench_loss=loss0, bench_rise=worst - loss0, bench_queries=queries)
    return out
