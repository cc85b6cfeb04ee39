"""The study file: methods × seeds × systems × imperfection grids, checked whole before any cell runs."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, ValidationError, field_validator

from satlab.config import RunConfig
from satlab.rigfile import Strict, load_rig_file
from satlab.sweeps import Axis, SweepOptionError, parse_axes
from satlab.validation import (
    ConfigError,
    FinitePositive,
    describe_validation_error,
    load_model,
    read_yaml,
)

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class SharpnessSpec(Strict):
    """Sharpness in control space, measured on each trained model."""

    images: PositiveInt = Field(256, description="training images the loss is measured on (the first N)")
    hessian_iters: PositiveInt = Field(50, description="power iterations for the top Hessian eigenvalue")
    trace_samples: int = Field(20, ge=2, description="Hutchinson samples for the Hessian trace (a "
                                                     "standard error needs two)")
    bench_rho: FinitePositive | None = Field(None, description=(
        "radius (controls' unit) of the bench-measured sharpness: the largest loss rise found by "
        "perturbative ascent on the rig; none: not measured"))
    bench_steps: PositiveInt = 3
    bench_directions: PositiveInt = Field(8, description="SPSA directions per ascent step and layer")


class StudyFile(Strict):
    """A whole study file."""

    name: str = Field(pattern=NAME, description="names the study folder")
    config: Path = Field(description="the training config every cell starts from")
    out: Path | None = Field(None, description=(
        "the study folder, relative to the study file; default studies/<name> in the working directory"))
    systems: dict[str, Path] = Field({}, description=(
        "name -> rig file; each cell trains on one (default: the config's rig, named by its file)"))
    methods: dict[str, dict] = Field(min_length=1, description=(
        "name -> changes to the config for this method (deep-merged); training.methods defaults "
        "to [name]"))
    seeds: list[int] = Field(min_length=1)
    sweeps: list[dict[str, str]] = Field([], description=(
        "imperfection grids: each a mapping name -> 'start:stop:count' or 'a,b,c' (2 names: a 2-D grid)"))
    draws: PositiveInt = Field(1, description="realisations of random imperfections per point")
    bn: Literal["eval", "batch"] = "eval"
    sharpness: SharpnessSpec | None = None

    @field_validator("methods", "systems")
    @classmethod
    def _names(cls, v: dict) -> dict:
        for key in v:
            if not isinstance(key, str) or not re.match(NAME, key):
                raise ValueError(f"{key!r}: names are letters, digits, '.', '_', '-'")
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or min(v) < 0:
            raise ValueError("seeds must be distinct integers >= 0")
        return v


@dataclass(frozen=True)
class Cell:
    """One independent unit of a study: a method trained with a seed on a system, then evaluated."""

    system: str
    method: str
    seed: int
    config: dict  # the resolved training config (JSON-able), training.seed set
    simulated: bool  # every instrument simulated: may fan out; otherwise it runs where the rig is
    digest: str  # of everything that decides the cell's result

    @property
    def id(self) -> str:
        """``system-method-s<seed>``: the cell's folder and result name."""
        return f"{self.system}-{self.method}-s{self.seed}"


@dataclass(frozen=True)
class Study:
    """A validated study: where it writes, its cells and what each cell measures."""

    path: Path
    spec: StudyFile
    out: Path
    cells: list[Cell]
    sweeps: list[tuple[Axis, ...]]


def _merged(base: dict, change: dict) -> dict:
    """``base`` with ``change`` applied, mappings merged key by key."""
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _absolute(data: dict, folder: Path) -> dict:
    """A config mapping whose file paths (rig, data_dir, init_from) no longer depend on ``folder``."""
    data = copy.deepcopy(data)
    for section, key in ((None, "rig"), ("data", "data_dir"), ("model", "init_from")):
        holder = data if section is None else data.get(section)
        if isinstance(holder, dict) and isinstance(holder.get(key), str):
            holder[key] = str((folder / holder[key]).resolve())
    return data


def _simulated(spec) -> bool:
    return all(r.driver.startswith("simulated.") for r in spec.resources.values()) and all(
        i.driver.startswith("simulated.") for i in spec.instruments.values())


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_study(path: str | Path, out: Path | None = None) -> Study:
    """Validate a study file and everything it names; ConfigError (file, field) for the first problem."""
    from satlab.systems import system_for
    from satlab.training import check_model_matches_rig

    path = Path(path)
    spec = load_model(path, StudyFile)
    folder = path.parent
    config_path = (folder / spec.config).resolve()
    base = _absolute(read_yaml(config_path), config_path.parent)
    load_model(config_path, RunConfig, copy.deepcopy(base))  # the config alone is valid
    systems = {name: (folder / rig).resolve() for name, rig in spec.systems.items()} or {
        Path(base["rig"]).stem: Path(base["rig"])}
    rigs = {}
    for name, rig in systems.items():
        if not rig.is_file():
            raise ConfigError(path, f"systems.{name}", f"no rig file at {rig}")
        rigs[name] = load_rig_file(rig)
    sweeps: list[tuple[Axis, ...]] = []
    for name, rig_spec in rigs.items():
        imperfections = system_for(rig_spec, systems[name]).imperfections
        if spec.sweeps and not _simulated(rig_spec):
            raise ConfigError(path, "sweeps", f"system {name} ({systems[name]}) has real instruments; "
                              "imperfection sweeps set a simulated bench")
        axes_of_system = []
        for i, grid in enumerate(spec.sweeps):
            if not grid or len(grid) > 2:
                raise ConfigError(path, f"sweeps.{i}", "expected 1 or 2 imperfections (a 1-D or 2-D grid)")
            try:
                axes_of_system.append(parse_axes([f"{k}={v}" for k, v in grid.items()], None, "",
                                                 imperfections))
            except SweepOptionError as exc:
                raise ConfigError(path, f"sweeps.{i}", f"system {name}: {exc}") from None
        sweeps = sweeps or axes_of_system
    cells = []
    for method, change in spec.methods.items():
        if not isinstance(change, dict):
            raise ConfigError(path, f"methods.{method}", "expected a mapping of config changes ({} for none)")
        change = _absolute(change, folder)
        training = change.setdefault("training", {})
        if not isinstance(training, dict):
            raise ConfigError(path, f"methods.{method}.training", "expected a mapping")
        training.setdefault("methods", [method])
        for system, rig in systems.items():
            for seed in spec.seeds:
                data = _merged(base, {**change, "rig": str(rig), "name": f"{system}-{method}-s{seed}"})
                data["training"]["seed"] = seed
                # the study's sweeps are the cell's evaluation: training's own drift sweep
                # would score the same points again, so it measures the nominal point only
                data.setdefault("evaluation", {})["drift"] = "0"
                try:
                    cfg = RunConfig.model_validate(data)
                except ValidationError as err:
                    e = describe_validation_error(path, err, RunConfig)
                    raise ConfigError(path, f"methods.{method}.{e.field}", e.expected) from None
                if len(cfg.training.methods) != 1:
                    raise ConfigError(path, f"methods.{method}.training.methods",
                                      f"a study method trains one method, got {cfg.training.methods}")
                try:
                    check_model_matches_rig(cfg, rigs[system], path)
                except ConfigError as exc:
                    raise ConfigError(path, f"methods.{method} on systems.{system}",
                                      f"{exc.field}: {exc.expected}" if exc.field else exc.expected) from None
                resolved = cfg.model_dump(mode="json")
                digest = _digest([resolved, rigs[system].model_dump(mode="json"), spec.sweeps, spec.draws,
                                  spec.bn, spec.sharpness and spec.sharpness.model_dump()])
                cells.append(Cell(system, method, seed, resolved, _simulated(rigs[system]),
                                  digest))
    # absolute: Dask workers write there from their own working directories
    out = Path(out or (folder / spec.out if spec.out else Path("studies") / spec.name)).resolve()
    return Study(path, spec, out, cells, sweeps)
