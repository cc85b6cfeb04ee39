"""Find instruments, resources, twins and systems by the names used in rig files.

A name is either registered through an entry point (``satlab.plugins`` for
instruments, resources and twins; ``satlab.systems`` for system types) or an
import path ``package.module:Name``, so a lab can use a class it has not packaged.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

PLUGINS = "satlab.plugins"
SYSTEMS = "satlab.systems"


def available(group: str = PLUGINS) -> list[str]:
    """Every name registered in ``group``."""
    return sorted(ep.name for ep in entry_points(group=group))


def lookup(name: str, group: str = PLUGINS) -> Any:
    """Load the class named ``name``; KeyError says what is known."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise KeyError(f"cannot load {name!r} ({exc})") from None
    matches = entry_points(group=group, name=name)
    if not matches:
        raise KeyError(f"unknown {'system type' if group == SYSTEMS else 'driver'} {name!r}; "
                       f"known: {', '.join(available(group))}")
    return next(iter(matches)).load()
