"""Live status of a training process: what the lab view shows, and how it asks for a stop.

A training process publishes its state to ``RUN/live/status.json`` (format version 1,
docs/live-status-format.md), replaced atomically at most 4 times a second, and the first
camera's latest frame to ``RUN/live/frame.png`` at most once a second. It publishes only
what the process already holds (the model's controls, the layers' counters, the rig's
identities, command log and last readings): viewing never touches an instrument, and a
step whose publication is throttled away costs one clock reading.

A stop is asked for by creating ``RUN/live/stop`` (:func:`satlab.live_files.request_stop`); the training
loop looks for it once per step and stops between steps as Ctrl-C would, after
checkpointing the completed step.
"""

from __future__ import annotations

import functools
import io
import itertools
import os
import socket
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from satlab import atomic_file, strict_json
from satlab.live_files import FRAME_FILE, STATUS_FILE, STOP_FILE, live_dir

if TYPE_CHECKING:
    from satlab.physical_layer import PhysicalLayer
    from satlab.rig import Rig
    from satlab.training import Trainee

VERSION = 1
CONTROL_CELLS = 64  # a layer's controls are shown on at most 64 x 64 cells
FRAME_PIXELS = 256  # frame.png has at most 256 pixels a side
COMMANDS = 20
# Internal switch (benchmarks/live_status_overhead.py): SATLAB_LIVE_STATUS=0 publishes nothing.
SWITCH = "SATLAB_LIVE_STATUS"


class StopRequested(KeyboardInterrupt):
    """The lab view asked the training to stop: handled exactly as Ctrl-C between steps."""


def publishing_enabled() -> bool:
    """Whether ``satlab train`` publishes its live status (always, unless switched off for a benchmark)."""
    return os.environ.get(SWITCH, "1") != "0"


def block_mean(a: np.ndarray, most: int) -> np.ndarray:
    """A 2-D array averaged over blocks so that neither side exceeds ``most`` cells."""
    for axis in (0, 1):
        n = a.shape[axis]
        if n > most:
            starts = np.linspace(0, n, most + 1).astype(int)[:-1]  # strictly increasing: n > most
            counts = np.diff(np.append(starts, n))
            sums = np.add.reduceat(a, starts, axis=axis)
            a = sums / (counts[:, None] if axis == 0 else counts[None, :])
    return a


def summarise(value: object) -> str:
    """A command's value in a few words: an array as its shape and range, never whole."""
    if value is None:
        return ""
    if isinstance(value, np.ndarray) and value.ndim > 0:
        shape = "x".join(map(str, value.shape))
        if value.size == 0 or not np.issubdtype(value.dtype, np.number):
            return f"{shape} {value.dtype}"
        return f"{shape} min {value.min():.4g} max {value.max():.4g}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)[:80]


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def layer_status(layer: PhysicalLayer) -> dict:
    """One physical layer's entry: counters, controls as fractions of their range, power, knobs."""
    b = layer.backend
    space = b.controls
    c = layer.controls.detach()
    span = space.upper - space.lower
    frac = torch.where(span > 0, (c - space.lower) / torch.where(span > 0, span, 1), 0.0)
    frac = frac.clamp(0, 1).numpy()
    rows, cols = b.control_grid()
    if rows * cols != frac.size:  # a grid that does not fit: show the controls as one row
        rows, cols = 1, frac.size
    grid = block_mean(frac.reshape(rows, cols), CONTROL_CELLS)
    power = None
    if b.max_sum_sq is not None:
        power = {"used": float(c.pow(2).sum()), "budget": float(b.max_sum_sq), "unit": "A^2"}
    return {
        "name": b.name, "quantity": space.quantity, "unit": space.unit,
        "queries": b.queries, "rig_seconds": b.seconds,
        "controls": {"rows": grid.shape[0], "cols": grid.shape[1],
                     "fraction": np.round(grid, 4).ravel().tolist(),
                     "min": float(c.min()) if c.numel() else None,
                     "max": float(c.max()) if c.numel() else None,
                     "lower": float(space.lower.min()) if c.numel() else None,
                     "upper": float(space.upper.max()) if c.numel() else None},
        "power": power,
        "knobs": [{"positioner": k.positioner, "axis": k.axis, "position": float(b.alignment[i]),
                   "travel": [float(k.travel[0]), float(k.travel[1])]}
                  for i, k in enumerate(b.knobs)],
    }


def recent_commands(rig: Rig, count: int = COMMANDS) -> list[dict]:
    """The rig's last ``count`` commands, oldest first, values summarised."""
    last = list(itertools.islice(reversed(rig.commands), count))[::-1]
    return [{"time": c.time, "instrument": c.instrument, "action": c.action,
             "value": summarise(c.value)} for c in last]


def _never_raises(method: Callable) -> Callable:
    """A publication that fails is reported once and skipped: the view must never stop training."""
    @functools.wraps(method)
    def guarded(self: LiveStatus, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever it was, training goes on
            self._warn(exc)
    return guarded


class LiveStatus:
    """Publishes one ``satlab train`` process's state to RUN/live/ for the lab view."""

    def __init__(self, run_dir: Path | str, config: str, interval: float = 0.25,
                 frame_interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.dir = live_dir(self.run_dir)
        self.stop_path = self.dir / STOP_FILE
        self._stop = str(self.stop_path)  # checked every step: no Path arithmetic there
        self.config, self.interval, self.frame_interval = config, interval, frame_interval
        self.clock = clock
        self.started, self.host = time.time(), socket.gethostname()
        self._next = 0.0  # time.monotonic() of the next publication
        self._next_frame = 0.0
        self._frame_written: Callable[[], Any] = lambda: None  # a weak reference: frames are large
        self._camera_name: str | None = None
        self._regions: list[list[int]] = []
        self._camera: dict | None = None
        self._trainee: Trainee | None = None
        self._rig: Rig | None = None
        self._wall: Callable[[], float] = lambda: 0.0
        self._method, self._estimator, self._steps, self._epochs = "", "", 0, 0
        self._at: tuple[int, int, Any, Any] = (0, -1, None, None)  # epoch, step, loss, accuracy
        self._identities: dict[str, str] = {}
        self._faults: dict[str, str] = {}
        self._trained: dict | None = None  # the status when training ended, before evaluation
        self._warned = False
        self.clear_stop()  # a request left from an earlier process is not this one's

    # -- what the training loop calls ---------------------------------------------------
    @_never_raises
    def begin(self, method: str, trainee: Trainee, rig: Rig, steps_per_epoch: int, epochs: int,
              epoch: int, step: int, wall: Callable[[], float]) -> None:
        """A method starts (or resumes) at ``epoch``, ``step`` (the next step to run)."""
        self._method, self._estimator = method, trainee.estimator.name
        self._trainee, self._rig, self._wall = trainee, rig, wall
        self._steps, self._epochs = steps_per_epoch, epochs
        self._at = (epoch, step - 1, None, None)
        self._identities.update(rig.identities)  # the rig forgets them when it closes
        self._trained = None
        cameras = [n for n, dev in rig.instruments.items() if dev.kind == "camera"]
        self._camera_name = cameras[0] if cameras else None
        if self._camera_name is not None:  # the first PNG costs ~0.5 s of imports: not mid-training
            from matplotlib.image import imsave

            imsave(io.BytesIO(), np.zeros((2, 2)), cmap="gray", format="png")
        self._regions = []
        for backend in trainee.backends:
            read = backend.camera_regions()
            if read is not None and read[0] == self._camera_name:
                self._regions = read[1]
                break
        self._publish("running", force_frame=True)

    @_never_raises
    def step(self, epoch: int, step: int, loss: Any, accuracy: float) -> None:
        """Step ``step`` of ``epoch`` is done; published unless one was published < interval ago."""
        self._at = (epoch, step, loss, accuracy)
        if self.clock() < self._next:
            return
        self._publish("running")

    def stop_requested(self) -> bool:
        """Whether the lab view has asked this run to stop."""
        return os.path.exists(self._stop)

    def raise_if_stop_requested(self) -> None:
        """StopRequested if the lab view has asked this run to stop (between evaluation points)."""
        if self.stop_requested():
            raise StopRequested()

    @_never_raises
    def training_done(self) -> None:
        """Training ended (evaluation follows): publish, and keep these counters for the end."""
        self._trained = self._publish("running", force_frame=True)

    @_never_raises
    def end_method(self) -> None:
        """The method finished (trained, evaluated, summarised): state finished, with the
        counters of its training (what summary.json reports)."""
        status = self._trained or self._status("finished", None)
        self._trained = None
        self._write({**status, "state": "finished", "updated": time.time()})

    @_never_raises
    def finish(self, state: str, error: str | None = None, exc: BaseException | None = None) -> None:
        """Training stopped for good (after the rig was made safe): publish the final state,
        and consume any stop request."""
        role = getattr(exc, "role", None)
        if role:  # the rig forgets its faults when it closes: the exception still names it
            self._faults.setdefault(role, self._fault_text(exc))
        # a run whose files were written; never a --run-dir that a failed rig left empty
        if self._rig is not None or (self.run_dir / "config.yaml").exists():
            self._publish(state, error, force_frame=True)
        self.clear_stop()

    def clear_stop(self) -> None:
        """Remove the stop request, if any."""
        try:
            self.stop_path.unlink(missing_ok=True)
        except OSError:
            pass

    # -- publication ---------------------------------------------------------------------
    def _publish(self, state: str, error: str | None = None, force_frame: bool = False) -> dict:
        now = self.clock()
        self._next = now + self.interval
        status = self._status(state, error)
        self._write_frame(now, force_frame)
        status["camera"] = self._camera
        self._write(status)
        return status

    def _write(self, status: dict) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            strict_json.write_atomic(self.dir / STATUS_FILE, status, indent=None, durable=False)
        except OSError as exc:  # the view is a convenience: it must never stop training
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            print(f"live status not written ({exc}); training goes on", file=sys.stderr)
            self._warned = True

    @staticmethod
    def _fault_text(fault: Any) -> str:
        if all(hasattr(fault, a) for a in ("instrument", "command", "reply")):
            return f"{fault.instrument}: {fault.command!r} -> {fault.reply}"
        return str(fault)

    def _status(self, state: str, error: str | None) -> dict:
        epoch, step, loss, accuracy = self._at
        tr, rig = self._trainee, self._rig
        if rig is not None:
            for name, fault in rig.faulted.items():
                self._faults.setdefault(name, self._fault_text(fault))
        names = list(rig.spec.instruments) if rig is not None else list(self._identities)
        return {
            "version": VERSION, "pid": os.getpid(), "host": self.host, "run": str(self.run_dir),
            "config": self.config, "method": self._method, "estimator": self._estimator,
            "state": state, "error": error, "updated": time.time(), "started": self.started,
            "epoch": epoch, "step": step, "steps_per_epoch": self._steps, "epochs": self._epochs,
            "loss": _number(loss), "accuracy": _number(accuracy),
            "rig_queries": tr.rig_queries if tr else 0,
            "rig_seconds": tr.rig_seconds if tr else 0.0,
            "wall_seconds": self._wall(),
            "layers": [layer_status(layer) for layer in tr.model.physical] if tr else [],
            "detectors": {name: {"values": row.tolist(), "unit": "W"}
                          for name, row in (rig.last_read.items() if rig else ())},
            "camera": self._camera,
            "instruments": {name: {"identity": self._identities.get(name, ""),
                                   "fault": self._faults.get(name)} for name in names},
            "commands": recent_commands(rig) if rig is not None else [],
        }

    def _write_frame(self, now: float, force: bool) -> None:
        """The first camera's latest frame as frame.png, at most once per frame_interval."""
        if self._rig is None or self._camera_name is None:
            return
        frame = self._rig.last_frame.get(self._camera_name)
        if frame is None or self._frame_written() is frame or (now < self._next_frame and not force):
            return
        self._next_frame = now + self.frame_interval
        try:
            self._save_png(frame)
        except OSError as exc:
            self._warn(exc)
            return
        self._frame_written = weakref.ref(frame)
        self._camera = {"instrument": self._camera_name, "frame": FRAME_FILE,
                        "rows": int(frame.shape[0]), "cols": int(frame.shape[1]),
                        "regions": self._regions, "updated": time.time()}

    def _save_png(self, frame: np.ndarray) -> None:
        from matplotlib.image import imsave  # what pyplot.imsave is; no figure, no backend

        small = block_mean(np.asarray(frame, dtype=np.float32), FRAME_PIXELS)
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_file.replacing(self.dir / FRAME_FILE) as tmp:
            imsave(tmp, small, cmap="gray", format="png")
