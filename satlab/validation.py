"""Load YAML into pydantic models with one-line errors naming file, field and expectation."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


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


class DataError(RuntimeError):
    """The requested data cannot be loaded; never replaced by random data."""


def describe_validation_error(path: str | Path, err: ValidationError) -> ConfigError:
    """Turn pydantic's report into a ConfigError about the first problem."""
    errors = err.errors()
    first = errors[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] not in ("missing", "extra_forbidden", "value_error") and "input" in first:
        msg += f" (got {first['input']!r})"
    if len(errors) > 1:
        msg += f" [+{len(errors) - 1} more problem{'s' if len(errors) > 2 else ''}]"
    return ConfigError(path, field, msg)


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping, raising ConfigError for unreadable or non-mapping files."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
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
        raise describe_validation_error(path, err) from None
