"""Load YAML into pydantic models with one-line errors naming file, field and expectation."""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError

M = TypeVar("M", bound=BaseModel)


FinitePositive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
FiniteNonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ConfigError(ValueError):
    """A config or rig file that cannot be used; the message is one line for the user."""

    def __init__(self, path: str | Path, field: str, expected: str) -> None:
        self.path, self.field, self.expected = str(path), field, expected
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + expected)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, truncated or not satlab's."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"{path}: {reason}")


class OptionError(ValueError):
    """A driver or simulator option with an unusable value (raised by ``check_options``)."""

    def __init__(self, option: str, expected: str) -> None:
        self.option, self.expected = option, expected
        super().__init__(f"{option}: {expected}")


def require_count(name: str, value: object, lowest: int, highest: int | None = None) -> None:
    """OptionError unless ``value`` is an integer in [lowest, highest]."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= lowest
            and (highest is None or value <= highest)):
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(
            lowest, f"an integer from {lowest}")
        bound = f" up to {highest}" if highest is not None else ""
        raise OptionError(name, f"expected {kind}{bound}, got {value!r}")


def require_number(name: str, value: object, low: float, high: float = math.inf) -> float:
    """``value`` as a float; OptionError unless it is a number in [low, high]."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high):
        raise OptionError(name, f"expected a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def require_seconds(name: str, value: object, longest: float = 600.0) -> None:
    """OptionError unless ``value`` is a time in (0, longest] seconds."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= longest):
        raise OptionError(name, f"expected seconds in (0, {longest:g}], got {value!r}")


class DataError(RuntimeError):
    """The requested data cannot be loaded; never replaced by random data."""


def _unwrapped(kind: object) -> object:
    """``X`` of ``X | None`` and of ``Annotated[X, ...]``."""
    while True:
        if typing.get_origin(kind) is typing.Annotated:
            kind = typing.get_args(kind)[0]
            continue
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
            kind = args[0]
            continue
        return kind


def _field_names(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The field names of the (sub-)model at ``loc`` inside ``model``, where they are known."""
    kind: object = model
    for step in loc:
        kind = _unwrapped(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(str(step))
            if field is None:
                return []
            kind = field.annotation
        elif typing.get_origin(kind) in (dict, list):
            kind = typing.get_args(kind)[-1]
        else:
            return []
    kind = _unwrapped(kind)
    return list(kind.model_fields) if isinstance(kind, type) and issubclass(kind, BaseModel) else []


def describe_validation_error(path: str | Path, err: ValidationError,
                              model: type[BaseModel] | None = None) -> ConfigError:
    """Turn pydantic's report into a ConfigError about the first problem."""
    errors = err.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    first = unknown[0] if unknown else errors[0]  # a misspelt key explains a "missing" one
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if unknown:
        parent, key = first["loc"][:-1], str(first["loc"][-1])
        missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == parent]
        close = (difflib.get_close_matches(key, missing, n=1)
                 or difflib.get_close_matches(key, _field_names(model, parent), n=1))
        msg = f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
        errors = [e for e in errors if not (close and e["loc"] == (*parent, close[0]))]
    elif first["type"] not in ("missing", "value_error", "json_invalid") and "input" in first:
        msg += f" (got {first['input']!r})"
    if len(errors) > 1:
        msg += f" [+{len(errors) - 1} more problem{'s' if len(errors) > 2 else ''}]"
    return ConfigError(path, field, msg)


class StrictYamlLoader(yaml.SafeLoader):
    """YAML with two traps removed: a key given twice is an error (not "last one wins"),
    and numbers like 1e-2 are numbers (YAML 1.1 reads a float without a dot as a string)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a name or a number, got {key!r}", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


StrictYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"))


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping, raising ConfigError for unreadable or non-mapping files."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=StrictYamlLoader)  # noqa: S506 (safe loader)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read this as a YAML file ({exc.__class__.__name__})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(syntax)"
        raise ConfigError(path, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "(top level)", "expected a YAML mapping of fields")
    return data


def load_model(path: str | Path, model: type[M], data: dict | None = None) -> M:
    """Validate a YAML file (or already-read data from it) against a pydantic model."""
    data = read_yaml(path) if data is None else data
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise describe_validation_error(path, err, model) from None
