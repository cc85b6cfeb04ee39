"""Where a run's live files are, and the stop request: shared by the training process and the
lab view, without torch (the view server never loads it)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

LIVE_DIR, STATUS_FILE, FRAME_FILE, STOP_FILE = "live", "status.json", "frame.png", "stop"


def live_dir(run_dir: Path | str) -> Path:
    """The folder of a run's live files."""
    return Path(run_dir) / LIVE_DIR


def request_stop(run_dir: Path | str) -> Path:
    """Ask the process training ``run_dir`` to stop after its current step; returns the request file."""
    folder = live_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STOP_FILE
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=STOP_FILE + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{time.time():.3f}\n")  # when it was asked: for people reading the folder
        os.replace(tmp, path)  # appears whole, or not at all
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
