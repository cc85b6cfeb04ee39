"""Calibration folders: what a calibration measured, tied to the rig and instruments it measured.

A folder holds ``calibration.yaml`` (rig name, instrument identities, date, temperature
where known, and per step its summary, problems and cost), one ``KIND.npz`` of arrays
and one ``KIND.png`` plot per step, and ``summary.png``. It is written under a hidden
temporary name and renamed into place only when complete, so an interrupted
calibration leaves nothing that could be loaded as one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from satlab.validation import ConfigError, FiniteNonNegative, load_model

FILE = "calibration.yaml"


@dataclass
class StepResult:
    """One calibration step's outcome, as a step function returns it."""

    kind: str  # wiring, rings, crosstalk, weight_map, slm_lut, camera
    summary: dict[str, Any]  # YAML-safe numbers, strings and lists
    arrays: dict[str, np.ndarray]
    queries: int = 0
    rig_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # by ring / region: never fitted silently
    plot: Callable[[Path], None] | None = None  # writes the step's PNG
    files: dict[str, str] = field(default_factory=dict)  # other files by name, e.g. a LUT


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepRecord(_Strict):
    """One step in calibration.yaml."""

    arrays: str
    plot: str | None = None
    queries: int = Field(ge=0)
    rig_seconds: FiniteNonNegative
    problems: list[str] = []
    files: list[str] = []
    summary: dict[str, Any] = {}


class CalibrationMeta(_Strict):
    """The whole calibration.yaml."""

    satlab_calibration: Literal[1]
    rig: str
    created: AwareDatetime
    temperature_K: float | None = None
    instruments: dict[str, str] = Field(description="rig-file name: identity when measured")
    wire: dict[str, dict[str, float]] = Field({}, description="per instrument: line time measured "
                                                            "by its driver during the calibration")
    steps: dict[str, StepRecord] = Field(min_length=1)


def _yaml_safe(obj: Any) -> Any:
    """Numbers from numpy as plain Python, so the YAML stays human-readable."""
    if isinstance(obj, dict):
        return {str(k): _yaml_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_yaml_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _yaml_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_calibration(out: Path, rig_name: str, identities: dict[str, str],
                      steps: list[StepResult], temperature_K: float | None = None,
                      summary_plot: Callable[[Path], None] | None = None,
                      wire: dict[str, dict] | None = None) -> Path:
    """Write a complete calibration folder at ``out`` atomically; refuses to overwrite one."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(out, "-o", "exists and is not an empty folder: a calibration needs its own")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        records = {}
        for step in steps:
            np.savez_compressed(tmp / f"{step.kind}.npz", **step.arrays)
            plot = None
            if step.plot is not None:
                step.plot(tmp / f"{step.kind}.png")
                plot = f"{step.kind}.png"
            for name, text in step.files.items():
                (tmp / name).write_text(text)
            records[step.kind] = {"arrays": f"{step.kind}.npz", "plot": plot, "queries": step.queries,
                                  "rig_seconds": round(step.rig_seconds, 6),
                                  "problems": step.problems, "files": sorted(step.files),
                                  "summary": step.summary}
        meta = {"satlab_calibration": 1, "rig": rig_name,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "temperature_K": temperature_K, "instruments": identities,
                "wire": wire or {}, "steps": records}
        if summary_plot is not None:
            summary_plot(tmp / "summary.png")
        # the yaml last: a folder without it is not a calibration
        (tmp / FILE).write_text(yaml.safe_dump(_yaml_safe(meta), sort_keys=False, width=100))
        for f in tmp.iterdir():
            _sync(f)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
        _sync(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class Calibration:
    """A loaded calibration folder: its metadata, and each step's summary and arrays."""

    def __init__(self, path: Path, meta: CalibrationMeta) -> None:
        self.path, self.meta = path, meta
        self._arrays: dict[str, dict[str, np.ndarray]] = {}

    def has(self, kind: str) -> bool:
        """Whether the calibration measured step ``kind``."""
        return kind in self.meta.steps

    def summary(self, kind: str) -> dict[str, Any]:
        """Step ``kind``'s summary."""
        return self._record(kind).summary

    def _record(self, kind: str) -> StepRecord:
        if kind not in self.meta.steps:
            raise ConfigError(self.path / FILE, "steps", f"has no {kind!r} step (it has "
                              f"{', '.join(self.meta.steps)}); run satlab calibrate --only {kind}")
        return self.meta.steps[kind]

    def arrays(self, kind: str) -> dict[str, np.ndarray]:
        """Every array of step ``kind``."""
        if kind not in self._arrays:
            file = self.path / self._record(kind).arrays
            try:
                with np.load(file, allow_pickle=False) as npz:
                    self._arrays[kind] = {k: npz[k] for k in npz.files}
            except (OSError, ValueError, EOFError) as exc:
                raise ConfigError(file, "", f"unreadable arrays ({type(exc).__name__}: {exc})") from None
        return self._arrays[kind]

    def array(self, kind: str, key: str, shape: tuple[int, ...] | None = None,
              finite: bool = True) -> np.ndarray:
        """One array of step ``kind``, checked for presence, shape and finiteness."""
        arrays, file = self.arrays(kind), self.path / self._record(kind).arrays
        if key not in arrays:
            raise ConfigError(file, key, "missing")
        value = arrays[key]
        if shape is not None and value.shape != tuple(shape):
            raise ConfigError(file, key, f"expected shape {tuple(shape)}, got {value.shape}")
        if finite and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ConfigError(file, key, "expected finite numbers, found nan or inf")
        return value

    def age_days(self, now: datetime | None = None) -> float:
        """Days since the calibration was measured."""
        now = now or datetime.now(UTC)
        return (now - self.meta.created).total_seconds() / 86400

    def mismatches(self, rig_name: str, identities: dict[str, str],
                   max_age_days: float) -> list[tuple[str, str]]:
        """Why this calibration may not describe the rig as it is now, as (field, what):
        empty when it does."""
        found = []
        if self.meta.rig != rig_name:
            found.append(("rig", f"measured on {self.meta.rig!r}, this rig is {rig_name!r}"))
        for name, identity in self.meta.instruments.items():
            now = identities.get(name)
            if now is not None and now != identity:
                found.append((f"instruments.{name}", f"measured on {identity!r}, attached now is {now!r}"))
        age = self.age_days()
        if age > max_age_days:
            found.append(("created", f"{age:.1f} days old, older than {max_age_days:g} days"))
        return found


def load_calibration(path: str | Path) -> Calibration:
    """A calibration folder, validated; ConfigError names the file and field otherwise."""
    path = Path(path)
    if not (path / FILE).is_file():
        partial = path.name.startswith(".") and ".partial-" in path.name
        raise ConfigError(path, "", "an interrupted calibration, not a complete one" if partial else
                          f"not a calibration folder (no {FILE})")
    key = (path.resolve(), (path / FILE).stat().st_mtime_ns)
    if key not in _LOADED:  # a run loads it for the rig file, each layer's twin, each method
        _LOADED[key] = Calibration(path, load_model(path / FILE, CalibrationMeta))
    return _LOADED[key]


_LOADED: dict[tuple[Path, int], Calibration] = {}


def check_calibration(cal: Calibration, rig_name: str, identities: dict[str, str],
                      max_age_days: float, strict: bool, warn: Callable[[str], None]) -> None:
    """Warn about (or, ``strict``, refuse) a calibration of another rig, instrument or age."""
    for where, what in cal.mismatches(rig_name, identities, max_age_days):
        if strict:
            raise ConfigError(cal.path / FILE, where, what + " (--strict)")
        warn(f"warning: {ConfigError(cal.path / FILE, where, what)}")
