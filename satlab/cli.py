"""The ``satlab`` command line: train, evaluate, check a rig, report."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from satlab import strict_json
from satlab.config import DEFAULT_CONFIG, RunConfig, load_config
from satlab.instruments import InstrumentFault
from satlab.process import prepare_for_training
from satlab.rig import Rig, RigError, RigInterrupted, UnsafeShutdown
from satlab.rigfile import VISA_BACKENDS, load_rig_file
from satlab.sweeps import SweepOptionError
from satlab.validation import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:
    from satlab.ecosystem_log import EcosystemLog
    from satlab.live_status import LiveStatus

# torch and matplotlib load inside the commands that need them, so --help is instant.

EPILOG = """examples:
  satlab train                          SAT vs plain training on the shipped simulated MRR rig
  satlab train my.yaml --epochs 2       your config, shorter
  satlab train satlab/configs/d2nn-sat.yaml       a diffractive network (SLM masks, camera)
  satlab train satlab/configs/freespace-sat.yaml  an incoherent free-space network
  satlab train --resume runs/mrr-sat-demo-20261122-101500
  satlab evaluate runs/RUN --drift 0:2:21
  satlab evaluate runs/RUN --sweep drift_K=0:1:5 --sweep fabrication_std_nm=0,0.05 --draws 5
  satlab rig check my-rig.yaml          open a rig, identify and read every instrument
  satlab calibrate my-rig.yaml -o cal/  rings, crosstalk, weight map of MRR banks
  satlab report runs/RUN_A runs/RUN_B   compare runs in one plot
  satlab study STUDY.yaml --workers 2   methods x seeds x imperfections on a local Dask cluster
  satlab view runs/                     a local web page of the runs, live while they train
"""


CALIBRATE_EPILOG = """examples:
  satlab calibrate satlab/configs/mrr-tait-sim.yaml -o cal/tait
  satlab calibrate my-rig.yaml --only wiring        only check the heater channel map
"""

CALIBRATION_STEPS = ("wiring", "rings", "crosstalk", "weight_map", "slm_lut", "camera",
                     "registration")  # job.STEPS


EVALUATE_EPILOG = """examples:
  satlab evaluate runs/RUN --list-imperfections
  satlab evaluate runs/RUN --drift 0:2:21
  satlab evaluate runs/RUN --sweep fabrication_std_nm=0:0.1:5 --draws 10
  satlab evaluate runs/RUN --sweep drift_K=0:1:5 --sweep crosstalk_scale=0.5,1,2
  satlab evaluate runs/RUN --sweep drift_K=0:2:5 --bn batch
  satlab evaluate runs/D2NN --sweep mask_rotation_deg=0:1:11 --subset 200
  satlab evaluate runs/S0 runs/S1 runs/S2 --sweep rotation_deg=0:2:5 --sweep shift_px=0:2:5
"""


VISA_BACKEND_HELP = ("VISA backend for every VISA address of the rig that names none: @py "
                     "(pyvisa-py, no vendor software), @ivi (an installed NI-VISA, Keysight or "
                     "R&S VISA), @sim (the drivers' shipped simulations); default: the rig "
                     "file's visa_backend, else pyvisa's choice")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 0 to 65535, got {text}")
    return value


def _data(cfg: RunConfig, config_path: Path):
    from satlab.data import load_dataset

    d = cfg.data
    try:
        return load_dataset(d.source, d.data_dir, d.train_per_class, d.test_per_class,
                            d.limit_train, d.limit_test)
    except DataError as exc:
        raise ConfigError(config_path, "data", str(exc)) from None


def _report(run_dir: Path) -> None:
    from satlab.report import make_report

    out = run_dir / "report.png"
    print(make_report([run_dir], out))
    print(f"report: {out}")


def cmd_train(args: argparse.Namespace) -> int:
    from satlab.ecosystem_log import EcosystemLog, check_available
    from satlab.live_status import LiveStatus, StopRequested, publishing_enabled
    from satlab.training import check_model_matches_rig, train_method, write_run_files

    prepare_for_training()
    check_available(args.log or [])  # a missing package stops here, before anything opens

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(run_dir, "", "not a run directory (no config.yaml)")
        if args.config or args.epochs or args.data_dir or args.run_dir:
            raise ConfigError(run_dir, "", "--resume continues a run where it is, as configured; "
                              "CONFIG, --run-dir, --epochs and --data-dir cannot change it")
        config_path = run_dir / "config.yaml"
    else:
        config_path = Path(args.config or DEFAULT_CONFIG)
    cfg = load_config(config_path)
    if not args.resume:
        if args.epochs:
            cfg.training.epochs = args.epochs
        if args.data_dir:
            cfg.data.source, cfg.data.data_dir = "idx", Path(args.data_dir).resolve()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.run_dir) if args.run_dir else cfg.runs_dir / f"{cfg.name}-{stamp}"
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise ConfigError(run_dir, "--run-dir", "exists and is not an empty folder: a new run "
                              f"needs its own (to continue this one: satlab train --resume {run_dir})")
    spec = load_rig_file(cfg.rig)
    check_model_matches_rig(cfg, spec, config_path)
    data = _data(cfg, config_path)  # before the rig opens: bad data must not touch hardware
    weights = None
    if cfg.model.init_from is not None:
        from satlab.deployment import load_weights
        from satlab.systems import system_for

        weights = load_weights(cfg.model.init_from, config_path, cfg.model,
                               system_for(spec, cfg.rig).layer_shapes())
    finished = {m: _verified_checkpoint(run_dir / m) for m in cfg.training.methods} \
        if args.resume else {}  # a corrupt checkpoint stops here, before the rig opens
    print(f"data: {data.source}\nrig: {spec.name} ({cfg.rig})\nrun: {run_dir}")
    # run_dir/live/status.json for `satlab view`; a stop request left from before is removed
    live = LiveStatus(run_dir, config_path.name) if publishing_enabled() else None
    log = EcosystemLog(args.log, run_dir, cfg.name) if args.log else None
    try:
        with Rig(spec, cfg.rig, visa_backend=args.visa_backend) as rig:
            _check_calibration(spec, rig, args)
            if not args.resume:  # after opening: a rig that fails its open checks leaves no run
                write_run_files(run_dir, cfg, spec.model_dump(mode="json", exclude_none=True))
            rig_start = rig.state_dict()
            for method in cfg.training.methods:
                state = finished.get(method)
                if state and state["done"] and (run_dir / method / "summary.json").exists():
                    print(f"{method}: already finished")
                    continue
                s = train_method(cfg, rig, data, run_dir, method, rig_start, progress=not args.quiet,
                                 weights=weights, live=live, log=log)
                print(f"{method}: test accuracy {100 * s['test_accuracy']:.2f}% "
                      f"({s['rig_queries']} rig queries, {s['wall_seconds']:.0f} s)")
    # the final state is published here, once leaving the Rig has made it safe
    except (KeyboardInterrupt, RigInterrupted) as exc:
        _ended(live, log, "interrupted", None, exc)
        why = "stopped on request" if isinstance(exc, StopRequested) else "interrupted"
        print(f"\n{why}: the rig was put in its safe state.{_resume_hint(run_dir, cfg.training.methods)}",
              file=sys.stderr)
        return 143 if isinstance(exc, RigInterrupted) else 130
    except (ConfigError, DataError, CheckpointError, UnsafeShutdown) as exc:
        _ended(live, log, "failed", str(exc), exc)
        raise
    except Exception as exc:  # e.g. an instrument fault: the rig is safe (else UnsafeShutdown)
        # a fault names its instrument itself; anything else is named by its type
        what = str(exc) if isinstance(exc, (InstrumentFault, RigError)) else f"{type(exc).__name__}: {exc}"
        _ended(live, log, "failed", what, exc)
        print(f"error: {what} (the rig was left in its safe state)"
              f"{_resume_hint(run_dir, cfg.training.methods)}", file=sys.stderr)
        return 1
    if live is not None:
        live.clear_stop()  # asked for during the last evaluation: nothing is left to stop
    _report(run_dir)
    if log is not None:
        log.on_report(run_dir / "report.png")
        log.close()
    return 0


def _ended(live: LiveStatus | None, log: EcosystemLog | None, state: str, error: str | None,
           exc: BaseException) -> None:
    """Publish a training's final state (interrupted or failed) and end its logged runs."""
    if live is not None:
        live.finish(state, error, exc)
    if log is not None:
        log.close("KILLED" if state == "interrupted" else "FAILED")


def _check_calibration(spec, rig: Rig, args: argparse.Namespace) -> None:
    """Warn (or, with --strict, refuse) when the rig's calibration is of other instruments or old."""
    if spec.calibration is None:
        return
    from satlab.calibration.store import check_calibration, load_calibration

    warn = lambda line: print(line, file=sys.stderr)  # noqa: E731
    check_calibration(load_calibration(spec.calibration), spec.name, rig.identities,
                      args.calibration_max_age, args.strict, warn)


def _verified_checkpoint(method_dir: Path) -> dict | None:
    """The state a method resumes from (None: it starts afresh); CheckpointError if unusable."""
    from satlab import checkpoint

    path = method_dir / "checkpoint.pt"
    return checkpoint.load_latest(path)[0] if checkpoint.exists(path) else None


def _resume_hint(run_dir: Path, methods: list[str]) -> str:
    """The resume command, only where every method's checkpoint (if any) reads back."""
    read_back = []
    for method in methods:
        try:
            if _verified_checkpoint(run_dir / method):
                read_back.append(method)
        except (CheckpointError, OSError):
            return (f"\nThe checkpoint of {method} does not read back: the run cannot be resumed "
                    "as it is.")
    if not read_back:
        return ""
    return (f"\nThe checkpoints of {', '.join(read_back)} read back; continue with\n"
            f"  satlab train --resume {run_dir}")


def _evaluated_run(target: Path) -> tuple[Path, RunConfig]:
    """The run folder of RUN_DIR (a run, or one method folder of it) and its config."""
    root = target if (target / "config.yaml").exists() else target.parent
    if not (root / "config.yaml").exists():
        raise ConfigError(target, "", "not a run directory (no config.yaml here or one level up)")
    return root, load_config(root / "config.yaml")


def _imperfections(cfg: RunConfig) -> dict:
    """The imperfections the run's rig system declares; reads the rig file, opens nothing."""
    from satlab.systems import system_for

    spec = load_rig_file(cfg.rig)
    if spec.system is None:
        raise ConfigError(cfg.rig, "system", "the rig file has no system section")
    return system_for(spec, cfg.rig).imperfections


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from satlab.report import method_runs
    from satlab.sweeps import Sweep, draws_note, imperfection_table, parse_axes

    targets = [Path(p) for p in args.run_dir]
    evaluated = [_evaluated_run(t) for t in targets]
    root, cfg = evaluated[0]
    imperfections = _imperfections(cfg)
    if args.list_imperfections:
        print(imperfection_table(imperfections))
        return 0
    prepare_for_training()
    # every option is checked before data loads or a rig opens
    axes = parse_axes(args.sweep, args.drift, cfg.evaluation.drift, imperfections)
    if len(targets) > 1:
        _same_but_seed(targets, evaluated)
    out_dir = Path(args.out) if args.out else Path(os.path.commonpath([r.resolve() for r, _ in evaluated]))
    states = [_trained_states(t, r, c) for t, (r, c) in zip(targets, evaluated, strict=True)]
    trained = [sorted(run.name for run in s) for s in states]
    for target, methods in zip(targets[1:], trained[1:]):
        if methods != trained[0]:
            raise ConfigError(target, "", f"has trained {', '.join(methods)}; {targets[0]} has "
                              f"{', '.join(trained[0])}: seeds need the same methods")
    data = _data(cfg, root / "config.yaml")
    if args.subset and args.subset > len(data.test_y):
        raise ConfigError(root / "config.yaml", "data", f"--subset {args.subset} asks for more than its "
                          f"{len(data.test_y)} test images")
    sweep = Sweep(axes, args.draws, args.bn, len(data.test_y), cfg.evaluation.batch_size,
                  cfg.model.has_batchnorm)
    if note := draws_note(sweep, imperfections):
        print(note, file=sys.stderr)
    sweeps = [sweep] + ([replace(sweep, first=args.subset, test_images=args.subset)] if args.subset else [])
    per_seed: dict[str, dict[str, list[list[dict]]]] = {s.stem: {} for s in sweeps}
    names: dict[str, tuple[str, str]] = {}
    for (run_root, run_cfg), run_states in zip(evaluated, states, strict=True):
        results, run_names = _evaluate_run(run_root, run_cfg, run_states, data, sweeps, imperfections, args)
        names.update(run_names)
        for stem, labelled in results.items():
            for label, rows in labelled:
                per_seed[stem].setdefault(label, []).append(rows)
        if len(targets) == 1 and sweep.is_drift_evaluation and method_runs([run_root]):
            _report(run_root)
    if len(targets) > 1:
        for scored in sweeps:
            _write_seeds(out_dir, replace(scored, seeds=len(targets)), per_seed[scored.stem], names,
                         imperfections)
    return 0


def _write_seeds(out_dir: Path, seeds, per_seed: dict[str, list[list[dict]]],
                 names: dict[str, tuple[str, str]], imperfections: dict) -> None:
    """Every method's mean ± std over the seeds' runs: a table, files per method and a plot in ``out_dir``."""
    from satlab.sweeps import across_seeds, format_table, write_files

    by_method: dict[tuple[str, str], list[list[dict]]] = {}
    for label, runs in per_seed.items():  # a partial run's label differs: grouped by method
        by_method.setdefault(names[label], []).extend(runs)
    results = [(f"{method} ({estimator}), {seeds.seeds} seeds", across_seeds(runs))
               for (method, estimator), runs in by_method.items()]
    print(format_table(seeds, results))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [path for (method, estimator), (_, rows) in zip(by_method, results, strict=True)
               for path in write_files(out_dir, seeds, rows, method, estimator, imperfections,
                                       stem=f"{seeds.stem}-{method}")]
    written += _plot(out_dir, seeds, results)
    print("\n".join(f"wrote {path}" for path in written))


def _same_but_seed(targets: list[Path], evaluated: list[tuple[Path, RunConfig]]) -> None:
    """Runs evaluated together as seeds must differ in their seed (name, methods) only."""
    def comparable(cfg: RunConfig) -> dict:  # each run keeps its own copy of the rig file
        exclude = {"name": True, "rig": True, "runs_dir": True, "training": {"seed", "methods"}}
        return {**cfg.model_dump(exclude=exclude),
                "rig": load_rig_file(cfg.rig).model_dump(exclude={"name"})}

    first = comparable(evaluated[0][1])
    seeds = set()
    for target, (_, cfg) in zip(targets, evaluated, strict=True):
        dump = comparable(cfg)
        differ = [k for k in first if first[k] != dump[k]]
        if differ:
            raise ConfigError(target, differ[0], f"differs from {targets[0]}: runs evaluated together "
                              "must be seeds of one config (same rig, data, model and training but the seed)")
        if cfg.training.seed in seeds:
            raise ConfigError(target, "training.seed", f"seed {cfg.training.seed} is given twice")
        seeds.add(cfg.training.seed)


def _trained_states(target: Path, root: Path, cfg: RunConfig) -> dict[Path, dict]:
    """Each trained method's checkpoint state, read back before any rig opens (a corrupt file stops here)."""
    from satlab import checkpoint

    runs = [r for r in ([target] if root != target else [root / m for m in cfg.training.methods])
            if checkpoint.exists(r / "checkpoint.pt")]
    if not runs:
        raise ConfigError(target, "", "no trained method with a checkpoint.pt found")
    return {run: checkpoint.load_latest(run / "checkpoint.pt", ("model", "done"))[0] for run in runs}


def _evaluate_run(root: Path, cfg: RunConfig, states: dict[Path, dict], data, sweeps: list,
                  imperfections: dict, args: argparse.Namespace
                  ) -> tuple[dict[str, list[tuple[str, list[dict]]]], dict[str, tuple[str, str]]]:
    """Every trained method of one run swept on its rig, once per sweep (the full test set, and
    its first images with --subset); writes the method's files and the run's plots. Returns
    the (label, rows) of each sweep by stem, and each label's (method, estimator)."""
    from satlab import checkpoint
    from satlab.evaluation import imperfection_sweep
    from satlab.sweeps import format_table, write_files
    from satlab.training import build_trainee, drift_results

    results: dict[str, list[tuple[str, list[dict]]]] = {s.stem: [] for s in sweeps}
    names: dict[str, tuple[str, str]] = {}
    written: list[Path] = []
    with Rig.from_file(cfg.rig) as rig:
        for run, state in states.items():
            method = run.name
            tr = build_trainee(cfg, rig, method)
            try:
                tr.model.load_state_dict(state["model"])
            except (RuntimeError, KeyError, TypeError) as exc:
                raise checkpoint.misfit(run / "checkpoint.pt", exc) from None
            # an unfinished method is evaluated as it stands, labelled, and not marked done
            partial = "" if state["done"] else f", partial: epoch {state.get('epoch')} step {state.get('step')}"
            for sweep in sweeps:
                n = sweep.first or len(data.test_y)
                rows = imperfection_sweep(tr.model, rig, data.test_x[:n], data.test_y[:n], sweep.grid,
                                          sweep.draws, sweep.bn, sweep.batch_size, progress=not args.quiet)
                label = f"{method} ({tr.estimator.name}{partial})"
                results[sweep.stem].append((label, rows))
                names[label] = (method, tr.estimator.name)
                written += write_files(run, sweep, rows, method, tr.estimator.name, imperfections)
            if partial:
                print(f"{method} has not finished training: this is a partial evaluation, "
                      "and its summary.json is left as it was", file=sys.stderr)
            elif sweeps[0].is_drift_evaluation:  # what training recorded: keep summary.json current
                _update_summary(run, method, tr.estimator.name, sum(state.get("rig_queries", [])),
                                drift_results(cfg, tr, rig, data, results[sweeps[0].stem][-1][1]))
    for sweep in sweeps:
        print(format_table(sweep, results[sweep.stem]))
        written += _plot(root, sweep, results[sweep.stem])
    print("\n".join(f"wrote {path}" for path in written))
    return results, names


def _plot(folder: Path, sweep, results: list[tuple[str, list[dict]]]) -> list[Path]:
    """The sweep's plot in ``folder`` (1-D and 2-D sweeps), as a list of what was written."""
    from satlab.report import plot_sweep

    plot = folder / f"{sweep.stem}.png"
    if plot_sweep(sweep, results, plot):
        return [plot]
    print(f"no plot for a {len(sweep.axes)}-D sweep (plots cover 1-D and 2-D); the data is in the files")
    return []


def _update_summary(run: Path, method: str, estimator: str, rig_queries: int,
                    result: dict) -> None:
    """Put a finished method's new drift results into its summary.json."""
    summary_path = run / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
        if not isinstance(summary, dict):
            raise ValueError(f"holds a {type(summary).__name__}, not a mapping")
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        print(f"{summary_path} was unreadable ({exc}); it is rewritten with what this "
              "evaluation knows", file=sys.stderr)
        summary = {"method": method, "estimator": estimator, "rig_queries": rig_queries}
    summary.update(result)
    summary_path.write_text(strict_json.dumps(summary))


STUDY_EPILOG = """examples:
  satlab study satlab/configs/studies/system1-drift.yaml               cells one after another, here
  satlab study satlab/configs/studies/system1-drift.yaml --workers 2   on a local Dask cluster
  satlab study STUDY.yaml --scheduler tcp://head-node:8786              on an existing Dask cluster
  satlab study STUDY.yaml --report-only                                 redraw the plots and report.html

An interrupted study continues where it stopped when the same command runs again: only
cells without a result (or with a failed one) run.
"""


def cmd_study(args: argparse.Namespace) -> int:
    from satlab.study.spec import load_study

    study = load_study(args.study, Path(args.out) if args.out else None)  # all checked before any cell
    from satlab.study.report import write_report
    from satlab.study.runner import failed_cells, run_study, summary_lines

    if not args.report_only:
        prepare_for_training()
        run_study(study, args.workers, args.scheduler, progress=not args.quiet)
    elif not (study.out / "table.parquet").exists():
        raise ConfigError(study.out, "", "no table.parquet yet: run the study first")
    report, plots = write_report(study.out, f"satlab study {study.spec.name}", study.spec.bn)
    failed = failed_cells(study)
    print("\n".join([*summary_lines(study, failed), *(f"plot: {p}" for p in plots), f"report: {report}"]))
    return 1 if failed else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from satlab.calibration.bank_steps import WiringError
    from satlab.calibration.job import BankOptions, check_budget, plan, run, summary_plot
    from satlab.calibration.store import write_calibration
    from satlab.systems import system_for

    spec = load_rig_file(args.rig_file)
    steps = plan(spec, Path(args.rig_file), args.only)
    system = system_for(spec, args.rig_file)
    if spec.system.type == "mrr_weight_bank":
        check_budget(spec, Path(args.rig_file), system)
    out = Path(args.output or Path("calibrations") / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(out, "-o", "exists and is not an empty folder: a calibration needs its own")
    options = BankOptions(args.tuning, args.coarse, args.dense, args.reach, args.linewidth_nm)
    say = (lambda line: None) if args.quiet else print
    print(f"rig: {spec.name} ({args.rig_file})\nsteps: {', '.join(steps)}")
    try:
        with Rig(spec, args.rig_file, visa_backend=args.visa_backend) as rig:
            results = run(rig, system, steps, options, say)
            identities = dict(rig.identities)
            wire = {name: w.summary() for name, w in rig.wire_times().items()}
    except WiringError as exc:
        print(f"error: {spec.name}: wiring: {exc}; nothing else was measured (the rig was left in "
              "its safe state)", file=sys.stderr)
        return 1
    write_calibration(out, spec.name, identities, results, args.temperature_K,
                      summary_plot(spec.name, results), wire)
    for step in results:
        print(f"{step.kind}: {step.queries} rig queries, {step.rig_seconds:.2f} s at the rig"
              + (f", {len(step.problems)} problems" if step.problems else ""))
        for line in step.problems[:10]:
            print(f"  {line}")
        if len(step.problems) > 10:
            print(f"  ... {len(step.problems) - 10} more in {out / 'calibration.yaml'}")
    for name, w in wire.items():  # measured by the drivers: what the line cost
        print(f"{name}: wire {w['ms_per_write']:.2f} ms per write ({w['writes']}), "
              f"{w['ms_per_read']:.2f} ms per read ({w['reads']})")
    print(f"calibration: {out}\nuse it: add `calibration: {out.resolve()}` to the rig file")
    return 0


def cmd_rig_check(args: argparse.Namespace) -> int:
    from satlab.instruments import Camera, CurrentSource, Photodetector, Positioner

    spec = load_rig_file(args.rig_file)
    with Rig(spec, args.rig_file, visa_backend=args.visa_backend) as rig:
        for name, dev in rig.instruments.items():
            with rig.named(name, "(checking)"):
                line = f"{name:<16} {dev.kind:<16} {rig.identities[name]}"
                if isinstance(dev, CurrentSource):
                    currents = dev.get_currents()
                    line += f" | {dev.channels} ch, max applied {currents.max(initial=0) * 1e3:.3f} mA"
                elif isinstance(dev, Photodetector):
                    reading = dev.read()
                    line += f" | {dev.channels} ch, reading range [{reading.min():.3g}, {reading.max():.3g}] W"
                elif isinstance(dev, Camera):
                    shot = dev.acquire()
                    line += (f" | {dev.roi.width}x{dev.roi.height} px ROI, {dev.bit_depth}-bit, "
                             f"max {shot.counts.max()} counts{' SATURATED' if shot.saturated.any() else ''}")
                elif isinstance(dev, Positioner):
                    line += f" | at {dev.position():g} {dev.unit}"
            if dev.wire is not None:
                line += f" | {dev.wire}"
            print(line)
    print(f"{spec.name}: {len(spec.instruments)} instruments OK, all left in their safe state")
    return 0


def cmd_rig_drivers(args: argparse.Namespace) -> int:
    from satlab import registry

    print("\n".join(registry.available()))
    print("systems:\n" + "\n".join(f"  {name}" for name in registry.available(registry.SYSTEMS)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from satlab.report import make_report

    paths = [Path(p) for p in args.run_dirs]
    # one run: its own report; several: a comparison here, never over one run's report
    out = Path(args.output) if args.output else (
        paths[0] / "report.png" if len(paths) == 1 else Path("report.png"))
    print(make_report(paths, out))
    print(f"report: {out}")
    return 0


def cmd_instruments(args: argparse.Namespace) -> int:
    """Ask every port who it is; print what answered and rig-file snippets."""
    from satlab.discovery import (
        DEFAULT_BACKENDS,
        probing_drivers,
        rig_snippet,
        scan_serial,
        scan_visa,
    )

    if not args.timeout > 0:
        raise ConfigError("--timeout", "", f"expected seconds > 0, got {args.timeout:g}")
    probes = probing_drivers()
    serial_found = scan_serial(args.port, args.timeout, probes, system_ports=not args.only)
    backends = [args.visa_backend] if args.visa_backend else list(DEFAULT_BACKENDS)
    visa_found, visa_notes = scan_visa(backends, args.timeout, probes)
    for found in serial_found + visa_found:
        what = found.driver or ("not recognised" if found.reply else "no answer")
        print(f"{found.address:<28} {what:<16} {found.reply}")
    print("\n".join(f"VISA {note}" for note in visa_notes))
    known = [f for f in serial_found + visa_found if f.driver]
    if known:
        names: dict[str, int] = {}
        snippets = []
        for found in known:
            base = found.driver.replace(".", "_")
            names[base] = names.get(base, 0) + 1
            snippets.append(rig_snippet(found, base if names[base] == 1 else f"{base}_{names[base]}"))
        print("\ninstruments:\n" + "\n".join(snippets))
    return 0


def cmd_emulate(args: argparse.Namespace) -> int:
    """Serve an emulated instrument on a new pty until Ctrl-C."""
    from satlab import registry

    for option in ("baud", "latency_ms", "latency_timer_ms"):
        if not getattr(args, option) >= 0:
            raise ConfigError(f"--{option.replace('_', '-')}", "", "expected a number >= 0, got "
                                                                  f"{getattr(args, option)!r}")
    emulator = registry.lookup(f"emulated.{args.instrument}")(
        modules=args.modules, baud_rate=args.baud or None, reply_latency_s=args.latency_ms * 1e-3,
        latency_timer_s=args.latency_timer_ms * 1e-3)
    port = emulator.start()
    pacing = (f"paced at {args.baud} baud, {args.latency_ms:g} ms firmware latency, "
              f"{args.latency_timer_ms:g} ms USB latency timer" if args.baud else "unpaced")
    print(f"emulated {args.instrument} ({emulator.channels} channels, {pacing}) on {port}\n"
          f"in a rig file:  driver: qontrol.{args.instrument}   address: {port}\n"
          "Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        emulator.stop()
        return 0


VIEW_EPILOG = """examples:
  satlab view                           the runs in ./runs, at http://127.0.0.1:8765/
  satlab view runs/ other-runs/RUN      a folder of runs and one more run
  ssh -L 8765:127.0.0.1:8765 labpc      from another machine: then open http://127.0.0.1:8765/ there
  satlab view --host 0.0.0.0 --allow-remote --token "$(openssl rand -hex 16)"   (see docs/lab-view.md)
"""


def cmd_view(args: argparse.Namespace) -> int:
    """Serve the lab view of the runs given until Ctrl-C."""
    try:
        from satlab.view.app import create_app
        from satlab.view.security import MIN_TOKEN_LENGTH, is_loopback
        from satlab.view.server import bind, serve, url
    except ImportError as exc:
        raise ConfigError("satlab view", "", f"needs the view extra (missing {exc.name}): "
                          "pip install 'satlab[view]'") from None
    paths = [Path(p) for p in args.runs] or [Path("runs")]
    for path in paths:
        if not path.is_dir():
            raise ConfigError(path, "", "no such folder (expected a folder of runs, or run folders)")
    if args.allow_remote != (args.token is not None):
        raise ConfigError("--allow-remote", "", "and --token TOKEN go together: other machines "
                          "are admitted only with the token")
    if args.token is not None and len(args.token) < MIN_TOKEN_LENGTH:
        raise ConfigError("--token", "", f"expected at least {MIN_TOKEN_LENGTH} characters "
                          "(e.g. openssl rand -hex 16)")
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:  # a taken port, an address this machine does not have
        raise ConfigError(f"{args.host}:{args.port}", "", f"cannot listen there: "
                          f"{exc.strerror or exc}") from None
    # the address bound, not the name given: a name may resolve to any interface
    if not is_loopback(sock.getsockname()[0]) and not args.allow_remote:
        sock.close()
        raise ConfigError("--host", "", f"{args.host} is reachable from other machines: add "
                          "--allow-remote --token TOKEN, or keep 127.0.0.1 and use an SSH tunnel "
                          "(docs/lab-view.md)")
    app = create_app(paths, args.token)
    address = url(args.host, sock) + (f"?token={args.token}" if args.token else "")
    print(f"satlab view: {address}\nCtrl-C stops the server", flush=True)
    try:
        serve(app, sock)
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C back once it has shut down
        pass
    finally:
        sock.close()
    print("stopped", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(
        prog="satlab", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Sharpness-aware training (SAT) of physical neural networks on lab "
                    "instruments or their simulators.")
    p.add_argument("--debug", action="store_true",
                   help="on an error, print the Python traceback after the one-line message")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train SAT and/or plain on a rig, then evaluate (under drift, "
                                     "where the system drifts)",
                       description="Train the hybrid network of CONFIG (default: the shipped "
                                   "simulated MRR demo) with every method it lists, evaluate on the "
                                   "full test set (under drift, where the system drifts) and write "
                                   "a report.")
    t.add_argument("config", nargs="?", help=f"training config YAML (default: {DEFAULT_CONFIG.name})")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its checkpoints")
    t.add_argument("--run-dir", help="where to write the run (default: runs_dir/NAME-TIMESTAMP)")
    t.add_argument("--data-dir", help="folder with the four MNIST IDX files (full MNIST)")
    t.add_argument("--epochs", type=_positive_int, help="override training.epochs")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--visa-backend", choices=VISA_BACKENDS, help=VISA_BACKEND_HELP)
    t.add_argument("--calibration-max-age", type=float, default=30.0, metavar="DAYS",
                   help="warn when the rig file's calibration is older (default 30 days)")
    t.add_argument("--strict", action="store_true",
                   help="refuse a calibration of other instruments or older than its maximum age, "
                        "instead of warning")
    t.add_argument("--log", action="append", choices=("tensorboard", "mlflow"),
                   help="also log scalars, config, test accuracy and report to TensorBoard "
                        "(RUN/tensorboard) or MLflow (MLFLOW_TRACKING_URI, else RUN/mlruns); "
                        "repeatable; needs the log extra: pip install 'satlab[log]'")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate", help="accuracy of a trained run under drift or other imperfections",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EVALUATE_EPILOG,
        description="Re-evaluate a run (or one method of it) on the full test set, on its "
                    "simulated rig,\nat every point of a grid of imperfections (default: the "
                    "run's drift grid).\nWrites sweep-NAMES[-bn-batch].csv/.json in each method "
                    "folder and a .png plot\n(1-D and 2-D sweeps) in the run folder. A drift-only "
                    "sweep with one draw and eval-mode\nBatchNorm also updates summary.json and "
                    "the report. --subset N also scores the first N test images;\nseveral runs of "
                    "one config (seeds) add each point's mean ± std over them.")
    e.add_argument("run_dir", metavar="RUN_DIR", nargs="+",
                   help="a run (or one method of it); several runs of one config with different "
                        "seeds: each is evaluated, then every point's mean ± std over the seeds is "
                        "tabulated, plotted and written to --out")
    e.add_argument("--sweep", action="append", metavar="NAME=GRID",
                   help="sweep an imperfection of the rig's system; GRID is start:stop:count "
                        "(inclusive) or a,b,c; repeat for a grid (2 sweeps: 2-D)")
    e.add_argument("--drift", metavar="GRID", help="short for --sweep drift_K=GRID (K) "
                   "(default without --sweep: the run's evaluation.drift)")
    e.add_argument("--draws", type=_positive_int, default=1, metavar="K",
                   help="evaluate each point K times, draw k with the k-th realisation of random "
                        "imperfections; report mean ± std (default: 1)")
    e.add_argument("--bn", choices=("eval", "batch"), default="eval",
                   help="BatchNorm: eval = running statistics, as deployed (default); batch = "
                        "each test batch's own statistics, only to compare with published "
                        "protocols (files and plots are labelled bn-batch)")
    e.add_argument("--subset", type=_positive_int, metavar="N",
                   help="also score every point on the first N test images only (the SAT paper's "
                        "D2NN sweep scored one batch of 200), beside the full test set")
    e.add_argument("--out", metavar="DIR", help="where the seeds' files and plots go (default: the "
                   "runs' common parent folder)")
    e.add_argument("--list-imperfections", action="store_true",
                   help="list the imperfections of the run's rig with unit, default and "
                        "description, and exit (opens no rig)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_evaluate)

    cal = sub.add_parser(
        "calibrate", help="measure a rig's devices and write a calibration folder",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CALIBRATE_EPILOG,
        description="Calibrate the devices of RIG_FILE through its instruments and write a "
                    "calibration folder\n(calibration.yaml, arrays, plots, summary.png) that a rig "
                    "file names with `calibration:`.\nMRR banks: wiring check, ring sweeps and fits, "
                    "thermal crosstalk, weight <-> current map.\nD2NN benches: each SLM's gray level -> "
                    "phase response (a LUT file), the camera's dark frame, flat field, detector "
                    "regions and registration.\nFree-space benches: each weight display's "
                    "misalignment (rotation, shift, scale) against its camera.")
    cal.add_argument("rig_file", metavar="RIG_FILE")
    cal.add_argument("--only", nargs="+", choices=list(CALIBRATION_STEPS), metavar="STEP",
                     help=f"run only these steps ({', '.join(CALIBRATION_STEPS)}); rings and "
                          "weight_map always come together")
    cal.add_argument("-o", "--output", help="the calibration folder to write (default: "
                                            "calibrations/RIG-TIMESTAMP); must not exist or be empty")
    cal.add_argument("--tuning", choices=("auto", "power", "current"), default="auto",
                     help="what tunes a ring: heater power I^2R, the current, or auto: whichever "
                          "the dips fit best (default)")
    cal.add_argument("--coarse", type=_positive_int, default=64,
                     help="coarse sweep points over each heater's range (default 64)")
    cal.add_argument("--dense", type=_positive_int, default=16,
                     help="dense sweep points around each dip (default 16)")
    cal.add_argument("--reach", type=_positive_int, default=2,
                     help="rings along a waveguide that a heater warms, each side (default 2)")
    cal.add_argument("--linewidth-nm", type=float, dest="linewidth_nm",
                     help="the rings' optical linewidth (FWHM), if known: tuning efficiency is "
                          "then also stated in nm per W (or per A); a sweep of weights alone sees "
                          "it in linewidths")
    cal.add_argument("--temperature-K", type=float, dest="temperature_K",
                     help="the chip's temperature, recorded with the calibration")
    cal.add_argument("--quiet", action="store_true", help="no progress lines")
    cal.add_argument("--visa-backend", choices=VISA_BACKENDS, help=VISA_BACKEND_HELP)
    cal.set_defaults(func=cmd_calibrate)

    r = sub.add_parser("rig", help="rig tools", description="Rig tools.")
    rsub = r.add_subparsers(dest="rig_command", required=True, metavar="RIG_COMMAND")
    c = rsub.add_parser("check", help="open a rig, identify and read every instrument, leave it safe",
                        description="Validate RIG_FILE, open every instrument, print its "
                                    "identification and a reading, and leave the rig in its safe state.")
    c.add_argument("rig_file", metavar="RIG_FILE")
    c.add_argument("--visa-backend", choices=VISA_BACKENDS, help=VISA_BACKEND_HELP)
    c.set_defaults(func=cmd_rig_check)
    d = rsub.add_parser("drivers", help="list the driver, simulator, twin and system names a rig "
                                        "file may use")
    d.set_defaults(func=cmd_rig_drivers)

    rep = sub.add_parser("report", help="plot and tabulate one or more runs",
                         description="Accuracy-vs-drift and training-loss plots for runs (or their "
                                     "method folders), with a table of accuracies.")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("-o", "--output", help="PNG path (default: RUN_DIR/report.png for one run, "
                                            "./report.png for several)")
    rep.set_defaults(func=cmd_report)

    ins = sub.add_parser("instruments", help="find instruments and print rig-file snippets",
                         description="List serial ports and VISA resources, ask each politely "
                                     "who it is (id?, *IDN?) with a short timeout, and print a "
                                     "rig-file snippet for every instrument a driver recognises. "
                                     "Nothing is set on any instrument.")
    ins.add_argument("--port", action="append", default=[],
                     help="also ask this serial port (e.g. a pty of `satlab emulate`); repeatable")
    ins.add_argument("--visa-backend", "--visa-library", dest="visa_backend", default="",
                     help="list only this VISA backend: '@ivi' (an installed vendor VISA), '@py' "
                          "(pyvisa-py) or 'file.yaml@sim' (a pyvisa-sim simulation); default: "
                          "@ivi, then @py, each listed with what it sees")
    ins.add_argument("--timeout", type=float, default=0.3, help="seconds to wait for each answer")
    ins.add_argument("--only", action="store_true",
                     help="of the serial ports, ask only those given with --port")
    ins.set_defaults(func=cmd_instruments)

    st = sub.add_parser("study", help="a robustness study: methods x seeds x systems x imperfection "
                                      "grids, resumable, on Dask if asked",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=STUDY_EPILOG,
                        description="Train every method of STUDY.yaml with every seed on every system,\n"
                                    "sweep each trained model over the study's imperfection grids on the\n"
                                    "full test set, measure its sharpness in control space, and write one\n"
                                    "table (Parquet and CSV), plots and a self-contained report.html.\n"
                                    "docs/studies.md describes the study file.")
    st.add_argument("study", help="study file (YAML)")
    st.add_argument("--out", help="study folder (default: the file's out:, else studies/NAME)")
    where = st.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, metavar="N",
                    help="run simulated cells on a Dask LocalCluster of N worker processes "
                         "(one thread each); cells on real instruments still run here, one at a time")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run simulated cells on an existing Dask cluster (e.g. tcp://host:8786); "
                            "its workers need satlab installed, and the study folder, rig files, "
                            "config and data at the same paths (a shared file system)")
    st.add_argument("--report-only", action="store_true", help="only redraw the plots and report from the table")
    st.add_argument("--quiet", action="store_true", help="no progress bars")
    st.set_defaults(func=cmd_study)

    em = sub.add_parser("emulate", help="serve an emulated instrument on a serial port (a pty)",
                        description="Start a protocol emulator of an instrument on a new "
                                    "pseudo-terminal, a real OS serial port, and print its path: "
                                    "point a rig file's address at it to run the real driver "
                                    "without hardware. Runs until Ctrl-C.")
    em.add_argument("instrument", choices=["q8iv"], help="q8iv: a Qontrol Q8iv heater driver")
    em.add_argument("--modules", type=_positive_int, default=1,
                    help="modules in the daisy chain, 8 channels each (default 1)")
    em.add_argument("--baud", type=int, default=115200,
                    help="pace the line at this baud rate, 10 bits a byte (default 115200, the "
                         "Q8iv's; 0: unpaced, as fast as the pty goes)")
    em.add_argument("--latency-ms", type=float, default=1.0,
                    help="the firmware's delay before each reply (default 1 ms: the fastest "
                         "recorded replies of a real Q8iv took 2 ms, bytes included)")
    em.add_argument("--latency-timer-ms", type=float, default=16.0,
                    help="a USB-serial adapter's latency timer: replies reach the host at its "
                         "next tick (default 16 ms, the period of the saw-tooth in the vendor's "
                         "recorded reply delays; 0: none)")
    em.set_defaults(func=cmd_emulate)

    v = sub.add_parser("view", help="a local web page of runs, live while they train",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=VIEW_EPILOG,
                       description="Serve a web page of the runs in RUNS_DIR (or of the RUN folders "
                                   "given): loss and accuracy,\nthe rig's queries, controls, power, "
                                   "detectors, camera, knobs, commands and instruments,\nlive while "
                                   "a run trains, and a Stop button for a running run. Only this "
                                   "machine is\nserved unless --allow-remote --token are given "
                                   "(docs/lab-view.md). Ctrl-C stops the server.")
    v.add_argument("runs", nargs="*", metavar="RUNS_DIR | RUN",
                   help="a folder of runs, or run folders (default: runs)")
    v.add_argument("--port", type=_port, default=8765, help="TCP port (default 8765; 0: any free one)")
    v.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    v.add_argument("--allow-remote", action="store_true",
                   help="admit other machines that present --token (needed for a --host other "
                        "than loopback)")
    v.add_argument("--token", help="the secret other machines must present (?token= once, then a "
                                   "cookie; or Authorization: Bearer TOKEN)")
    v.set_defaults(func=cmd_view)
    return p


def _attach_negative_grids(argv: list[str]) -> list[str]:
    """``--drift -1:1:5`` as ``--drift=-1:1:5``: argparse takes a leading minus for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--drift" and arg[:1] == "-" and arg[1:2].isdigit():
            out[-1] = f"--drift={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``satlab`` command: every outcome is one line and an exit code.

    2 bad input (nothing touched), 1 an instrument or I/O fault, 130/143 SIGINT/SIGTERM;
    ``--debug`` adds the traceback.
    """
    args = build_parser().parse_args(_attach_negative_grids(sys.argv[1:] if argv is None else argv))
    # pymeasure logs every failed exchange; satlab reports faults itself, once, as one line
    logging.getLogger("pymeasure").setLevel(logging.DEBUG if args.debug else logging.CRITICAL)
    try:
        return args.func(args)
    except BaseException as exc:  # the one error boundary of the command
        code, message = _outcome(exc)
        if code is None:
            raise  # SystemExit
        message = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        print(f"error: {message}" if code not in (130, 143) else message, file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return code


PATH_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST,
               errno.ENAMETOOLONG, errno.EROFS, errno.ELOOP}


def _outcome(exc: BaseException) -> tuple[int | None, str]:
    """Exit code and message for an exception that ended a command."""
    if isinstance(exc, (ConfigError, DataError, SweepOptionError, CheckpointError)):
        return 2, str(exc)
    if isinstance(exc, UnsafeShutdown):
        cause = exc.__cause__ or exc.__context__
        return 1, str(exc) + (f" after {type(cause).__name__}: {cause}" if cause else "")
    if isinstance(exc, (RigError, InstrumentFault)):  # raised inside a rig: it was made safe
        return 1, f"{exc} (the rig was left in its safe state)"
    if isinstance(exc, OSError):
        if exc.filename is not None and exc.errno in PATH_ERRNOS:  # a path given that cannot be used
            return 2, f"{exc.filename}: {exc.strerror}"
        return 1, f"{type(exc).__name__}: {exc}"  # an I/O fault: a full disk, a lost port
    if isinstance(exc, (KeyboardInterrupt, RigInterrupted)):
        return (130 if isinstance(exc, KeyboardInterrupt) else 143), \
            "interrupted: any open rig was put in its safe state"
    if isinstance(exc, SystemExit):
        return None, ""
    return 1, f"{type(exc).__name__}: {exc} (an internal error: --debug shows where)"


if __name__ == "__main__":
    sys.exit(main())
