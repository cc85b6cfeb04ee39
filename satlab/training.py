"""Training runs: build the hybrid network on a rig, train it, checkpoint, resume, summarise."""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from satlab import checkpoint, strict_json
from satlab.config import RunConfig, TrainingConfig, parse_range
from satlab.data import Dataset, epoch_order
from satlab.deployment import WEIGHTS_FILE, deploy, export_weights
from satlab.ecosystem_log import SCALARS, EcosystemLog
from satlab.estimators import ESTIMATORS, GradientEstimator
from satlab.evaluation import imperfection_sweep
from satlab.live_files import METRIC_FIELDS
from satlab.live_status import LiveStatus, StopRequested
from satlab.network import HybridNet
from satlab.optim import SAM, WSAM
from satlab.physical_layer import PhysicalLayer
from satlab.rig import Rig
from satlab.rigfile import RigSpec
from satlab.sat import SatController
from satlab.systems import LayerBackend, system_for
from satlab.systems.protocol import System
from satlab.validation import ConfigError
from satlab.weight_space import WeightSpace, deployment_summary


def make_estimator(cfg: RunConfig) -> GradientEstimator:
    """The configured gradient estimator."""
    e = cfg.estimator
    if e.name == "finite_difference":
        return ESTIMATORS[e.name](step=e.step, scheme=e.scheme)
    if e.name == "spsa":
        return ESTIMATORS[e.name](step=e.step, directions=e.directions, scheme=e.scheme,
                                  seed=cfg.training.seed, distribution=e.distribution,
                                  blockwise=e.blockwise)
    return ESTIMATORS[e.name]()


def check_model_matches_rig(cfg: RunConfig, spec: RigSpec, config_path: Path | str) -> None:
    """The config's physical layer sizes must be the rig's; checked before the rig opens."""
    if spec.system is None:
        raise ConfigError(cfg.rig, "system", "training needs a system section with physical layers")
    system = system_for(spec, cfg.rig)
    span = system.control_span()
    perturbs = ESTIMATORS[cfg.estimator.name].perturbs
    if perturbs and span is not None and cfg.estimator.step * 4 > span[0]:
        raise ConfigError(config_path, "estimator.step",
                          f"{cfg.estimator.step:g} {span[1]} leaves no room for probes: the rig's "
                          f"controls span {span[0]:g} {span[1]}; expected at most a quarter of that")
    knobs = system.knob_names()
    for name in cfg.training.rho_alignment:
        if name not in knobs:
            raise ConfigError(config_path, "training.rho_alignment",
                              f"{name!r} is not an alignment positioner of rig {cfg.rig} "
                              f"(it has {', '.join(knobs) or 'none'})")
    if cfg.training.rho_alignment and not ESTIMATORS[cfg.estimator.name].forward_on_rig:
        raise ConfigError(config_path, "training.rho_alignment",
                          f"the knobs' slopes are measured on the rig; {cfg.estimator.name} never queries it")
    check_methods_fit_system(cfg, system, config_path)
    layers, sizes = system.layer_shapes(), cfg.model.physical
    if len(layers) != len(sizes) - 1:
        raise ConfigError(config_path, "model.physical",
                          f"{len(sizes) - 1} physical layers described, but rig {cfg.rig} has {len(layers)}")
    for i, (name, n_in, n_out) in enumerate(layers):
        if (n_in, n_out) != (sizes[i], sizes[i + 1]):
            raise ConfigError(config_path, "model.physical",
                              f"layer {i} is {sizes[i]}->{sizes[i + 1]} but rig layer {name} "
                              f"is {n_in}->{n_out}")


def check_methods_fit_system(cfg: RunConfig, system: System, config_path: Path | str) -> None:
    """Noise on weights, method prune and training in weight space need layers with weights."""
    t, weights = cfg.training, system.weight_range is not None
    kind = f"the layers of rig {cfg.rig} (system {system.spec.type})"
    if t.noise_on == "weights" and not weights:
        raise ConfigError(config_path, "training.noise_on",
                          f"weights, but {kind} have no weights (y = W x); expected controls")
    if "prune" in t.methods and not weights:
        raise ConfigError(config_path, "training.methods",
                          f"prune penalises how fast a layer's weights move with its controls; {kind} "
                          "have no weights (y = W x)")
    if t.space != "weights":
        return
    if not weights:
        raise ConfigError(config_path, "training.space",
                          f"weights, but {kind} have no weights (y = W x); expected controls")
    if cfg.estimator.name != "twin_autograd":
        raise ConfigError(config_path, "estimator.name",
                          f"{cfg.estimator.name}, but training.space: weights trains the weights in "
                          "silico (no rig queries); expected twin_autograd")
    if "prune" in t.methods:
        raise ConfigError(config_path, "training.methods",
                          "prune penalises the weights' slope in the controls; training.space: "
                          "weights trains the weights themselves (expected space: controls)")


@dataclass
class Trainee:
    """A model with its controller, ready to train or evaluate."""

    model: HybridNet
    controller: SatController
    estimator: GradientEstimator
    backends: list[LayerBackend]

    @property
    def rig_queries(self) -> int:
        return sum(b.queries for b in self.backends)

    @property
    def rig_seconds(self) -> float:
        return sum(b.seconds for b in self.backends)


def build_trainee(cfg: RunConfig, rig: Rig, method: str, weights: dict | None = None) -> Trainee:
    """Network, estimator, optimizer and controller, initialised from the config's seed
    (or, given ``weights``, deployed from them)."""
    t = cfg.training
    torch.manual_seed(t.seed)
    estimator = make_estimator(cfg)
    system = system_for(rig.spec, rig.path)
    backends = system.build_layers(rig)
    if t.space == "weights":
        backends = [WeightSpace(b, system.weight_range) for b in backends]
    model = HybridNet(cfg.model, backends, estimator, torch.Generator().manual_seed(t.seed))
    if weights is not None:
        deploy(model, weights)
    for layer in model.physical:
        layer.alignment_radius = np.array([t.rho_alignment.get(k.positioner, 0.0) for k in layer.backend.knobs])
    groups = [
        {"params": model.control_parameters(), "lr": t.lr_controls, "rho": t.rho,
         "adaptive": t.adaptive, "name": "controls"},
        {"params": model.digital_parameters(), "lr": t.lr_digital, "rho": t.rho_digital,
         "adaptive": False, "name": "digital"},
    ]
    base = torch.optim.Adam if t.optimizer == "adam" else torch.optim.SGD
    if method == "weights":
        method = "plain"  # deployed as they are: the optimizer never steps
    if method == "sat":
        optimizer = (SAM(groups, base, rho=t.rho, adaptive=t.adaptive) if t.gamma == 0.5 else
                     WSAM(groups, base, rho=t.rho, adaptive=t.adaptive, gamma=t.gamma, decoupled=False))
    else:
        optimizer = base([{k: v for k, v in g.items() if k not in ("rho", "adaptive")} for g in groups])
    controller = SatController(model, nn.functional.cross_entropy, optimizer, method,
                               t.knobs_at_once, t.noise_on, t.prune_lambda)
    return Trainee(model, controller, estimator, backends)


def _snapshot(tr: Trainee, rig: Rig, epoch: int, step: int, rows: int, wall: float,
              done: bool) -> dict:
    return {
        "model": tr.model.state_dict(),
        "optimizer": tr.controller.optimizer.state_dict(),
        "estimator": tr.estimator.state_dict(),
        "rig": rig.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "epoch": epoch, "step": step, "metrics_rows": rows, "wall_seconds": wall,
        "rig_queries": [b.queries for b in tr.backends],
        "rig_seconds": [b.seconds for b in tr.backends],
        "done": done,
    }


def restore(tr: Trainee, rig: Rig, state: dict) -> None:
    """Put a trainee and the rig's simulated state back to a checkpoint."""
    tr.model.load_state_dict(state["model"])
    tr.controller.optimizer.load_state_dict(state["optimizer"])
    tr.estimator.load_state_dict(state["estimator"])
    rig.load_state_dict(state["rig"])
    torch.set_rng_state(state["torch_rng"])
    for b, q, s in zip(tr.backends, state["rig_queries"], state["rig_seconds"]):
        b.queries, b.seconds = q, s


def _truncate_csv(path: Path, rows: int) -> None:
    """Drop rows logged after the checkpoint a resumed run restarts from."""
    lines = path.read_text(errors="replace").splitlines(keepends=True) if path.exists() else []
    if rows and len(lines) < rows + 1:
        print(f"{path} holds {max(len(lines) - 1, 0)} rows where the checkpoint recorded {rows}: "
              "the missing rows are lost, training continues", file=sys.stderr)
    path.write_text("".join(lines[: rows + 1]) if lines else "")


def knob_fraction(t: TrainingConfig, step: int) -> float:
    """The share of the knobs' radii a step uses: 1, or (knob_radius: uniform) a draw in
    (0, 1] that depends on the seed and the step only, so a resumed run draws the same."""
    if t.knob_radius == "fixed":
        return 1.0
    return 1.0 - float(np.random.default_rng([t.seed, step]).random())


def set_learning_rates(t: TrainingConfig, optimizer: torch.optim.Optimizer, step: int, total: int) -> None:
    """The learning rates of a step: the config's, or (lr_schedule: cosine) decayed by half
    a cosine from step 0 to ``total``; from the step alone, so a resumed run sets the same."""
    factor = 1.0 if t.lr_schedule == "constant" else 0.5 * (1 + math.cos(math.pi * step / total))
    for group in optimizer.param_groups:
        group["lr"] = (t.lr_controls if group["name"] == "controls" else t.lr_digital) * factor


def control_noise(t: TrainingConfig, step: int, layers: list[PhysicalLayer]) -> list[torch.Tensor]:
    """Method noise's draw for a step, one per physical layer (a vector over its controls, or
    with noise_on: weights a matrix (out, in)): from the seed and the step only, so a resumed
    run draws the same."""
    rng = np.random.default_rng([t.seed, step, 1])
    shapes = ([(layer.backend.out_features, layer.backend.in_features) for layer in layers]
              if t.noise_on == "weights" else [(layer.controls.numel(),) for layer in layers])
    return [torch.from_numpy(rng.standard_normal(shape) * t.noise_std) for shape in shapes]


def train_method(cfg: RunConfig, rig: Rig, data: Dataset, run_dir: Path, method: str,
                 rig_start: dict, progress: bool = True, weights: dict | None = None,
                 live: LiveStatus | None = None, log: EcosystemLog | None = None) -> dict:
    """Train one method (sat, plain, noise, prune, weights) in ``run_dir/method``, resuming
    from its checkpoint.

    ``rig_start`` is the simulated rig's state when it was opened: every method
    starts from it, so a method is the same whether or not a resume came before it.
    ``live`` publishes the run's state and raises StopRequested between steps when the
    lab view asks for a stop (after checkpointing the completed step); ``log`` sends
    scalars and the summary to TensorBoard / MLflow.
    """
    out = run_dir / method
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = out / "checkpoint.pt", out / "metrics.csv"
    tr = build_trainee(cfg, rig, method, weights)
    t = cfg.training
    epochs = 0 if method == "weights" else t.epochs
    wire_start = rig.wire_times()
    epoch, start_step, rows, wall0 = 0, 0, 0, 0.0
    saved_at: tuple[int, int] | None = None  # (epoch, step) that checkpoint.pt resumes at
    rig.load_state_dict(rig_start)
    if checkpoint.exists(ckpt_path):
        state, used = checkpoint.load_latest(ckpt_path)
        if used != ckpt_path:
            aside = checkpoint.set_aside(ckpt_path) if ckpt_path.exists() else None
            print(f"{ckpt_path} cannot be used{f' (kept as {aside.name})' if aside else ''}; "
                  f"{method} resumes from {used.name} (epoch {state['epoch']}, step "
                  f"{state['step']})", file=sys.stderr)
        try:
            restore(tr, rig, state)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise checkpoint.misfit(used, exc) from None
        epoch, start_step, rows, wall0 = (state["epoch"], state["step"], state["metrics_rows"],
                                          state["wall_seconds"])
        _truncate_csv(metrics_path, rows)
        saved_at = (epoch, start_step) if used == ckpt_path else None
    new_file = not metrics_path.exists() or metrics_path.stat().st_size == 0
    n = len(data.train_y)
    steps = math.ceil(n / t.batch_size)
    started = time.perf_counter()
    wall = lambda: wall0 + time.perf_counter() - started
    if live is not None:
        live.begin(method, tr, rig, steps, epochs, epoch, start_step, wall)
    if log is not None:
        log.start_method(method, tr.estimator.name, epoch * steps + start_step)

    with ExitStack() as stack:
        f = stack.enter_context(open(metrics_path, "a", newline=""))
        writer = csv.writer(f)
        if new_file:
            writer.writerow(METRIC_FIELDS)

        def stop_if_requested(epoch: int, step: int, done: bool) -> None:
            """Between steps, before step ``step`` of ``epoch``: a stop request checkpoints the
            completed steps (a resume then loses nothing) and ends training as Ctrl-C would."""
            if live is None or not live.stop_requested():
                return
            if saved_at != (epoch, step):
                f.flush()
                checkpoint.save_atomic(_snapshot(tr, rig, epoch, step, rows, wall(), done), ckpt_path)
            raise StopRequested()

        bar = stack.enter_context(tqdm(
            total=epochs * steps, initial=epoch * steps + start_step, disable=not progress,
            desc=f"{method} ({tr.estimator.name})", unit="step", dynamic_ncols=True))
        while epoch < epochs:
            order = epoch_order(n, t.seed, epoch)
            for step in range(start_step, steps):
                stop_if_requested(epoch, step, done=False)
                idx = order[step * t.batch_size:(step + 1) * t.batch_size]
                at = epoch * steps + step
                set_learning_rates(t, tr.controller.optimizer, at, epochs * steps)
                noise = control_noise(t, at, tr.model.physical) if method == "noise" else None
                loss, logits = tr.controller.step(data.train_x[idx], data.train_y[idx],
                                                  knob_fraction(t, at), noise)
                acc = (logits.argmax(1) == data.train_y[idx]).float().mean().item()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}", queries=tr.rig_queries,
                                qps=f"{tr.rig_queries / max(wall(), 1e-9):.0f}")
                done_steps = epoch * steps + step + 1
                if done_steps % t.log_every == 0 or step == steps - 1:
                    row = [epoch, step, f"{loss.item():.6f}", f"{acc:.4f}", tr.rig_queries,
                           f"{tr.rig_seconds:.3f}", f"{wall():.3f}"]
                    writer.writerow(row)
                    rows += 1
                    if log is not None:  # the numbers of metrics.csv, as written there
                        log.on_metrics(epoch * steps + step, dict(zip(SCALARS,
                                                                      map(float, row[2:6]))))
                if done_steps % t.checkpoint_every == 0 or step == steps - 1:
                    f.flush()
                    at_end = step == steps - 1
                    saved_at = (epoch + at_end, 0 if at_end else step + 1)
                    checkpoint.save_atomic(_snapshot(tr, rig, *saved_at, rows, wall(),
                                                     done=at_end and epoch + 1 == epochs), ckpt_path)
                if live is not None:
                    live.step(epoch, step, loss, acc)
            epoch, start_step = epoch + 1, 0
        stop_if_requested(epoch, 0, done=True)  # before evaluation, which may take long
    if live is not None:
        live.training_done()
    summary = {
        "method": method,
        "estimator": tr.estimator.name,
        "rig": rig.spec.name,
        "data": data.source,
        "epochs": epochs,
        "rig_queries": tr.rig_queries,
        "rig_seconds": round(tr.rig_seconds, 3),
        "wall_seconds": round(wall(), 3),
        "controls": control_stats(tr),
    }
    if wire := {n: (w - wire_start[n]).summary() for n, w in rig.wire_times().items()}:
        summary["wire"] = wire  # measured by the drivers: this process's training of the method
    # a stop request during evaluation stops at the next point, as Ctrl-C would; training is
    # checkpointed as done, so a resume evaluates again
    summary.update(evaluate_trainee(cfg, tr, rig, data, parse_range(cfg.evaluation.drift), progress,
                                    before_point=live and live.raise_if_stop_requested))
    if t.space == "weights":  # evaluated as deployed: what is on the rig, and how close it is
        summary["deployed"] = deployment_summary(tr.model)
    if weights is not None:
        summary["deployed_from"] = str(weights["path"])
    export_weights(tr.model, out / WEIGHTS_FILE)
    (out / "summary.json").write_text(strict_json.dumps(summary))
    if log is not None:
        log.on_summary(summary)
        log.end_method("FINISHED")
    if live is not None:
        live.end_method()
    return summary


def control_stats(tr: Trainee) -> list[dict]:
    """Range of each layer's trained controls: they must all be applicable."""
    stats = []
    for layer in tr.model.physical:
        c, space = layer.controls.detach(), layer.backend.controls
        stats.append({"layer": layer.backend.name, "quantity": space.quantity, "unit": space.unit,
                      "min": float(c.min()), "max": float(c.max()), "mean": float(c.mean()),
                      "count": c.numel()})
    return stats


def evaluate_trainee(cfg: RunConfig, tr: Trainee, rig: Rig, data: Dataset, drifts: list[float],
                     progress: bool = True, before_point: Callable[[], None] | None = None) -> dict:
    """Test accuracy at the calibration state and, if the system drifts, over a drift sweep
    (``before_point`` runs before each of its points)."""
    drifting = "drift_K" in system_for(rig.spec, rig.path).imperfections
    rows = imperfection_sweep(tr.model, rig, data.test_x, data.test_y, [("drift_K", drifts)],
                              batch_size=cfg.evaluation.batch_size, progress=progress,
                              before_point=before_point) if drifting else []
    return drift_results(cfg, tr, rig, data, rows)


def drift_results(cfg: RunConfig, tr: Trainee, rig: Rig, data: Dataset, rows: list[dict]) -> dict:
    """summary.json's test_accuracy, test_images and drift_sweep from the rows of a drift sweep.

    ``rows``: what :func:`imperfection_sweep` returned for the one axis drift_K, one
    draw, eval-mode BatchNorm (none for a system without drift). Without a 0 K point
    the calibration state is measured.
    """
    sweep = [{"drift_K": p["drift_K"], "accuracy": p["accuracy"]} for p in rows]
    nominal = next((p["accuracy"] for p in sweep if p["drift_K"] == 0.0), None)
    if nominal is None:
        nominal = imperfection_sweep(tr.model, rig, data.test_x, data.test_y, [],
                                     batch_size=cfg.evaluation.batch_size,
                                     progress=False)[0]["accuracy"]
    return {"test_accuracy": nominal, "test_images": len(data.test_y), "drift_sweep": sweep}


def write_run_files(run_dir: Path, cfg: RunConfig, rig_spec_dump: dict) -> None:
    """The resolved config and rig file, so the run can be resumed or re-evaluated alone."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = cfg.model_dump(mode="json")
    resolved["rig"] = "rig.yaml"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    (run_dir / "rig.yaml").write_text(yaml.safe_dump(rig_spec_dump, sort_keys=False))
