"""The live status a training publishes, the stop request, and logging to TensorBoard / MLflow."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SATLAB, TWO_LAYER_RIG, tiny_config, train_process, write_yaml

from satlab import checkpoint
from satlab.live_files import live_dir, request_stop
from satlab.live_status import LiveStatus, block_mean, summarise

TOP_KEYS = {"version", "pid", "host", "run", "config", "method", "estimator", "state", "error",
            "updated", "started", "epoch", "step", "steps_per_epoch", "epochs", "loss", "accuracy",
            "rig_queries", "rig_seconds", "wall_seconds", "layers", "detectors", "camera",
            "instruments", "commands"}
LAYER_KEYS = {"name", "quantity", "unit", "queries", "rig_seconds", "controls", "power", "knobs"}
CONTROL_KEYS = {"rows", "cols", "fraction", "min", "max", "lower", "upper"}
CAMERA_KEYS = {"instrument", "frame", "rows", "cols", "regions", "updated"}
COMMAND_KEYS = {"time", "instrument", "action", "value"}


def status_of(run: Path) -> dict:
    return json.loads((live_dir(run) / "status.json").read_text())


def metrics(run: Path, method: str = "sat") -> list[dict]:
    with open(run / method / "metrics.csv") as f:
        return list(csv.DictReader(f))


def check_layout(status: dict) -> None:
    """Every key of format version 1, with values of the documented kinds."""
    assert set(status) == TOP_KEYS
    assert status["version"] == 1 and status["state"] in ("running", "finished", "interrupted", "failed")
    for layer in status["layers"]:
        assert set(layer) == LAYER_KEYS and set(layer["controls"]) == CONTROL_KEYS
        c = layer["controls"]
        assert c["rows"] * c["cols"] == len(c["fraction"]) and c["rows"] <= 64 and c["cols"] <= 64
        assert all(0.0 <= v <= 1.0 for v in c["fraction"])
        assert c["lower"] <= c["min"] <= c["max"] <= c["upper"]
        if layer["power"] is not None:
            assert set(layer["power"]) == {"used", "budget", "unit"} and layer["power"]["unit"] == "A^2"
            assert 0 <= layer["power"]["used"] <= layer["power"]["budget"]
        for knob in layer["knobs"]:
            assert set(knob) == {"positioner", "axis", "position", "travel"}
    for reading in status["detectors"].values():
        assert reading["unit"] == "W" and 0 < len(reading["values"]) <= 256
    assert len(status["commands"]) <= 20
    for command in status["commands"]:
        assert set(command) == COMMAND_KEYS and isinstance(command["value"], str)
    for instrument in status["instruments"].values():
        assert set(instrument) == {"identity", "fault"}
    if status["camera"] is not None:
        assert set(status["camera"]) == CAMERA_KEYS


def test_a_training_publishes_complete_status_files_while_it_runs(tmp_path):
    cfg = tiny_config(TWO_LAYER_RIG, methods=["sat"], epochs=2)
    cfg["estimator"] = {"name": "finite_difference"}  # many steps, each of many rig queries
    path = write_yaml(tmp_path / "tiny.yaml", cfg)
    run = tmp_path / "run"
    proc = train_process(path, "--run-dir", run)
    status_file = live_dir(run) / "status.json"
    seen, states = 0, set()
    while proc.poll() is None:  # read as the view would, as often as possible
        try:
            text = status_file.read_text()
        except FileNotFoundError:
            continue
        status = json.loads(text)  # never a partly written file
        seen += 1
        states.add(status["state"])
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert seen and "running" in states

    status = status_of(run)
    check_layout(status)
    summary = json.loads((run / "sat" / "summary.json").read_text())
    rows = metrics(run)
    assert status["state"] == "finished" and status["error"] is None
    assert (status["run"], status["config"], status["method"], status["estimator"]) == (
        str(run.resolve()), "tiny.yaml", "sat", "finite_difference")
    assert (status["epoch"], status["step"], status["steps_per_epoch"], status["epochs"]) == (1, 4, 5, 2)
    assert status["rig_queries"] == summary["rig_queries"] == int(rows[-1]["rig_queries"])
    assert sum(layer["queries"] for layer in status["layers"]) == summary["rig_queries"]
    assert status["loss"] == pytest.approx(float(rows[-1]["loss"]), abs=1e-6)
    assert [layer["name"] for layer in status["layers"]] == ["fc2", "fc3"]
    fc2 = status["layers"][0]
    assert (fc2["controls"]["rows"], fc2["controls"]["cols"]) == (16, 32)  # (out, in) of the bank
    assert fc2["quantity"] == "heater current" and fc2["unit"] == "A"
    assert fc2["controls"]["upper"] == 0.024 and fc2["power"]["budget"] > 0
    rig = yaml.safe_load(TWO_LAYER_RIG.read_text())
    assert set(status["instruments"]) == set(rig["instruments"])
    assert all(i["identity"] and i["fault"] is None for i in status["instruments"].values())
    assert set(status["detectors"]) == {"pd_fc2", "pd_fc3"}
    assert len(status["detectors"]["pd_fc2"]["values"]) == 16
    assert status["commands"] and status["camera"] is None
    state = checkpoint.load(run / "sat" / "checkpoint.pt")
    controls = state["model"]["physical.0.controls"]
    assert fc2["controls"]["min"] == pytest.approx(float(controls.min()))
    assert fc2["controls"]["max"] == pytest.approx(float(controls.max()))


def slow_config(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A SAT config on the two-layer rig whose heaters settle for 20 ms after each write (a
    few steps a second: a stop lands mid-run), and the trace of fc2's heater writes."""
    trace = tmp_path / f"{name}.trace"
    rig = yaml.safe_load(TWO_LAYER_RIG.read_text())
    for heaters in ("heaters_fc2", "heaters_fc3"):
        rig["instruments"][heaters]["settle_time"] = 0.02
    rig["instruments"]["heaters_fc2"]["options"] = {"trace_file": str(trace)}
    rig_path = write_yaml(tmp_path / f"{name}-rig.yaml", rig)
    cfg = tiny_config(rig_path, methods=["sat"], epochs=2, checkpoint_every=3)
    return write_yaml(tmp_path / f"{name}.yaml", cfg), trace


def wait_for_steps(proc: subprocess.Popen, run: Path, done: int) -> dict:
    """The first status showing at least ``done`` completed steps."""
    while proc.poll() is None:
        try:
            status = status_of(run)
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if status["epoch"] * status["steps_per_epoch"] + status["step"] + 1 >= done:
            return status
    raise AssertionError(f"training ended first: {proc.communicate()}")


def test_a_stop_request_stops_like_ctrl_c_and_the_resumed_run_matches(tmp_path):
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    uninterrupted = train_process(slow_config(tmp_path, "whole")[0], "--run-dir", whole)
    path, trace = slow_config(tmp_path, "stopped")  # the same but for the trace file
    proc = train_process(path, "--run-dir", stopped)
    wait_for_steps(proc, stopped, 1)
    request = request_stop(stopped)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "stopped on request: the rig was put in its safe state" in err
    assert f"satlab train --resume {stopped}" in err
    output, max_current, _ = trace.read_text().splitlines()[-1].split()
    assert output == "0" and float(max_current) == 0.0  # ramped down and switched off
    assert not request.exists()  # handled

    status = status_of(stopped)
    check_layout(status)
    assert status["state"] == "interrupted" and status["error"] is None
    assert [c["action"] for c in status["commands"]][-1] == "safe_state"  # published once safe
    state = checkpoint.load(stopped / "sat" / "checkpoint.pt")
    at = state["epoch"] * 5 + state["step"]
    assert not state["done"] and 0 < at < 10  # stopped mid-run
    # the completed steps were checkpointed: the status's last step is the checkpoint's last
    assert at == status["epoch"] * 5 + status["step"] + 1
    assert len(metrics(stopped)) == at == state["metrics_rows"]

    request_stop(stopped)  # a request left behind is not the next process's
    resumed = train_process("--resume", stopped)
    for p in (resumed, uninterrupted):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert status_of(stopped)["state"] == "finished"
    a, b = checkpoint.load(whole / "sat" / "checkpoint.pt"), checkpoint.load(stopped / "sat" / "checkpoint.pt")
    assert a["done"] and b["done"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    deterministic = ["epoch", "step", "loss", "accuracy", "rig_queries"]
    assert ([[r[k] for k in deterministic] for r in metrics(whole)]
            == [[r[k] for k in deterministic] for r in metrics(stopped)])
    sa = json.loads((whole / "sat" / "summary.json").read_text())
    sb = json.loads((stopped / "sat" / "summary.json").read_text())
    assert sa["drift_sweep"] == sb["drift_sweep"] and sa["rig_queries"] == sb["rig_queries"]


def test_a_d2nn_run_publishes_its_camera_frame_and_detector_regions(tmp_path):
    from matplotlib.image import imread

    rig = files("satlab.configs") / "d2nn-sim.yaml"
    path = write_yaml(tmp_path / "d2nn.yaml", {
        "name": "d2nn-tiny", "rig": str(rig),
        "data": {"train_per_class": 2, "test_per_class": 1},
        "model": {"front": "image", "physical": [4096, 10], "readout_scale": 10},
        "estimator": {"name": "physics_aware"},
        "training": {"methods": ["sat"], "epochs": 1, "batch_size": 10, "lr_controls": 0.1,
                     "rho": 0.5, "adaptive": False}})
    run = tmp_path / "run"
    done = subprocess.run([SATLAB, "train", str(path), "--run-dir", str(run), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    status = status_of(run)
    check_layout(status)
    camera = status["camera"]
    sensor = yaml.safe_load(Path(rig).read_text())
    assert camera["instrument"] == "camera" and camera["frame"] == "frame.png"
    assert (camera["rows"], camera["cols"]) == (128, 128)
    assert len(camera["regions"]) == 10  # the 3-4-3 class detectors, 9 pixels square
    for row0, col0, row1, col1 in camera["regions"]:
        assert (row1 - row0, col1 - col0) == (9, 9)
        assert 0 <= row0 < row1 <= camera["rows"] and 0 <= col0 < col1 <= camera["cols"]
    image = imread(live_dir(run) / "frame.png")
    assert image.shape[:2] == (128, 128) and image.std() > 0  # light on the sensor
    (layer,) = status["layers"]
    assert (layer["controls"]["rows"], layer["controls"]["cols"]) == (64, 64)  # 256x128, averaged
    assert layer["quantity"] == "SLM phase" and layer["power"] is None
    assert {k["positioner"] for k in layer["knobs"]} <= set(sensor["instruments"])


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> Path:
    """A tiny SAT run logged to both TensorBoard and MLflow (a file store in the run)."""
    tmp = tmp_path_factory.mktemp("logged")
    path = write_yaml(tmp / "tiny.yaml", tiny_config(TWO_LAYER_RIG, methods=["sat"]))
    run = tmp / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run([SATLAB, "train", str(path), "--run-dir", str(run), "--quiet",
                           "--log", "tensorboard", "--log", "mlflow"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return run


def test_tensorboard_scalars_are_the_numbers_of_metrics_csv(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged_run / "tensorboard" / "sat"))
    events.Reload()
    rows = metrics(logged_run)
    steps = [int(r["epoch"]) * 5 + int(r["step"]) for r in rows]
    for key in ("loss", "accuracy", "rig_queries", "rig_seconds"):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == steps, key
        assert [e.value for e in logged] == [np.float32(r[key]) for r in rows], key
    summary = json.loads((logged_run / "sat" / "summary.json").read_text())
    (test,) = events.Scalars("test_accuracy")
    assert test.value == np.float32(summary["test_accuracy"]) and test.step == steps[-1]
    for point in summary["drift_sweep"]:
        (logged,) = events.Scalars(f"drift/accuracy_at_{point['drift_K']:g}K")
        assert logged.value == np.float32(point["accuracy"])
    assert "config/text_summary" in events.Tags()["tensors"]  # text is stored as tensors
    assert "report" in events.Tags()["images"]


def test_mlflow_run_holds_metrics_csv_config_and_report(logged_run, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient((logged_run / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["satlab.method"] == "sat"
    assert run.info.run_id == (logged_run / "sat" / "mlflow_run_id").read_text().strip()
    rows = metrics(logged_run)
    steps = [int(r["epoch"]) * 5 + int(r["step"]) for r in rows]
    for key in ("loss", "accuracy", "rig_queries", "rig_seconds"):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        expected = [(s, float(r[key])) for s, r in zip(steps, rows, strict=True)]
        assert [(m.step, m.value) for m in history] == expected, key
    summary = json.loads((logged_run / "sat" / "summary.json").read_text())
    assert run.data.metrics["test_accuracy"] == summary["test_accuracy"]
    assert run.data.params["training.batch_size"] == "24"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "report.png"} <= artifacts


@pytest.mark.parametrize("kind, module", [("tensorboard", "torch.utils.tensorboard"),
                                          ("mlflow", "mlflow")])
def test_a_missing_logger_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys, kind, module):
    from satlab import cli

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    path = write_yaml(tmp_path / "tiny.yaml", tiny_config(TWO_LAYER_RIG))
    run = tmp_path / "run"
    assert cli.main(["train", str(path), "--run-dir", str(run), "--log", kind, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --log: {kind}: needs ")
    assert "pip install 'satlab[log]'" in err[0]
    assert not run.exists()  # nothing opened, nothing written


def test_publishing_is_throttled_by_time_and_a_stop_request_is_seen(tmp_path):
    from types import SimpleNamespace

    now = [100.0]
    live = LiveStatus(tmp_path, "cfg.yaml", interval=0.25, clock=lambda: now[0])
    rig = SimpleNamespace(identities={"pd": "a detector"}, instruments={}, faulted={},
                          spec=SimpleNamespace(instruments={"pd": None}), commands=[],
                          last_read={}, last_frame={})
    trainee = SimpleNamespace(estimator=SimpleNamespace(name="spsa"), backends=[],
                              model=SimpleNamespace(physical=[]), rig_queries=7, rig_seconds=0.5)
    live.begin("sat", trainee, rig, 5, 2, 0, 0, lambda: 1.0)
    path = live_dir(tmp_path) / "status.json"
    assert status_of(tmp_path)["step"] == -1  # nothing done yet
    live.step(0, 0, torch.tensor(2.5), 0.25)
    assert json.loads(path.read_text())["step"] == -1  # within the interval: not written
    now[0] += 0.25
    live.step(0, 1, torch.tensor(2.0), 0.5)
    status = status_of(tmp_path)
    assert (status["step"], status["loss"], status["accuracy"], status["rig_queries"]) == (1, 2.0, 0.5, 7)
    assert not live.stop_requested()
    request_stop(tmp_path)
    assert live.stop_requested()
    live.finish("interrupted")
    assert status_of(tmp_path)["state"] == "interrupted" and not live.stop_requested()
    request_stop(tmp_path)
    LiveStatus(tmp_path, "cfg.yaml")  # a new process removes a request left behind
    assert not (live_dir(tmp_path) / "stop").exists()


def test_controls_and_frames_are_block_averaged_and_commands_summarised():
    a = np.arange(256 * 130, dtype=float).reshape(256, 130)
    small = block_mean(a, 64)
    assert small.shape == (64, 64) and small.mean() == pytest.approx(a.mean(), rel=1e-3)
    assert block_mean(a[:10, :20], 64).shape == (10, 20)
    assert block_mean(np.ones((3, 1000)), 64).tolist() == np.ones((3, 64)).tolist()
    text = summarise(np.linspace(0, 1, 10**6).reshape(1000, 1000))
    assert text == "1000x1000 min 0 max 1" and len(summarise("x" * 500)) == 80
    assert summarise(None) == "" and summarise(0.001) == "0.001" and summarise(True) == "True"
    assert math.isclose(float(summarise(np.float64(2.5))), 2.5)


def test_a_stop_request_during_evaluation_stops_at_the_next_sweep_point(tmp_path):
    from satlab.config import load_config
    from satlab.data import load_offline_mnist
    from satlab.live_status import StopRequested
    from satlab.rig import Rig
    from satlab.training import build_trainee, evaluate_trainee

    cfg = load_config(write_yaml(tmp_path / "cfg.yaml", tiny_config(TWO_LAYER_RIG)))
    data = load_offline_mnist(12, 5)
    live = LiveStatus(tmp_path, "cfg.yaml")
    points = []

    def before_point() -> None:
        points.append(len(points))
        if len(points) == 2:
            request_stop(tmp_path)  # the page's Stop, while the first point's accuracy is known
        live.raise_if_stop_requested()

    with Rig.from_file(TWO_LAYER_RIG) as rig:
        tr = build_trainee(cfg, rig, "plain")
        with pytest.raises(StopRequested):
            evaluate_trainee(cfg, tr, rig, data, [0.0, 1.0, 2.0], progress=False, before_point=before_point)
        assert points == [0, 1]  # stopped before the second point, not after the sweep
        # the bench is back at its rig-file state: an evaluation now equals one never stopped
        again = evaluate_trainee(cfg, tr, rig, data, [0.0], progress=False)
    with Rig.from_file(TWO_LAYER_RIG) as rig:
        fresh = build_trainee(cfg, rig, "plain")
        assert evaluate_trainee(cfg, fresh, rig, data, [0.0], progress=False) == again


def test_a_failing_publication_is_reported_once_and_training_goes_on(tmp_path, capsys):
    from types import SimpleNamespace

    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("a layer that cannot be described")

    live = LiveStatus(tmp_path, "cfg.yaml", interval=0.0)
    rig = SimpleNamespace(identities={}, instruments={}, faulted={}, spec=SimpleNamespace(instruments={}),
                          commands=[], last_read={}, last_frame={})
    trainee = SimpleNamespace(estimator=SimpleNamespace(name="spsa"), backends=[],
                              model=SimpleNamespace(physical=[Broken()]), rig_queries=0, rig_seconds=0.0)
    live.begin("sat", trainee, rig, 5, 1, 0, 0, lambda: 1.0)  # raises inside: must not escape
    live.step(0, 0, torch.tensor(1.0), 0.5)
    live.training_done()
    live.finish("interrupted")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "live status not written" in line]
    assert len(warnings) == 1 and "a layer that cannot be described" in warnings[0]
