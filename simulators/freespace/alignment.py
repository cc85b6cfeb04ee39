"""Alignment axes of a simulated bench and the stages that move them.

A bench's misalignment along an axis is its imperfection (what the bench is set to; the
twin knows nothing of it) plus the axis's position (where the stage was moved: the
rig knows it, and the layer's twin is told). ``SimulatedStage`` is the positioner
view onto one axis, as the simulated SLMs and cameras are views onto the bench.
"""

from __future__ import annotations

import math

from satlab.instruments import Positioner
from satlab.validation import OptionError


class AlignmentAxes:
    """Mixin for a bench: named axes (name → unit), each with a stage position."""

    axes: dict[str, str]

    def home_axes(self) -> None:
        """Every stage at 0: the aligned position."""
        self.positions = dict.fromkeys(self.axes, 0.0)

    def move_axis(self, axis: str, position: float) -> None:
        """A stage on ``axis`` now sits at ``position``."""
        self.positions[axis] = float(position)

    def with_stages(self, imperfections: dict[str, float]) -> dict[str, float]:
        """The bench's deviations: its imperfections, each axis's moved by its stage."""
        return {k: v + self.positions.get(k, 0.0) for k, v in imperfections.items()}


class SimulatedStage(Positioner):
    """The stage (or mount) that moves one axis of a simulated bench."""

    def __init__(self, resource: AlignmentAxes, axis: str, travel: tuple[float, float] | list[float]) -> None:
        if axis not in resource.axes:
            raise OptionError("axis", f"the bench's axes are {sorted(resource.axes)}, got {axis!r}")
        try:
            low, high = (float(t) for t in travel)
        except (TypeError, ValueError):
            raise OptionError("travel", f"expected [lowest, highest], got {travel!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low <= 0.0 <= high):
            raise OptionError("travel", f"expected finite [lowest, highest] around 0, got {travel!r}")
        self.bench, self.axis, self.unit, self.travel = resource, axis, resource.axes[axis], (low, high)

    def identify(self) -> str:
        """Axis, unit and travel."""
        return f"simulated stage on {self.axis}, {self.travel[0]:g}..{self.travel[1]:g} {self.unit}"

    def _move(self, position: float) -> None:
        self.bench.move_axis(self.axis, position)

    def position(self) -> float:
        """The stage's position."""
        return self.bench.positions[self.axis]
