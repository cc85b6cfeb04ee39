"""Physical systems: the protocol the controller uses, and the system types that implement it."""

from __future__ import annotations

from pathlib import Path

from satlab import registry
from satlab.rigfile import RigSpec
from satlab.systems.protocol import (
    ControlSpace,
    Imperfection,
    LayerBackend,
    MacroPixels,
    System,
)

__all__ = ["ControlSpace", "Imperfection", "LayerBackend", "MacroPixels", "System", "system_for"]


def system_for(spec: RigSpec, path: str | Path = "<rig>") -> System:
    """The system a validated rig file describes (its ``system.type``)."""
    if spec.system is None:
        raise ValueError(f"{path}: the rig file has no system section")
    return registry.lookup(spec.system.type, registry.SYSTEMS)(spec, path)
