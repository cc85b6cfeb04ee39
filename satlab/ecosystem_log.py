"""Training runs logged to the tools ML users already use: TensorBoard and MLflow.

``satlab train --log tensorboard --log mlflow`` sends each logged step's scalars (the
numbers of metrics.csv), the config, the final test accuracy and drift sweep, and the
report to either or both. TensorBoard event files go to ``RUN/tensorboard/METHOD``;
MLflow runs (one per method) to ``$MLFLOW_TRACKING_URI``, or else a file store in
``RUN/mlruns``. Both are optional packages (the ``log`` extra), imported only when asked
for; a logger that fails mid-run is reported once and dropped: logging never stops a
bench run.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from satlab import strict_json
from satlab.live_files import METRIC_FIELDS
from satlab.validation import ConfigError

KINDS = ("tensorboard", "mlflow")
EXTRA = "log"  # pyproject's optional dependencies
SCALARS = METRIC_FIELDS[2:6]  # metrics.csv's columns that are logged: loss to rig_seconds


def check_available(kinds: list[str]) -> None:
    """ConfigError naming the extra to install unless every logger asked for imports (before
    a rig opens)."""
    for kind in kinds:
        try:
            _import(kind)
        except ImportError:
            package = "tensorboard" if kind == "tensorboard" else "mlflow (or mlflow-skinny)"
            raise ConfigError("--log", kind, f"needs {package}, which is not installed; install "
                              f"the {EXTRA} extra: pip install 'satlab[{EXTRA}]'") from None


def _import(kind: str) -> Any:
    if kind == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter  # ImportError without tensorboard

        return SummaryWriter
    if kind == "mlflow":
        import mlflow

        return mlflow
    raise ValueError(f"unknown logger {kind!r}; expected one of {', '.join(KINDS)}")


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow parameters: dotted keys, values as text (at most 500 chars)."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = re.sub(r"[^\w\-. /]", "_", f"{prefix}{key}")
        if isinstance(value, dict) and value:
            params.update(flat_params(value, f"{name}."))
        else:
            params[name] = str(value)[:500]
    return params


def drift_key(drift_K: float) -> str:
    """The scalar name of one drift point's test accuracy."""
    return f"drift/accuracy_at_{drift_K:g}K"


class TensorBoardLog:
    """One SummaryWriter per method, in RUN/tensorboard/METHOD."""

    def __init__(self, run_dir: Path) -> None:
        self.SummaryWriter = _import("tensorboard")
        self.root = run_dir / "tensorboard"
        self.writers: dict[str, Any] = {}
        self.steps: dict[str, int] = {}
        self.writer: Any = None
        self.method = ""

    def start_method(self, method: str, estimator: str, first_step: int, config_text: str) -> None:
        """Open the method's writer; events at or after ``first_step`` from an earlier process
        (logged after its last checkpoint) are purged."""
        self.writer = self.SummaryWriter(str(self.root / method), purge_step=first_step, flush_secs=10)
        self.method = method
        self.writers[method], self.steps[method] = self.writer, first_step
        self.writer.add_text("config", "    " + config_text.replace("\n", "\n    "), first_step)

    def on_metrics(self, step: int, row: dict[str, float]) -> None:
        """One logged step's scalars."""
        for key in SCALARS:
            self.writer.add_scalar(key, row[key], step)
        self.steps[self.method] = step

    def on_summary(self, summary: dict) -> None:
        """Test accuracy and the drift sweep, at the method's last step."""
        step = self.steps[self.method]
        self.writer.add_scalar("test_accuracy", summary["test_accuracy"], step)
        for point in summary.get("drift_sweep", []):
            self.writer.add_scalar(drift_key(point["drift_K"]), point["accuracy"], step)
        self.writer.add_text("summary", "    " + strict_json.dumps(summary).replace("\n", "\n    "), step)

    def end_method(self, status: str) -> None:
        """The method's events to disk now (its writer stays open for the report)."""
        self.writer.flush()

    def on_report(self, path: Path) -> None:
        """The report as an image in every method's writer."""
        from matplotlib.image import imread

        image = imread(path)
        for method, writer in self.writers.items():
            writer.add_image("report", image, self.steps[method], dataformats="HWC")

    def close(self, status: str) -> None:
        """Flush and close every writer."""
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


class MlflowLog:
    """One MLflow run per method, in $MLFLOW_TRACKING_URI or RUN/mlruns."""

    def __init__(self, run_dir: Path, experiment: str) -> None:
        _import("mlflow")
        self.run_dir, self.experiment = run_dir, os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
        self.client: Any = None  # made at the first method: a file store creates its folder
        self.run_ids: dict[str, str] = {}
        self.run_id: str | None = None
        self._step = 0  # the method's last logged step: where its summary goes

    def _connect(self) -> Any:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # MLflow 3 keeps its file store in "maintenance mode" behind this switch; a file
            # store in the run folder needs no server or database and travels with the run
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (self.run_dir / "mlruns").resolve().as_uri()
        return MlflowClient(uri)

    def start_method(self, method: str, estimator: str, first_step: int, config_text: str) -> None:
        """Continue the method's MLflow run (a resume) or start one with the config as params."""
        if self.client is None:
            self.client = self._connect()
        found = self.client.get_experiment_by_name(self.experiment)
        experiment = found.experiment_id if found else self.client.create_experiment(self.experiment)
        id_file = self.run_dir / method / "mlflow_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else None
        if run_id is not None:
            try:
                self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
            except Exception:  # another store, or a run deleted since: start a new one
                run_id = None
        if run_id is None:
            run = self.client.create_run(experiment, run_name=f"{self.run_dir.name}/{method}", tags={
                "satlab.run": str(self.run_dir.resolve()), "satlab.method": method,
                "satlab.estimator": estimator})
            run_id = run.info.run_id
            id_file.write_text(run_id + "\n")
            self._params(run_id, yaml.safe_load(config_text) or {})
            self.client.log_text(run_id, config_text, "config.yaml")
        self.run_id = self.run_ids[method] = run_id
        self._step = first_step

    def _params(self, run_id: str, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flat_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run_id, params=params[i:i + 100])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                    for k, v in values.items()])
        self._step = step

    def on_metrics(self, step: int, row: dict[str, float]) -> None:
        """One logged step's scalars."""
        self._metrics({k: row[k] for k in SCALARS}, step)

    def on_summary(self, summary: dict) -> None:
        """Test accuracy, the drift sweep and summary.json."""
        values = {"test_accuracy": summary["test_accuracy"]}
        values.update({drift_key(p["drift_K"]): p["accuracy"] for p in summary.get("drift_sweep", [])})
        self._metrics(values, self._step)
        self.client.log_text(self.run_id, strict_json.dumps(summary), "summary.json")

    def end_method(self, status: str) -> None:
        """End the method's run (FINISHED, KILLED or FAILED)."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            self.run_id = None

    def on_report(self, path: Path) -> None:
        """The report as an artifact of every method's run."""
        for run_id in self.run_ids.values():
            self.client.log_artifact(run_id, str(path))

    def close(self, status: str) -> None:
        """End a run still open (an interrupted or failed method)."""
        self.end_method(status)


class EcosystemLog:
    """What the training loop tells TensorBoard and/or MLflow, fanned out to those asked for."""

    def __init__(self, kinds: list[str], run_dir: Path, experiment: str) -> None:
        self.run_dir = Path(run_dir)
        self.sinks: list[Any] = [TensorBoardLog(self.run_dir) if kind == "tensorboard"
                                 else MlflowLog(self.run_dir, experiment) for kind in dict.fromkeys(kinds)]

    def _each(self, call: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, call)(*args)
            except Exception as exc:  # a logging server down must not stop the bench
                print(f"{type(sink).__name__}: {call} failed ({type(exc).__name__}: {exc}); "
                      "this run logs no more to it", file=sys.stderr)
                self.sinks.remove(sink)

    def start_method(self, method: str, estimator: str, first_step: int) -> None:
        """A method starts, or resumes at global step ``first_step``."""
        config_text = (self.run_dir / "config.yaml").read_text()
        self._each("start_method", method, estimator, first_step, config_text)

    def on_metrics(self, step: int, row: dict[str, float]) -> None:
        """One row of metrics.csv at global step ``step`` (0-based over all epochs)."""
        self._each("on_metrics", step, row)

    def on_summary(self, summary: dict) -> None:
        """The method's summary.json: final test accuracy and drift sweep."""
        self._each("on_summary", summary)

    def end_method(self, status: str = "FINISHED") -> None:
        """The method is done (status as MLflow names it)."""
        self._each("end_method", status)

    def on_report(self, path: Path) -> None:
        """The run's report.png, once written."""
        if Path(path).exists():
            self._each("on_report", Path(path))

    def close(self, status: str = "FINISHED") -> None:
        """Training ended (FINISHED, KILLED or FAILED): end open runs, flush and close."""
        self._each("close", status)
