"""The input modulator of a simulated free-space bench: a batch of images shown as light."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from satlab.instruments import InputModulator


class ShowsImages(Protocol):
    """A bench with an image input: its side in pixels and where the images go."""

    image_side: int

    def load(self, images: np.ndarray) -> None: ...


class SimulatedImageInput(InputModulator):
    """A bench's input modulator (a DMD or amplitude SLM): images (B, side²) in [0, 1]."""

    full_scale_W = 1.0

    def __init__(self, resource: ShowsImages) -> None:
        self.bench = resource
        self.channels = resource.image_side**2

    def identify(self) -> str:
        """Name and size."""
        side = self.bench.image_side
        return f"simulated image input, {side}x{side}"

    def load(self, values: np.ndarray) -> None:
        """Show a batch of images."""
        self.bench.load(values)
