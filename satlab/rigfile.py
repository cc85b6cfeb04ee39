"""The rig file: which instruments make up a rig, their limits, and the physical system."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    field_validator,
    model_validator,
)

from satlab import registry
from satlab.instruments import INTERFACES
from satlab.validation import ConfigError, FinitePositive, OptionError, load_model, read_yaml


class Strict(BaseModel):
    """Base for rig-file sections: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


VISA_BACKENDS = ("@py", "@ivi", "@sim")  # pyvisa-py, an installed IVI VISA, the simulations
MAX_RAMP_WRITES = 10_000  # a ramp from zero to full scale must finish in this many writes
MAX_SETTLE_S = 60.0  # longer waits per write are a typo (ms meant as s), not an instrument


class Limits(Strict):
    """Current-source limits enforced by the rig's single write path."""

    max_current: list[FinitePositive] = Field(
        description="A per channel (one number for all, or one per channel)")
    max_total_power: FinitePositive | None = Field(None, description="W over all heaters")
    heater_resistance_ohm: FinitePositive | None = None
    max_step: FinitePositive | None = Field(None, description="A per write; larger moves ramp")
    clip: bool = Field(False, description="clip out-of-range requests instead of rejecting")

    @field_validator("max_current", mode="before")
    @classmethod
    def _one_for_all(cls, v: object) -> object:
        return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _power_needs_resistance(self) -> Limits:
        if self.max_total_power is not None and self.heater_resistance_ohm is None:
            raise ValueError("max_total_power needs heater_resistance_ohm to compute I^2 R")
        if self.max_step is not None and max(self.max_current) / self.max_step > MAX_RAMP_WRITES:
            raise ValueError(f"max_step {self.max_step:g} A would take more than {MAX_RAMP_WRITES} "
                             f"writes to ramp across max_current {max(self.max_current):g} A; "
                             f"expected at least {max(self.max_current) / MAX_RAMP_WRITES:g} A")
        return self


class PluginSpec(Strict):
    """A registry name and its options: a shared resource (bench, bus) or a twin."""

    driver: str
    options: dict = {}


class InstrumentSpec(Strict):
    """One instrument: its interface kind, registry driver and connection."""

    kind: Literal["current_source", "photodetector", "input_modulator", "phase_modulator", "camera",
                  "positioner"]
    driver: str
    address: str | None = None
    resource: str | None = None
    options: dict = {}
    limits: Limits | None = None
    settle_time: float = Field(0.0, ge=0, le=MAX_SETTLE_S, allow_inf_nan=False,
                               description="s to wait after each write/read")

    @model_validator(mode="after")
    def _limits_only_for_sources(self) -> InstrumentSpec:
        if self.kind == "current_source" and self.limits is None:
            raise ValueError("a current_source needs limits (at least max_current)")
        if self.kind != "current_source" and self.limits is not None:
            raise ValueError(f"limits apply to current sources, not to a {self.kind}")
        return self


class SystemSpec(BaseModel):
    """How instruments compose into a physical system; each system type has its own fields."""

    model_config = ConfigDict(extra="allow")  # the system type's own model checks the rest
    type: str


def _system_class(type_name: str) -> type:
    if not isinstance(type_name, str):
        raise ValueError(f"system.type must be a system type name, got {type_name!r}")
    try:
        return registry.lookup(type_name, registry.SYSTEMS)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None


class RigSpec(Strict):
    """A whole rig file."""

    name: str = Field(description="defaults to the file's name without .yaml")
    visa_backend: Literal["@py", "@ivi", "@sim"] | None = Field(
        None, description="VISA backend of every VISA address that does not name its own")
    calibration: Path | None = Field(
        None, description="a calibration folder (satlab calibrate): twins and weight maps use "
                          "it; relative to the rig file")
    resources: dict[str, PluginSpec] = {}
    instruments: dict[str, InstrumentSpec] = Field(min_length=1)
    system: SerializeAsAny[SystemSpec] | None = None

    @field_validator("system", mode="before")
    @classmethod
    def _system_type(cls, v: object) -> object:
        """Validate the system section with its type's own model (errors keep their field path)."""
        if not isinstance(v, dict) or "type" not in v:
            return v  # pydantic reports the missing type / wrong shape
        return _system_class(v["type"]).Spec.model_validate(v)


def check_plugin(path: Path, field: str, name: str, placeholders: dict, options: dict,
                 expect: tuple[type, str] | None = None) -> type:
    """Look up a registry name, check its type and its options, as far as possible unopened."""
    try:
        cls = registry.lookup(name)
    except KeyError as exc:
        raise ConfigError(path, f"{field}.driver", exc.args[0]) from None
    if expect is not None and not (isinstance(cls, type) and issubclass(cls, expect[0])):
        actual = getattr(cls, "kind", getattr(cls, "__name__", "?"))
        raise ConfigError(path, f"{field}.driver", f"{name!r} is not a {expect[1]} (it is a {actual})")
    try:
        inspect.signature(cls).bind(**placeholders, **options)
    except TypeError as exc:
        for connection in ("resource", "address"):  # rig-file fields, not options
            if f"'{connection}'" in str(exc) and connection not in placeholders:
                raise ConfigError(path, f"{field}.{connection}",
                                  f"{name} needs {'a resource' if connection == 'resource' else 'an address'}"
                                  f" ({exc})") from None
        raise ConfigError(path, f"{field}.options", f"{exc} (for {name})") from None
    check = getattr(cls, "check_options", None)
    if check is not None:
        try:
            check(**options)
        except OptionError as exc:
            raise ConfigError(path, f"{field}.options.{exc.option}", exc.expected) from None
    return cls


def _check_references(path: Path, spec: RigSpec) -> None:
    """Cross-references, registry names and options: everything checkable without hardware."""
    for name, res in spec.resources.items():
        check_plugin(path, f"resources.{name}", res.driver, {}, res.options)
    for name, inst in spec.instruments.items():
        where = f"instruments.{name}"
        if inst.resource is not None and inst.resource not in spec.resources:
            raise ConfigError(path, f"{where}.resource", f"no resource named {inst.resource!r} in resources")
        placeholders = {k: None for k in ("resource", "address") if getattr(inst, k) is not None}
        check_plugin(path, where, inst.driver, placeholders, inst.options, (INTERFACES[inst.kind], inst.kind))
    if spec.system is not None:
        _system_class(spec.system.type)(spec, path).check()


def load_rig_file(path: str | Path) -> RigSpec:
    """Validate a rig file completely (schema, references, registry names) without hardware."""
    path = Path(path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)  # a rig is named after its file unless it says otherwise
    spec = load_model(path, RigSpec, data)
    if spec.calibration is not None:
        from satlab.calibration.store import load_calibration

        spec.calibration = (path.parent / spec.calibration).resolve()
        load_calibration(spec.calibration)  # a corrupt one stops here, before anything opens
    _check_references(path, spec)
    return spec
