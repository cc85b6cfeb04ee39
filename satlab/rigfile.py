"""The rig file: which instruments make up a rig, their limits, and the physical system."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from satlab import registry
from satlab.instruments import INTERFACES
from satlab.validation import ConfigError, OptionError, load_model, read_yaml


class Strict(BaseModel):
    """Base for rig-file sections: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Limits(Strict):
    """Current-source limits enforced by the rig's single write path."""

    max_current: list[PositiveFloat] = Field(
        description="A per channel (one number for all, or one per channel)")
    max_total_power: PositiveFloat | None = Field(None, description="W over all heaters")
    heater_resistance_ohm: PositiveFloat | None = None
    max_step: PositiveFloat | None = Field(None, description="A per write; larger moves ramp")
    clip: bool = Field(False, description="clip out-of-range requests instead of rejecting")

    @field_validator("max_current", mode="before")
    @classmethod
    def _one_for_all(cls, v: object) -> object:
        return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _power_needs_resistance(self) -> Limits:
        if self.max_total_power is not None and self.heater_resistance_ohm is None:
            raise ValueError("max_total_power needs heater_resistance_ohm to compute I^2 R")
        return self


class PluginSpec(Strict):
    """A registry name and its options: a shared resource (bench, bus) or a twin."""

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
    def _limits_only_for_sources(self) -> InstrumentSpec:
        if self.kind == "current_source" and self.limits is None:
            raise ValueError("a current_source needs limits (at least max_current)")
        if self.kind != "current_source" and self.limits is not None:
            raise ValueError(f"limits apply to current sources, not to a {self.kind}")
        return self


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
    twin: PluginSpec  # the layer's digital model, from the registry like an instrument

    @model_validator(mode="after")
    def _channel_map_size(self) -> LayerSpec:
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
    resources: dict[str, PluginSpec] = {}
    instruments: dict[str, InstrumentSpec] = Field(min_length=1)
    system: SystemSpec | None = None


def _plugin(path: Path, field: str, name: str, placeholders: dict, options: dict,
            expect: tuple[type, str] | None = None) -> type:
    """Look up a registry name, check its type and its options, as far as possible unopened."""
    known = registry.available()
    if name not in known:
        raise ConfigError(path, f"{field}.driver", f"unknown driver {name!r}; known: {', '.join(known)}")
    cls = registry.lookup(name)
    if expect is not None and not (isinstance(cls, type) and issubclass(cls, expect[0])):
        actual = getattr(cls, "kind", getattr(cls, "__name__", "?"))
        raise ConfigError(path, f"{field}.driver", f"{name!r} is not a {expect[1]} (it is a {actual})")
    try:
        inspect.signature(cls).bind(**placeholders, **options)
    except TypeError as exc:
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
        _plugin(path, f"resources.{name}", res.driver, {}, res.options)
    for name, inst in spec.instruments.items():
        where = f"instruments.{name}"
        if inst.resource is not None and inst.resource not in spec.resources:
            raise ConfigError(path, f"{where}.resource", f"no resource named {inst.resource!r} in resources")
        placeholders = {k: None for k in ("resource", "address") if getattr(inst, k) is not None}
        _plugin(path, where, inst.driver, placeholders, inst.options, (INTERFACES[inst.kind], inst.kind))
    if spec.system is None:
        return
    import torch  # only here: the rest of this module must stay light for `satlab --help`

    used: dict[str, set[int]] = {}
    optics: dict[str, str] = {}
    for i, layer in enumerate(spec.system.layers):
        where = f"system.layers.{i}"
        for role, kind in (("heaters", "current_source"), ("inputs", "input_modulator"),
                           ("detector", "photodetector")):
            target = getattr(layer, role)
            if target not in spec.instruments:
                raise ConfigError(path, f"{where}.{role}", f"no instrument named {target!r}")
            if spec.instruments[target].kind != kind:
                raise ConfigError(path, f"{where}.{role}", f"{target!r} must be a {kind}")
            if role != "heaters":
                if target in optics:  # each layer loads and reads its own optics
                    raise ConfigError(path, f"{where}.{role}", f"{target!r} is already used by "
                                      f"layer {optics[target]}; each layer needs its own {kind}")
                optics[target] = layer.name
        channels = set(layer.heater_channels or range(layer.in_features * layer.out_features))
        if channels & used.setdefault(layer.heaters, set()):
            raise ConfigError(path, f"{where}.heater_channels", f"channels overlap another layer's "
                              f"on {layer.heaters!r}; give each layer its own heater_channels")
        used[layer.heaters] |= channels
        _plugin(path, f"{where}.twin", layer.twin.driver, {}, layer.twin.options,
                (torch.nn.Module, "digital twin (torch module)"))


def load_rig_file(path: str | Path) -> RigSpec:
    """Validate a rig file completely (schema, references, registry names) without hardware."""
    path = Path(path)
    spec = load_model(path, RigSpec, read_yaml(path))
    _check_references(path, spec)
    return spec
