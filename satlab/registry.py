"""Find instrument, resource and twin classes by the names used in rig files."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

GROUP = "satlab.plugins"


def available() -> list[str]:
    """Every registered plugin name (drivers, simulators, twins)."""
    return sorted(ep.name for ep in entry_points(group=GROUP))


def lookup(name: str) -> Any:
    """Load the class registered under ``name``; KeyError lists the known names."""
    matches = entry_points(group=GROUP, name=name)
    if not matches:
        raise KeyError(f"no driver named {name!r}; known: {', '.join(available())}")
    return next(iter(matches)).load()
