"""Finding runs in the folders ``satlab view`` was given, and reading their files safely.

A run id in a URL is looked up among the run folders found here, never joined to a path;
a file path in a URL is resolved and must stay inside its run folder.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import yaml

from satlab.live_files import LIVE_DIR, STATUS_FILE, live_dir
from satlab.strict_json import finite_or_none

# Files the page shows; anything else in a run folder (checkpoints, weights) is never served.
SERVED_SUFFIXES = {".png", ".json", ".csv", ".yaml"}
MAX_SMALL_FILE = 4 * 1024 * 1024  # config.yaml, summary.json: a larger one is not the run's own
MAX_SUMMARY_DEPTH = 16  # a summary nests 2 deep (drift_sweep: a list of mappings)
SUMMARY_KEYS = ("method", "estimator", "rig", "data", "epochs", "rig_queries", "rig_seconds",
                "wall_seconds", "test_accuracy", "test_images", "drift_sweep")


class FileRefused(Exception):
    """A requested file that is not served: ``status`` 403 (outside the run) or 404 (not there)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Run:
    """A run folder as the page knows it: its id in URLs and its resolved path."""

    id: str
    path: Path

    @property
    def live(self) -> Path:
        return live_dir(self.path)


def is_run(folder: Path) -> bool:
    """A folder that ``satlab train`` writes: its config.yaml, or a live status before that."""
    return (folder / "config.yaml").is_file() or (folder / LIVE_DIR / STATUS_FILE).is_file()


class RunFolders:
    """The runs in the folders given (each a run, or a folder of runs), found afresh on every
    look-up, so runs started after the server appear."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = [Path(p).resolve() for p in paths]

    def runs(self) -> list[Run]:
        """Every run, in the order of the folders given, then by name; ids unique."""
        found: list[Path] = []
        for root in self.paths:
            if is_run(root):
                found.append(root)
                continue
            try:
                children = sorted(root.iterdir())
            except OSError:
                continue
            # a symlinked child may point anywhere: only real folders inside the given one count
            found += [c for c in children if not c.is_symlink() and c.is_dir() and is_run(c)]
        runs, taken = [], set()
        for path in found:
            run_id, n = path.name, 1
            while run_id in taken:  # two runs folders may hold runs of the same name
                n += 1
                run_id = f"{path.name}~{n}"
            taken.add(run_id)
            runs.append(Run(run_id, path))
        return runs

    def get(self, run_id: str) -> Run | None:
        """The run of this id, if there is one."""
        return next((r for r in self.runs() if r.id == run_id), None)


def safe_file(run: Run, relative: str) -> Path:
    """The file ``relative`` names inside ``run``; FileRefused for anything outside it
    (``..``, an absolute path, a symlink out), missing, or of a kind not served."""
    if not relative or "\x00" in relative or "\\" in relative:
        raise FileRefused(403, "not a file path of this run")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts:
        raise FileRefused(403, "paths outside the run folder are not served")
    try:
        resolved = (run.path / pure).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise FileRefused(404, "no such file") from None
    if not resolved.is_relative_to(run.path):  # a symlink pointing out
        raise FileRefused(403, "paths outside the run folder are not served")
    if resolved.suffix.lower() not in SERVED_SUFFIXES:
        raise FileRefused(404, "this kind of file is not served")
    if not resolved.is_file():
        raise FileRefused(404, "no such file")
    return resolved


def file_url(run: Run, relative: str) -> str | None:
    """The page's URL of a served file, with its modification time so a new version reloads;
    None if it is not there (or not served)."""
    try:
        path = safe_file(run, relative)
        version = path.stat().st_mtime_ns
    except (FileRefused, OSError):
        return None
    return f"/files/{quote(run.id, safe='')}/{quote(relative)}?v={version}"


def _read_small(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SMALL_FILE + 1)
    except OSError:
        return None
    return data if len(data) <= MAX_SMALL_FILE else None


def _parse_methods(data: bytes | None) -> tuple[str, ...]:
    """The method names a config.yaml lists (training.methods), those that can be folder names."""
    try:
        cfg = yaml.safe_load(data) if data else None
        listed = cfg["training"]["methods"] if isinstance(cfg, dict) else None
    except Exception:  # noqa: BLE001 (a YAML error, RecursionError when deeply nested, a wrong type)
        return ()
    if not isinstance(listed, list):
        return ()
    return tuple(m for m in listed if isinstance(m, str) and PurePosixPath(m).name == m
                 and m not in ("", ".", ".."))


_CONFIG_METHODS: dict[Path, tuple[tuple[int, int], tuple[str, ...]]] = {}
_CONFIG_LOCK = threading.Lock()
_CONFIG_CACHED = 1024  # runs whose parse is kept: beyond that the oldest is parsed again


def _configured_methods(path: Path) -> tuple[str, ...]:
    """``_parse_methods`` of the file at ``path``, parsed again only when its (mtime_ns, size)
    changes: a live page looks twice a second, the config is written once."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; a missing file is no error)
    except OSError:
        return ()
    with f:
        try:
            st = os.fstat(f.fileno())
        except OSError:
            return ()
        version = (st.st_mtime_ns, st.st_size)
        with _CONFIG_LOCK:
            cached = _CONFIG_METHODS.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            data = f.read(MAX_SMALL_FILE + 1)
        except OSError:
            return ()
    listed = _parse_methods(data if len(data) <= MAX_SMALL_FILE else None)
    with _CONFIG_LOCK:
        _CONFIG_METHODS.pop(path, None)
        while len(_CONFIG_METHODS) >= _CONFIG_CACHED:
            del _CONFIG_METHODS[next(iter(_CONFIG_METHODS))]
        _CONFIG_METHODS[path] = (version, listed)
    return listed


def methods(run: Run) -> list[str]:
    """The run's methods: its config's, in order, then any other folder with metrics or a summary."""
    names = list(_configured_methods(run.path / "config.yaml"))
    try:
        folders = sorted(p.name for p in run.path.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        folders = []
    for name in folders:
        if name not in names and ((run.path / name / "metrics.csv").is_file()
                                  or (run.path / name / "summary.json").is_file()):
            names.append(name)
    return list(dict.fromkeys(names))


def summary(run: Run, method: str) -> dict | None:
    """The parts of a method's summary.json the page shows (None if absent or unreadable)."""
    try:
        path = safe_file(run, f"{method}/summary.json")
    except FileRefused:
        return None
    data = _read_small(path)
    try:
        raw = json.loads(data) if data else None
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    if not isinstance(raw, dict):
        return None
    # a value nested deeper than a summary's would overflow the stack of whatever walks it next
    return finite_or_none({k: raw[k] for k in SUMMARY_KEYS if k in raw and _shallow(raw[k])})


def _shallow(value, depth: int = MAX_SUMMARY_DEPTH) -> bool:
    """``value`` is at most ``depth`` lists or mappings deep (walked without recursion)."""
    level = [value]
    for _ in range(depth):
        level = [v for x in level if isinstance(x, (list, dict))
                 for v in (x.values() if isinstance(x, dict) else x)]
    return not any(isinstance(x, (list, dict)) for x in level)


def images(run: Run) -> list[dict[str, str]]:
    """The run's report.png and sweep plots (``satlab evaluate``), each with its URL."""
    try:
        names = sorted(p.name for p in run.path.glob("sweep-*.png"))
    except OSError:
        names = []
    out = []
    for name in ["report.png", *names]:
        url = file_url(run, name)
        if url:
            out.append({"name": name, "url": url})
    return out


def last_modified(run: Run, names: list[str]) -> float | None:
    """The newest modification time of the run's metrics, summaries and live status."""
    paths = [run.live / STATUS_FILE, run.path / "config.yaml"]
    for m in names:
        paths += [run.path / m / "metrics.csv", run.path / m / "summary.json"]
    times = []
    for p in paths:
        try:
            times.append(os.stat(p).st_mtime)
        except OSError:
            pass
    return max(times, default=None)
