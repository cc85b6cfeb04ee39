"""The noise generator of a simulated bench, kept in checkpoints so a resumed run draws
the same noise as an uninterrupted one."""

from __future__ import annotations

import torch

from satlab.validation import require_count


class SeededNoise:
    """Mixin: ``self.generator`` seeded from a rig-file ``noise_seed``, with its state."""

    generator: torch.Generator

    @staticmethod
    def check_noise_seed(noise_seed: object) -> None:
        """OptionError unless ``noise_seed`` is an integer in 0..2^32 − 1."""
        require_count("noise_seed", noise_seed, 0, highest=2**32 - 1)

    def seed_noise(self, noise_seed: int) -> None:
        """A fresh generator for this bench's random draws."""
        self.generator = torch.Generator().manual_seed(noise_seed)

    def state_dict(self) -> dict:
        """The noise generator's state, for an exact resume."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""
        self.generator.set_state(state["generator"])
