"""Atomic, rotated checkpoints: a killed run never leaves a half-written file behind, and a
newest checkpoint that was damaged afterwards still leaves the one before it to resume from."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from satlab.validation import CheckpointError

# what a training checkpoint holds; evaluation needs only the model
TRAINING_KEYS = ("model", "optimizer", "estimator", "rig", "torch_rng", "epoch", "step",
                 "metrics_rows", "wall_seconds", "rig_queries", "rig_seconds", "done")


def previous(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept (checkpoint.prev.pt)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, fsync, keep the old file as ``previous``, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():  # a kill between the renames leaves the previous file: load_latest finds it
            os.replace(path, previous(path))
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:  # the renames themselves survive a power cut only once the folder is synced
            os.fsync(folder)
        finally:
            os.close(folder)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def exists(path: Path) -> bool:
    """Whether ``path`` or the checkpoint before it is on disk."""
    return Path(path).exists() or previous(path).exists()


def set_aside(path: Path) -> Path:
    """Rename an unusable newest checkpoint to *.damaged.pt, so the next save keeps the
    previous one as the fallback instead of rotating the damaged file onto it."""
    path = Path(path)
    aside = path.with_name(f"{path.stem}.damaged{path.suffix}")
    os.replace(path, aside)
    return aside


def misfit(path: Path, exc: Exception) -> CheckpointError:
    """The error for a readable checkpoint whose tensors do not fit the run's model."""
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return CheckpointError(path, f"does not fit this run's model and rig ({first})")


def load(path: Path, required: tuple[str, ...] = TRAINING_KEYS) -> dict:
    """Load a checkpoint (tensors and plain data only: no code runs) and check its keys."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except Exception as exc:  # truncated zip, not a torch file, foreign pickled objects
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"unreadable checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"not a satlab checkpoint (holds a {type(state).__name__})")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(path, f"not a satlab checkpoint (missing {', '.join(missing)})")
    return state


def load_latest(path: Path, required: tuple[str, ...] = TRAINING_KEYS) -> tuple[dict, Path]:
    """The newest usable checkpoint of ``path`` and its file: ``path``, else its previous one.

    Raises the newest file's CheckpointError when neither can be used.
    """
    try:
        return load(path, required), Path(path)
    except CheckpointError as newest:
        if not previous(path).exists():
            raise
        try:
            return load(previous(path), required), previous(path)
        except CheckpointError:
            raise newest from None
