"""A simulated heater driver: a view onto whichever simulated bench its heaters warm."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from satlab.instruments import CurrentSource
from satlab.validation import OptionError, require_count


class HeatedBench(Protocol):
    """What a bench offers its heater source: heaters, their range, the applied currents
    (one vector, or a stack (P, channels) held for one reading)."""

    device: str  # what the heaters are on, for the source's identity: "MRR", "MZI"
    heater_channels: int
    max_current_A: float
    currents: torch.Tensor


class SimulatedHeaterSource(CurrentSource):
    """Heater driver of a simulated bench (an MRR bank, an MZI mesh): one channel per heater."""

    holds_stacks = True

    def __init__(self, resource: HeatedBench, record: bool = False, trace_file: str | None = None,
                 fail_after_writes: int | None = None, fault_persists: bool = False) -> None:
        self.bench = resource
        self.channels = resource.heater_channels
        self.max_current = resource.max_current_A
        self.output = False
        # Every applied vector, for tests that check the rig never exceeded a limit.
        self.history: list[np.ndarray] | None = [] if record else None
        # A line per change ("output max_current_A sum_current_A"), readable by another
        # process: how a test outside the process sees the device's last state.
        self.trace = open(trace_file, "a", buffering=1) if trace_file else None
        # Fault injection: the n-th current write fails like a lost connection would; the
        # fault clears after one failure, or (fault_persists) every later write fails too.
        self.fail_after_writes, self.fault_persists = fail_after_writes, fault_persists
        self.writes = 0
        self._requested = np.zeros(self.channels)

    @staticmethod
    def check_options(record: bool = False, trace_file: str | None = None,
                      fail_after_writes: int | None = None, fault_persists: bool = False) -> None:
        """Validate rig-file options without building a source."""
        for name, value in (("record", record), ("fault_persists", fault_persists)):
            if not isinstance(value, bool):
                raise OptionError(name, f"expected true or false, got {value!r}")
        if trace_file is not None and not isinstance(trace_file, str):
            raise OptionError("trace_file", f"expected a file path, got {trace_file!r}")
        if fail_after_writes is not None:
            require_count("fail_after_writes", fail_after_writes, 0)

    def identify(self) -> str:
        """Name the simulated device and its size."""
        return f"simulated {self.bench.device} heater source, {self.channels} channels"

    def set_currents(self, currents: np.ndarray) -> None:
        """Apply currents; an output that is off drives nothing."""
        self.set_current_stack(np.asarray(currents, dtype=float)[None])
        self._drive()

    def set_current_stack(self, stack: np.ndarray) -> None:
        """Hold every row at once: the bench's next reading evaluates them all (one write each)."""
        stack = np.asarray(stack, dtype=float)
        if stack.min() < 0 or stack.max() > self.max_current:
            raise ValueError("simulated source asked beyond its range")  # the rig should prevent
        if self.fail_after_writes is not None and self.writes + len(stack) > self.fail_after_writes:
            failed = self.fail_after_writes + 1
            if not self.fault_persists:
                self.writes, self.fail_after_writes = failed, None  # cleared: safe state works
            raise OSError(f"simulated heater source: no reply to write #{failed}")
        self.writes += len(stack)
        self._requested = stack[-1]
        if self.history is not None:
            self.history.extend(stack.copy())
        if len(stack) > 1 and self.output:
            self.bench.currents = torch.from_numpy(stack)  # the rig's own checked copy: no copy
            self._trace(stack[-1])

    def _drive(self) -> None:
        applied = self._requested if self.output else np.zeros(self.channels)
        self.bench.currents = torch.from_numpy(applied.copy())
        self._trace(applied)

    def _trace(self, applied: np.ndarray) -> None:
        if self.trace is not None:
            self.trace.write(f"{int(self.output)} {applied.max():.9g} {applied.sum():.9g}\n")

    def get_currents(self) -> np.ndarray:
        """Read back the currents flowing in the heaters (the last of a held stack)."""
        return self.bench.currents.reshape(-1, self.channels)[-1].numpy().copy()

    def set_output(self, enabled: bool) -> None:
        """Switch the outputs."""
        self.output = bool(enabled)
        self._drive()

    def close(self) -> None:
        """Close the trace file."""
        if self.trace is not None:
            self.trace.close()
