"""The rig file: which instruments make up a rig, their limits, and the physical system."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from satlab import registry
from satlab.instruments import INTERFACES
from satlab.validation import ConfigError, load_model, read_yaml


class Strict(BaseModel):
    """Base for rig-file sections: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Limits(Strict):
    """Current-source limits enforced by the rig's single write path."""

    max_current: PositiveFloat | list[PositiveFloat] = Field(
        description="A per channel (one number for all, or one per channel)")
    max_total_power: PositiveFloat | None = Field(None, description="W over all heaters")
    heater_resistance_ohm: PositiveFloat | None = None
    max_step: PositiveFloat | None = Field(None, description="A per write; larger moves ramp")
    clip: bool = Field(False, description="clip out-of-range requests instead of rejecting")

    @model_validator(mode="after")
    def _power_needs_resistance(self) -> "Limits":
        if self.max_total_power is not None and self.heater_resistance_ohm is None:
            raise ValueError("max_total_power needs heater_resistance_ohm to compute I^2 R")
        return self


class ResourceSpec(Strict):
    """Something several instruments share: a simulated bench, a serial bus."""

    driver: str
    options: dict = {}


class InstrumentSpec(Strict):
    """One instrument: its interface kind, registry driver and connection."""

    kind: Literal["current_source", "photodetector", "input_modulator"]
    driver: str
    address: str | None = None
    resource: str | None = None
    options: dict = {}
    limits: Limits | None = None
    settle_time: float = Field(0.0, ge=0, description="s to wait after each write/read")

    @model_validator(mode="after")
    def _limits_only_for_sources(self) -> "InstrumentSpec":
        if self.kind == "current_source" and self.limits is None:
            raise ValueError("a current_source needs limits (at least max_current)")
        if self.kind != "current_source" and self.limits is not None:
            raise ValueError(f"limits apply to current sources, not to a {self.kind}")
        return self


class TwinSpec(Strict):
    """The digital model of a layer, built from the registry like an instrument."""

    driver: str
    options: dict = {}


class LayerSpec(Strict):
    """One physical layer and the instruments that perform it."""

    name: str
    in_features: PositiveInt
    out_features: PositiveInt
    heaters: str
    inputs: str
    detector: str
    heater_channels: list[int] | None = Field(
        None, description="current channel of ring (i, j) in row-major order; default 0..N-1")
    twin: TwinSpec

    @model_validator(mode="after")
    def _channel_map_size(self) -> "LayerSpec":
        n = self.in_features * self.out_features
        if self.heater_channels is not None:
            if len(self.heater_channels) != n:
                raise ValueError(f"heater_channels must list {n} channels (rows*cols), "
                                 f"got {len(self.heater_channels)}")
            if len(set(self.heater_channels)) != n or min(self.heater_channels) < 0:
                raise ValueError("heater_channels must be distinct channel numbers >= 0")
        return self


class SystemSpec(Strict):
    """How instruments compose into a physical system."""

    type: Literal["mrr_weight_bank"]
    layers: list[LayerSpec] = Field(min_length=1)


class RigSpec(Strict):
    """A whole rig file."""

    name: str
    resources: dict[str, ResourceSpec] = {}
    instruments: dict[str, InstrumentSpec] = Field(min_length=1)
    system: SystemSpec | None = None


def _check_references(path: Path, spec: RigSpec) -> None:
    """Cross-references and registry names: everything checkable without hardware."""
    known = set(registry.available())
    for name, res in spec.resources.items():
        if res.driver not in known:
            raise ConfigError(path, f"resources.{name}.driver",
                              f"unknown driver {res.driver!r}; known: {', '.join(sorted(known))}")
    for name, inst in spec.instruments.items():
        where = f"instruments.{name}"
        if inst.driver not in known:
            raise ConfigError(path, f"{where}.driver",
                              f"unknown driver {inst.driver!r}; known: {', '.join(sorted(known))}")
        cls = registry.lookup(inst.driver)
        if not issubclass(cls, INTERFACES[inst.kind]):
            raise ConfigError(path, f"{where}.driver",
                              f"{inst.driver!r} is a {getattr(cls, 'kind', '?')}, not a {inst.kind}")
        if inst.resource is not None and inst.resource not in spec.resources:
            raise ConfigError(path, f"{where}.resource",
                              f"no resource named {inst.resource!r} in resources")
        limits = inst.limits
        if limits and isinstance(limits.max_current, list):
            n = inst.options.get("channels")
            if n is not None and len(limits.max_current) != n:
                raise ConfigError(path, f"{where}.limits.max_current",
                                  f"one value per channel expected ({n}), got {len(limits.max_current)}")
    if spec.system is None:
        return
    for i, layer in enumerate(spec.system.layers):
        for role, kind in (("heaters", "current_source"), ("inputs", "input_modulator"),
                           ("detector", "photodetector")):
            target = getattr(layer, role)
            field = f"system.layers.{i}.{role}"
            if target not in spec.instruments:
                raise ConfigError(path, field, f"no instrument named {target!r}")
            if spec.instruments[target].kind != kind:
                raise ConfigError(path, field, f"{target!r} must be a {kind}")
        if layer.twin.driver not in known:
            raise ConfigError(path, f"system.layers.{i}.twin.driver",
                              f"unknown twin {layer.twin.driver!r}")


def load_rig_file(path: str | Path) -> RigSpec:
    """Validate a rig file completely (schema, references, registry names) without hardware."""
    path = Path(path)
    spec = load_model(path, RigSpec, read_yaml(path))
    _check_references(path, spec)
    return spec
