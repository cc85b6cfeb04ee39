"""Where a run's live files are, their columns, and the stop request: shared by the training
process and the lab view, without torch (the view server never loads it)."""

from __future__ import annotations

import time
from pathlib import Path

from satlab import atomic_file

LIVE_DIR, STATUS_FILE, FRAME_FILE, STOP_FILE = "live", "status.json", "frame.png", "stop"
# a method's metrics.csv, appended while it trains
METRIC_FIELDS = ("epoch", "step", "loss", "accuracy", "rig_queries", "rig_seconds", "wall_seconds")


def live_dir(run_dir: Path | str) -> Path:
    """The folder of a run's live files."""
    return Path(run_dir) / LIVE_DIR


def request_stop(run_dir: Path | str) -> Path:
    """Ask the process training ``run_dir`` to stop after its current step; returns the request file."""
    folder = live_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STOP_FILE
    # appears whole or not at all; its text, when it was asked, is for people reading the folder
    atomic_file.write_text(path, f"{time.time():.3f}\n")
    return path
