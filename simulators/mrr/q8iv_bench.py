"""A simulated MRR bank whose heaters are driven through an emulated Q8iv chain.

The bench is an ordinary MrrBench for the simulated WDM inputs and detectors; its
heater currents change only when the Q8iv emulator on its pseudo-terminal applies a
setting. A rig therefore drives it with the real Q8iv driver (``qontrol.q8iv`` with
``resource:`` naming this bench), through pyserial and the line protocol, exactly as a
chip wired to a Q8iv rack.
"""

from __future__ import annotations

import math

from satlab.simulators.emulators.q8iv import (
    CHANNELS_PER_MODULE,
    Q8ivEmulator,
    check_line_options,
)
from satlab.simulators.mrr.bank import MrrBench

from satlab.validation import OptionError


class Q8ivMrrBench(MrrBench):
    """MrrBench + the Q8iv chain wired to its heaters (channel k drives ring k)."""

    def __init__(self, rows: int, cols: int, preset: str = "paper_system1", seed: int = 0,
                 noise_seed: int | None = None, modules: int | None = None,
                 drop_after_commands: int | None = None, baud_rate: int | None = None,
                 reply_latency_s: float = 0.0, latency_timer_s: float = 0.0, **overrides) -> None:
        super().__init__(rows, cols, preset, seed, noise_seed, **overrides)
        self.emulator = Q8ivEmulator(modules=modules or _modules_for(rows * cols),
                                     heater_ohm=self.model.params.heater_resistance_ohm,
                                     full_scale_mA=self.model.params.max_current_A * 1e3,
                                     baud_rate=baud_rate, reply_latency_s=reply_latency_s,
                                     latency_timer_s=latency_timer_s)
        self.emulator.drop_after_commands = drop_after_commands
        self.emulator.on_change = self._heater_changed
        self.port = self.emulator.start()

    @staticmethod
    def check_options(rows: int, cols: int, modules: int | None = None,
                      drop_after_commands: int | None = None, noise_seed: int | None = None,
                      baud_rate: int | None = None, reply_latency_s: float = 0.0,
                      latency_timer_s: float = 0.0, **options) -> None:
        """Validate rig-file options without building a bench."""
        MrrBench.check_options(noise_seed=noise_seed, rows=rows, cols=cols, **options)
        check_line_options(baud_rate, reply_latency_s, latency_timer_s)
        if modules is not None and not (isinstance(modules, int) and not isinstance(modules, bool)
                                        and modules * CHANNELS_PER_MODULE >= rows * cols):
            raise OptionError("modules", f"expected an integer with 8 x modules >= rows x cols = "
                                         f"{rows * cols}, got {modules!r}")
        if drop_after_commands is not None and not (isinstance(drop_after_commands, int)
                                                    and drop_after_commands >= 0):
            raise OptionError("drop_after_commands", "expected a non-negative integer or null")

    def _heater_changed(self, channel: int, mA: float) -> None:
        if channel < self.model.channels:
            currents = self.currents.clone()
            currents[channel] = mA * 1e-3
            self.currents = currents

    def close(self) -> None:
        """Stop the emulator and free its pseudo-terminal."""
        self.emulator.stop()


def _modules_for(heaters: int) -> int:
    return max(1, math.ceil(heaters / CHANNELS_PER_MODULE))
