"""The gray-level ↔ phase look-up table of a spatial light modulator.

A phase SLM shows gray levels; the phase each level produces comes from the vendor's
(or the lab's own) calibration. One table serves the driver that shows a mask and the
simulator that predicts its effect, so both quantise the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

TWO_PI = 2 * math.pi


class PhaseLut:
    """Phase (rad, in [0, 2π)) of every gray level 0 … 2^bits − 1, strictly increasing."""

    def __init__(self, phases: np.ndarray) -> None:
        """``phases[g]``: the phase shown by gray level ``g``."""
        phases = np.asarray(phases, dtype=float)
        levels = phases.size
        bits = int(round(math.log2(levels))) if levels > 1 else 0
        if phases.ndim != 1 or levels < 2 or 2**bits != levels or bits > 16:
            raise ValueError(f"a LUT needs 2^bits entries (bits 1..16), got {phases.shape}")
        if not (np.all(np.isfinite(phases)) and np.all(np.diff(phases) > 0)
                and phases[0] >= 0 and phases[-1] < TWO_PI):
            raise ValueError("LUT phases must increase strictly within [0, 2π) rad")
        self.phases, self.bits = phases, bits
        self.dtype = np.uint8 if bits <= 8 else np.uint16

    @classmethod
    def linear(cls, bits: int) -> PhaseLut:
        """The ideal table: gray level g shows 2π g / 2^bits."""
        levels = 2**bits
        return cls(TWO_PI * np.arange(levels) / levels)

    @classmethod
    def from_file(cls, path: str | Path) -> PhaseLut:
        """A calibration file: one phase (rad) per line, gray level 0 first."""
        try:
            return cls(np.loadtxt(path, dtype=float, ndmin=1))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def for_device(cls, lut_file: str | Path | None, bits: int) -> PhaseLut:
        """The calibration in ``lut_file`` (checked to have 2^bits levels), else the ideal table."""
        if lut_file is None:
            return cls.linear(bits)
        lut = cls.from_file(lut_file)
        if lut.bits != bits:
            raise ValueError(f"{lut_file} has {2**lut.bits} levels; the SLM's {bits} bits need {2**bits}")
        return lut

    def to_gray(self, phase: np.ndarray) -> np.ndarray:
        """The gray level whose phase is nearest to each wrapped phase (2π wraps to level 0)."""
        wrapped = np.mod(np.asarray(phase, dtype=float), TWO_PI)
        # neighbours on the circle: the level above (or level 0 one turn up) and the one below
        above = np.searchsorted(self.phases, wrapped)
        below = above - 1
        up_phase = np.where(above < self.phases.size, self.phases[np.minimum(above, self.phases.size - 1)],
                            self.phases[0] + TWO_PI)
        down_phase = np.where(below >= 0, self.phases[np.maximum(below, 0)], self.phases[-1] - TWO_PI)
        nearest = np.where(up_phase - wrapped <= wrapped - down_phase, above, below)
        return np.mod(nearest, self.phases.size).astype(self.dtype)

    def to_phase(self, gray: np.ndarray) -> np.ndarray:
        """The phase (rad) each gray level shows."""
        return self.phases[np.asarray(gray, dtype=np.intp)]
