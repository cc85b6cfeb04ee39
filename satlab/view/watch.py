"""What the run page shows, gathered from a run's files, and what changed since last time."""

from __future__ import annotations

from typing import Any

from satlab.live_files import LIVE_DIR, STATUS_FILE
from satlab.strict_json import finite_or_none
from satlab.view import runs
from satlab.view.metrics import MetricsTail
from satlab.view.runs import Run
from satlab.view.status import process_gone, read_status


def run_state(status: dict | None, note: str | None, finished: bool) -> dict[str, Any]:
    """The state the page shows, why, and whether the Stop button belongs on it."""
    if status is not None and "state" in status:
        if process_gone(status):
            return {"state": "gone", "can_stop": False,
                    "note": f"{STATUS_FILE} says running, but its process is gone (killed?)"}
        return {"state": status["state"], "can_stop": status["state"] == "running", "note": note}
    if finished:
        return {"state": "finished", "can_stop": False, "note": note}
    return {"state": "unknown", "can_stop": False,
            "note": note or "no live status (a run of an older satlab, or not started yet)"}


def unreadable(exc: Exception) -> str:
    """The page's note for a run whose files could not be read."""
    return f"the run's files could not be read: {type(exc).__name__}: {str(exc)[:200]}"


def method_summaries(run: Run) -> tuple[list[str], dict[str, dict | None], bool]:
    """The run's methods, each one's summary (None until it has finished), and whether all have."""
    names = runs.methods(run)
    summaries = {m: runs.summary(run, m) for m in names}
    return names, summaries, bool(names) and all(summaries.values())


def index_entry(run: Run) -> dict[str, Any]:
    """One line of the index: name, methods, state, last update, test accuracies."""
    status, note = read_status(run.live / STATUS_FILE)
    names, summaries, finished = method_summaries(run)
    updated = (status or {}).get("updated") or runs.last_modified(run, names)
    return finite_or_none({
        "id": run.id, "methods": names, **run_state(status, note, finished), "updated": updated,
        "accuracy": {m: s["test_accuracy"] for m, s in summaries.items()
                     if s and isinstance(s.get("test_accuracy"), (int, float))},
    })


class RunWatcher:
    """Polls one run's files; :meth:`poll` returns what changed since its last call (everything,
    with ``reset``, the first time), or None."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.tails: dict[str, MetricsTail] = {}
        self.sent: dict[str, Any] = {}
        self.status: dict | None = None  # the last good status: a half-written file keeps it
        self.resend = True  # the next poll sends everything, with reset
        self.failure: str | None = None  # the note of the last failed poll, sent once

    def poll(self) -> dict[str, Any] | None:
        """The changes: keys status, methods, metrics, summaries, images, frame (as they change)."""
        run, first = self.run, self.resend
        if first:
            self.tails = {}
        status, note = read_status(run.live / STATUS_FILE)
        if status is not None or note is None:  # read, or gone: else keep the last good one
            self.status = status
        names, summaries, finished = method_summaries(run)
        state = run_state(self.status, note, finished)
        current = {
            "status": {**state, "status": self.status or {}},
            "methods": names,
            "summaries": summaries,
            "images": runs.images(run),
            "frame": self._frame(),
        }
        changes = {k: v for k, v in current.items() if first or self.sent.get(k) != v}
        self.sent.update(changes)
        metrics = {}
        for m in names:
            tail = self.tails.setdefault(m, MetricsTail(run.path / m / "metrics.csv"))
            if (new := tail.poll()) is not None:
                metrics[m] = new
        if metrics:
            changes["metrics"] = metrics
        self.resend, self.failure = False, None
        if not changes:
            return None
        return finite_or_none({"reset": first, "run": run.id, **changes})

    def failed(self, exc: Exception) -> dict[str, Any] | None:
        """After :meth:`poll` raised: the page's state as last sent with a note saying why it
        is not updated (None if that note was already sent); the next good poll sends
        everything again, so nothing half-read stays on the page."""
        note = unreadable(exc)
        self.resend = True
        if note == self.failure:
            return None
        self.failure = note
        shown = self.sent.get("status") or {"state": "unknown", "can_stop": False, "status": {}}
        return finite_or_none({"reset": False, "run": self.run.id,
                               "status": {**shown, "note": note}})

    def _frame(self) -> dict | None:
        """The camera frame's URL (new with each frame) and its detector regions."""
        camera = (self.status or {}).get("camera")
        if not camera or "frame" not in camera:
            return None
        url = runs.file_url(self.run, f"{LIVE_DIR}/{camera['frame']}")
        return {"url": url, **{k: camera[k] for k in ("instrument", "rows", "cols", "regions")
                               if k in camera}} if url else None
