"""A Rig: the instruments of a rig file, one checked write path, and a guaranteed safe state."""

from __future__ import annotations

import logging
import math
import signal
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from satlab import registry
from satlab.instruments import (
    Acquisition,
    Camera,
    CurrentSource,
    InputModulator,
    Instrument,
    InstrumentFault,
    PhaseModulator,
    Photodetector,
    Positioner,
    WireTime,
)
from satlab.rigfile import VISA_BACKENDS, InstrumentSpec, Limits, RigSpec, load_rig_file
from satlab.systems import system_for
from satlab.validation import ConfigError

log = logging.getLogger(__name__)


def wait_until(deadline: float) -> None:
    """Block until time.perf_counter() reaches deadline, to ~10 us (sleep, then spin)."""
    remaining = deadline - time.perf_counter()
    if remaining > 0.002:
        time.sleep(remaining - 0.0015)  # sleep overshoots by up to ~1 ms; spin the rest
    while time.perf_counter() < deadline:
        pass


def first_row(reading: np.ndarray, most: int = 256) -> np.ndarray:
    """A copy of the first row of a reading (..., channels), at most ``most`` values."""
    a = np.asarray(reading)
    if a.size == 0:
        return np.zeros(0)
    row = a[(0,) * (a.ndim - 1)] if a.ndim > 1 else a.reshape(-1)
    return np.array(row[:most], dtype=float)


class RigError(RuntimeError):
    """The rig refused, or cannot do, what was asked."""


class RigLimitError(RigError, ValueError):
    """A requested value that the rig refuses to apply (NaN/inf or outside limits)."""


class UnsafeShutdown(RigError):
    """Instruments that could not be put in their safe state: they may still be driven."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        names = ", ".join(failures)
        reasons = "; ".join(f"{n}: {why}" for n, why in failures.items())
        super().__init__(f"could not put {names} in the safe state ({reasons}); "
                         "it may still be driven: check it before touching the bench")


class RigInterrupted(BaseException):
    """Raised in the main thread on SIGTERM so the rig's exit path runs."""


class Command(NamedTuple):
    """One entry of the rig's command log (value: what was written, e.g. the current array)."""

    time: float
    instrument: str
    action: str
    value: object


@dataclass
class CurrentGuard:
    """Checks and shapes every current write of one source: the rig's choke point."""

    name: str
    limits: Limits
    channels: int
    driver_max: float
    rig_path: Path = Path("<rig>")
    max_current: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        limit = np.asarray(self.limits.max_current, float)
        if limit.size not in (1, self.channels):
            raise ConfigError(self.rig_path, f"instruments.{self.name}.limits.max_current",
                              f"one value per channel expected ({self.channels}), got {limit.size}")
        per_channel = np.broadcast_to(limit, (self.channels,))
        self.max_current = np.minimum(per_channel, self.driver_max)
        # One limit for all channels (the usual case): compare with a scalar, no temporary.
        uniform = self.max_current.min() == self.max_current.max()
        self._uniform_max = float(self.max_current[0]) if uniform else None

    def check(self, requested: np.ndarray) -> np.ndarray:
        """Return the currents to apply, or raise RigLimitError saying what is wrong."""
        req = np.asarray(requested, dtype=float)
        if req.shape != (self.channels,):
            raise RigLimitError(f"{self.name}: expected {self.channels} currents, got shape {req.shape}")
        return self.check_many(req[None])[0]

    def check_many(self, requested: np.ndarray) -> np.ndarray:
        """``check`` for every row of a stack (P, channels) at once: all rows pass or none."""
        req = np.array(requested, dtype=float)  # a copy: callers may reuse their buffer
        if req.ndim != 2 or req.shape[1] != self.channels:
            raise RigLimitError(f"{self.name}: expected rows of {self.channels} currents, "
                                f"got shape {req.shape}")
        which = (lambda row: f"probe {row}: ") if len(req) > 1 else (lambda row: "")
        sum_sq = np.einsum("ij,ij->i", req, req)  # NaN or inf anywhere makes its row non-finite
        if not np.isfinite(sum_sq).all():
            row = int(np.flatnonzero(~np.isfinite(sum_sq))[0])
            bad = np.flatnonzero(~np.isfinite(req[row]))[:5].tolist()
            raise RigLimitError(f"{self.name}: {which(row)}non-finite current requested on channels {bad}")
        if req.min() < 0 or (req.max() > self._uniform_max if self._uniform_max is not None
                             else (self.max_current - req).min() < 0):
            if not self.limits.clip:
                row, ch = (int(i[0]) for i in np.nonzero((req < 0) | (req > self.max_current)))
                raise RigLimitError(
                    f"{self.name}: {which(row)}channel {ch} requested {req[row, ch]:.6g} A, allowed "
                    f"[0, {self.max_current[ch]:.6g}] A (set limits.clip to clip instead)")
            req = np.clip(req, 0.0, self.max_current)
            sum_sq = np.einsum("ij,ij->i", req, req)
        if self.limits.max_total_power is not None:
            power = sum_sq * self.limits.heater_resistance_ohm
            if power.max() > self.limits.max_total_power:
                row = int(power.argmax())
                raise RigLimitError(f"{self.name}: {which(row)}total heater power {power[row]:.4g} W "
                                    f"exceeds max_total_power {self.limits.max_total_power:.4g} W")
        return req

    def moves_within_step(self, start: np.ndarray, rows: np.ndarray) -> bool:
        """Whether applying ``rows`` in turn, from ``start``, needs no ramp steps."""
        step = self.limits.max_step
        if step is None:
            return True
        if np.abs(rows[0] - start).max() > step:
            return False
        # every channel's spread over the stack bounds its moves between rows: cheap, usually enough
        return bool(np.ptp(rows, axis=0).max() <= step
                    or np.abs(np.diff(rows, axis=0)).max() <= step)

    def ramp(self, start: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        """Intermediate writes so no channel moves more than max_step at once."""
        step = self.limits.max_step
        if step is None:
            return [target]
        n = math.ceil(float(np.abs(target - start).max(initial=0.0)) / step - 1e-9)
        if n <= 1:
            return [target]
        # Linear interpolation between two allowed points stays allowed: the
        # box is convex and power along a segment never exceeds its endpoints' max.
        return [start + (target - start) * (k / n) for k in range(1, n)] + [target]


class Rig:
    """Context manager over a rig file's instruments; leaving it always makes them safe."""

    # False: apply probes one at a time even where a simulator could hold them all (to time
    # or test the path real instruments take).
    stack_probes = True

    def __init__(self, spec: RigSpec, path: str | Path = "<rig>", log_size: int = 10000,
                 log_values: int = 2**22, visa_backend: str | None = None) -> None:
        self.spec, self.path = spec, Path(path)
        # a command line's choice outranks the rig file's; an address's own suffix, both
        self.visa_backend = visa_backend or spec.visa_backend
        self.instruments: dict[str, Instrument] = {}
        self.resources: dict[str, Any] = {}
        self.guards: dict[str, CurrentGuard] = {}
        self.applied: dict[str, np.ndarray] = {}
        # the most recent commands: at most log_size of them holding at most log_values
        # numbers in all (one probe stack alone can hold millions)
        self.commands: deque[Command] = deque()
        self._log_limits, self._logged_values = (log_size, log_values), 0
        self.writes = 0
        self.settle_times = {n: i.settle_time for n, i in spec.instruments.items()}
        self._ready_at = 0.0  # perf_counter time when every write so far has settled
        self._quiet_until = 0.0  # no write before this: a detector is still integrating
        self._old_sigterm: Any = None
        self.unsafe: dict[str, str] = {}  # after closing: instruments whose safe state failed
        self.faulted: dict[str, InstrumentFault] = {}  # no writes to these until reopened
        self.identities: dict[str, str] = {}
        # What the live status shows, kept as the rig reads it: each detector's first row
        # of its last reading (a small copy: callers may scale a reading in place) and each
        # camera's first frame of its last acquisition (a view: frames are large)
        self.last_read: dict[str, np.ndarray] = {}
        self.last_frame: dict[str, np.ndarray] = {}
        self._closing = False

    @classmethod
    def from_file(cls, path: str | Path) -> Rig:
        """Validate a rig file fully; nothing is opened until the rig is entered."""
        return cls(load_rig_file(path), path)

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> Rig:
        self._install_sigterm()
        try:
            self._open()
        except BaseException as exc:
            self._shutdown()
            if self.unsafe:
                raise UnsafeShutdown(self.unsafe) from exc
            raise
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        deferred = self._shutdown()
        if self.unsafe:  # outranks whatever ended the session: people must know
            raise UnsafeShutdown(self.unsafe)
        if deferred is not None and exc_type is None:
            raise deferred  # a signal that arrived while the rig was being made safe

    def _open(self) -> None:
        for name, res in self.spec.resources.items():
            self.resources[name] = registry.lookup(res.driver)(**res.options)
        for name, inst in self.spec.instruments.items():
            with self.named(name, "(opening)"):
                self.instruments[name] = self._build(name, inst)
                self.identities[name] = self.instruments[name].identify()
            self._log(name, "open", self.identities[name])
        for name, inst in self.spec.instruments.items():
            dev = self.instruments[name]
            if isinstance(dev, CurrentSource):
                self._check_full_scale(name, inst.limits, dev)
                self.guards[name] = CurrentGuard(name, inst.limits, dev.channels, dev.max_current,
                                                 self.path)
        if self.spec.system is not None:
            system_for(self.spec, self.path).check_open(self)
        for name, dev in self.instruments.items():
            if isinstance(dev, CurrentSource):
                # Enabling an output applies its setpoint: bring the setpoint to zero
                # through the guard first (ramped from what is flowing now).
                with self.named(name, "get_currents"):
                    self.applied[name] = np.asarray(dev.get_currents(), dtype=float)
                self._apply_ramped(name, np.zeros(dev.channels))
                # after the ramp: a lower firmware limit would refuse its first steps
                with self.named(name, "apply_limits"):
                    dev.apply_limits(self.guards[name].max_current)
                    dev.set_output(True)
                self._log(name, "set_output", True)

    def _check_full_scale(self, name: str, limits: Limits, dev: CurrentSource) -> None:
        """A rig file asking for more than the instrument can source describes another one."""
        highest = max(limits.max_current)
        if highest > dev.max_current * (1 + 1e-9):
            raise RigError(f"{self.path}: instruments.{name}.limits.max_current: {highest:g} A is "
                           f"above the full scale of {self.identities[name]} ({dev.max_current:g} A)")

    @contextmanager
    def named(self, name: str, action: str = "") -> Iterator[None]:
        """Faults raised inside are instrument ``name``'s: their message starts with the rig
        file's name for it, and nothing is written to it again until the rig is reopened."""
        try:
            yield
        except InstrumentFault as fault:
            fault.role = fault.role or name
            self.faulted.setdefault(name, fault)
            raise
        except OSError as exc:  # a driver or simulator that reports a lost line as it comes
            fault = InstrumentFault(self.identities.get(name, self.spec.instruments[name].driver),
                                    action, f"{type(exc).__name__}: {exc}")
            fault.role = name
            self.faulted.setdefault(name, fault)
            raise fault from exc

    def _build(self, name: str, inst: InstrumentSpec) -> Instrument:
        cls = registry.lookup(inst.driver)
        kwargs = dict(inst.options)
        if inst.address is not None:
            kwargs["address"] = inst.address
            if (self.visa_backend and getattr(cls, "probe", ("",))[0] == "visa"
                    and not inst.address.endswith(VISA_BACKENDS)):
                kwargs["address"] += self.visa_backend
        if inst.resource is not None:
            kwargs["resource"] = self.resources[inst.resource]
        return cls(**kwargs)

    def _shutdown(self) -> BaseException | None:
        """Make every instrument safe, close everything; return a signal that came meanwhile.

        Instruments whose safe state failed are left in ``self.unsafe`` (name: reason).
        """
        deferred: list[BaseException] = []
        self.unsafe = {}
        self._closing = True
        held = self._defer_signals(deferred)
        try:
            for name, dev in self.instruments.items():
                # one failing instrument must not keep the others unsafe, and a failed ramp
                # must not skip the instrument's own safe state
                if isinstance(dev, CurrentSource) and name in self.applied:
                    try:
                        self._apply_ramped(name, np.zeros(dev.channels))
                    except BaseException as exc:
                        log.info("%s: ramp to zero failed (%s); its safe state follows", name, exc)
                try:
                    with self.named(name, "safe_state"):
                        dev.safe_state()
                except InstrumentFault as fault:
                    self.unsafe[name] = f"{fault.instrument}: {fault.command!r} -> {fault.reply}"
                except BaseException as exc:
                    self.unsafe[name] = f"{type(exc).__name__}: {exc}"
                if isinstance(dev, CurrentSource) and name not in self.unsafe:
                    self._verify_zero(name, dev)
                self._log(name, "safe_state_failed" if name in self.unsafe else "safe_state", None)
            for thing in [*self.instruments.values(), *self.resources.values()]:
                try:
                    if hasattr(thing, "close"):
                        thing.close()
                except BaseException as exc:
                    log.warning("closing %s failed: %s", thing, exc)
            self.instruments.clear()
            self.resources.clear()
            self.applied.clear()
            self.faulted.clear()
            self.identities.clear()
        finally:
            self._closing = False
            for signum, handler in held.items():
                signal.signal(signum, handler)
            self._restore_sigterm()
        return deferred[0] if deferred else None

    def _verify_zero(self, name: str, dev: CurrentSource) -> None:
        """Read back a source after its safe state: only zero current counts as safe."""
        try:
            flowing = float(np.max(np.abs(dev.get_currents()), initial=0.0))
        except InstrumentFault as fault:
            self.unsafe[name] = (f"no read-back after the safe state ({fault.instrument}: "
                                 f"{fault.command!r} -> {fault.reply})")
            return
        except BaseException as exc:
            self.unsafe[name] = f"no read-back after the safe state ({type(exc).__name__}: {exc})"
            return
        # a real source reads back its offset: up to 0.1 % of full scale counts as zero
        if flowing > 1e-3 * float(np.max(dev.max_current)):
            self.unsafe[name] = f"reads back {flowing * 1e3:.4g} mA after the safe state"

    def _defer_signals(self, deferred: list[BaseException]) -> dict[int, Any]:
        """Until restored, SIGINT/SIGTERM are only recorded: nothing may cut the way to safety."""
        def record(signum: int, frame: object) -> None:
            deferred.append(KeyboardInterrupt() if signum == signal.SIGINT else RigInterrupted("SIGTERM"))
        held = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                held[signum] = signal.signal(signum, record)
            except ValueError:  # not the main thread: the caller owns signal handling
                pass
        return held

    def _install_sigterm(self) -> None:
        def on_sigterm(signum: int, frame: object) -> None:
            raise RigInterrupted("SIGTERM")
        try:
            self._old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread: the caller owns signal handling
            self._old_sigterm = None

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    # -- the write path --------------------------------------------------------
    def _log(self, instrument: str, action: str, value: object) -> None:
        self.commands.append(Command(time.time(), instrument, action, value))
        self._logged_values += np.size(value)
        max_len, max_values = self._log_limits
        while len(self.commands) > 1 and (len(self.commands) > max_len
                                          or self._logged_values > max_values):
            self._logged_values -= np.size(self.commands.popleft().value)

    def _settled_after(self, name: str) -> None:
        """A write to ``name`` takes effect settle_time from now: readings must wait for it."""
        wait = self.settle_times[name]
        if wait:
            self._ready_at = max(self._ready_at, time.perf_counter() + wait)

    def _writable(self, name: str) -> None:
        """RigError for an instrument that faulted: only the way to its safe state writes."""
        if name in self.faulted and not self._closing:
            raise RigError(f"{name}: nothing more is written to it after its fault "
                           f"({self.faulted[name]}); the rig must be reopened")

    def _apply_ramped(self, name: str, target: np.ndarray) -> None:
        self._writable(name)
        dev: CurrentSource = self.instruments[name]  # type: ignore[assignment]
        for value in self.guards[name].ramp(self.applied[name], target):
            # a ramp's steps are spaced by the settle time; no write disturbs an integration
            wait_until(max(self._ready_at, self._quiet_until))
            with self.named(name, "set_currents"):
                dev.set_currents(value)
            self.applied[name] = value
            self.writes += 1
            self._log(name, "set_currents", value)
            self._settled_after(name)

    def set_currents(self, name: str, currents: np.ndarray, channels: np.ndarray | None = None) -> None:
        """Request currents (A) on a source, all channels or the listed ones; checked, ramped, logged."""
        if channels is None:
            full = currents
        else:
            full = self.applied[name].copy()
            full[channels] = currents
        self._apply_ramped(name, self.guards[name].check(full))

    def load_inputs(self, name: str, values: np.ndarray) -> None:
        """Load a batch of input patterns (values in [0, 1]) onto a modulator."""
        values = np.asarray(values, dtype=float)
        if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > 1:
            raise RigLimitError(f"{name}: input values must be finite and within [0, 1]")
        self._writable(name)
        wait_until(self._quiet_until)
        with self.named(name, "load"):
            self.instruments[name].load(values)  # type: ignore[attr-defined]
        self._settled_after(name)

    def show_phase(self, name: str, phase: np.ndarray) -> np.ndarray:
        """Show a phase mask (rad) on an SLM; readings wait its settle_time. Returns the gray levels."""
        self._writable(name)
        wait_until(self._quiet_until)
        with self.named(name, "show_phase"):
            gray = self._typed(name, PhaseModulator).show_phase(phase)
        self._log(name, "show_phase", gray)
        self._settled_after(name)
        return gray

    def show_gray(self, name: str, gray: np.ndarray) -> None:
        """Show integer gray levels on an SLM as they are, past its LUT (to calibrate the LUT);
        readings wait its settle_time."""
        self._writable(name)
        wait_until(self._quiet_until)
        with self.named(name, "show_gray"):
            self._typed(name, PhaseModulator).show_gray(gray)
        self._log(name, "show_gray", np.asarray(gray))
        self._settled_after(name)

    def move(self, name: str, position: float) -> None:
        """Move an alignment axis; readings wait its settle_time. Outside its travel: RigLimitError."""
        dev = self._typed(name, Positioner)
        self._writable(name)
        wait_until(self._quiet_until)
        try:
            with self.named(name, "move_to"):
                dev.move_to(position)
        except ValueError as exc:
            raise RigLimitError(f"{name}: {exc}") from None
        self._log(name, "move_to", position)
        self._settled_after(name)

    def acquire(self, name: str, frames: int) -> Acquisition:
        """Frames of a camera once earlier writes have settled; its settle_time, counted
        from the start, is its exposure: the next write waits until it has passed."""
        wait_until(max(self._ready_at, self._quiet_until))
        start = time.perf_counter()
        with self.named(name, "acquire"):
            shot = self._typed(name, Camera).acquire(frames)
        self._quiet_until = start + self.settle_times[name]
        if len(shot.counts):
            self.last_frame[name] = shot.counts[0]
        return shot

    def read(self, name: str) -> np.ndarray:
        """Read a detector (W), one row per loaded input pattern, once earlier writes have settled.

        The detector's own settle_time is its integration time, counted from the
        start of the reading: the next write waits until it has passed, so the
        framework's own work overlaps with the integration instead of adding to it.
        """
        wait_until(max(self._ready_at, self._quiet_until))
        start = time.perf_counter()
        with self.named(name, "read"):
            reading = self.instruments[name].read()  # type: ignore[attr-defined]
        self._quiet_until = start + self.settle_times[name]
        self.last_read[name] = first_row(reading)
        return reading

    def measure_many(self, source: str, settings: np.ndarray, detector: str,
                     channels: np.ndarray | None = None,
                     inputs: tuple[str, np.ndarray] | None = None) -> np.ndarray:
        """Write each row of ``settings`` (A) to a source and read a detector after each.

        Returns new readings (P, batch, channels). Every row passes the guard before
        any is written: a stack with one illegal row is refused whole. ``channels``
        places the rows on those source channels (the others keep their values);
        ``inputs`` = (modulator, values) loads a new input batch first. A source
        that can hold a stack of settings (a simulator, without settle times) is
        given all rows at once and the detector reads them in one call; otherwise
        rows are applied one at a time, ramped and settled, in order.
        """
        settings = np.asarray(settings, dtype=float)
        if channels is None:
            full = settings
        else:
            full = np.repeat(self.applied[source][None], len(settings), axis=0)
            full[:, channels] = settings
        guard = self.guards[source]
        checked = guard.check_many(full)
        if inputs is not None:
            self.load_inputs(*inputs)
        dev = self.instruments[source]
        if (self.stack_probes and len(checked) > 1 and getattr(dev, "holds_stacks", False)
                and not (self.settle_times[source] or self.settle_times[detector])
                and guard.moves_within_step(self.applied[source], checked)):
            return self._measure_stacked(source, checked, detector)
        readings = []
        for row in checked:
            self._apply_ramped(source, row)
            readings.append(self.read(detector))
        return np.stack(readings)

    def _measure_stacked(self, source: str, checked: np.ndarray, detector: str) -> np.ndarray:
        dev: CurrentSource = self.instruments[source]  # type: ignore[assignment]
        self._writable(source)
        with self.named(source, "set_current_stack"):
            dev.set_current_stack(checked)
        self.applied[source] = checked[-1]
        self.writes += len(checked)
        self._log(source, "set_current_stack", checked)  # rows applied in order, the last stays
        reading = self.read(detector)
        if reading.shape[:1] != checked.shape[:1] or reading.ndim != 3:
            raise RigError(f"{detector} did not read the {len(checked)} settings held by {source} "
                           "(a stacked source needs a detector on the same simulated bench)")
        return reading

    # -- simulation-only controls --------------------------------------------------
    def set_imperfection(self, name: str, value: float, draw: int = 0) -> None:
        """Set a named imperfection on every simulated bench (``draw``: which random realisation)."""
        benches = [r for r in self.resources.values() if hasattr(r, "set_imperfection")]
        if not benches:
            raise RigError(f"{self.path}: this rig has no simulated bench whose imperfections "
                           "satlab can set; imperfection studies need a simulated rig")
        for bench in benches:
            bench.set_imperfection(name, value, draw)

    def reset_imperfections(self) -> None:
        """Every simulated bench back to its rig-file state."""
        for bench in self.resources.values():
            if hasattr(bench, "reset_imperfections"):
                bench.reset_imperfections()

    def wire_times(self) -> dict[str, WireTime]:
        """A copy of the line time measured so far by every instrument that measures it."""
        return {name: replace(dev.wire) for name, dev in self.instruments.items()
                if dev.wire is not None}

    def state_dict(self) -> dict:
        """Internal state of simulated resources (e.g. noise RNG), for exact resume."""
        return {n: r.state_dict() for n, r in self.resources.items() if hasattr(r, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""
        for n, s in state.items():
            self.resources[n].load_state_dict(s)

    def source(self, name: str) -> CurrentSource:
        """The named current source."""
        return self._typed(name, CurrentSource)

    def modulator(self, name: str) -> InputModulator:
        """The named input modulator."""
        return self._typed(name, InputModulator)

    def detector(self, name: str) -> Photodetector:
        """The named photodetector."""
        return self._typed(name, Photodetector)

    def _typed(self, name: str, cls: type) -> Any:
        dev = self.instruments[name]
        if not isinstance(dev, cls):
            raise TypeError(f"{name} is a {dev.kind}, not a {cls.kind}")
        return dev
