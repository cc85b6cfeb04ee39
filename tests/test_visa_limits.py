"""No current beyond a rig file's limits ever reaches a VISA current source: every command
the Keithley drivers write through pyvisa (to the shipped simulations) is recorded and
its current parsed, whatever sequence of requests the rig receives. The simulations keep
their state for the whole test session, so a source may open at whatever current an earlier
test left: each channel's ramp is measured from the current the rig read when it opened."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymeasure.adapters import VISAAdapter

from satlab.rig import Rig, RigLimitError
from satlab.rigfile import RigSpec

LIMIT, STEP = 0.01, 0.004
SOURCES = {  # driver: (address, options, channels)
    "keithley.2400": ("GPIB0::24::INSTR@sim", {}, 1),
    "keithley.2450": ("GPIB0::25::INSTR@sim", {}, 1),
    "keithley.2600": ("GPIB0::26::INSTR@sim", {"channels": 2}, 2),
}
# ':SOURCE:CURRENT 0.004' (2400), ':SOUR:CURR:LEV 0.004' (2450), 'smub.source.leveli=0.004'
CURRENT = re.compile(r"(?::SOURCE:CURRENT |:SOUR:CURR:LEV |smu(?P<smu>[ab])\.source\.leveli=)(?P<value>\S+)$")
# ':SOURCE:CURRENT?' (2400), ':SOUR:CURR?' (2450), 'print(smub.source.leveli)': the setpoint
SETPOINT = re.compile(r"^(?::SOURCE:CURRENT\?|:SOUR:CURR\?|print\(smu(?P<smu>[ab])\.source\.leveli\))$")


@pytest.fixture
def wire(monkeypatch):
    """Every message to and from the VISA instruments, in order: ("write" or "read", text)."""
    messages: list[tuple[str, str]] = []
    write, read = VISAAdapter._write, VISAAdapter._read

    def recorded_write(self, command, **kwargs):
        messages.append(("write", command))
        return write(self, command, **kwargs)

    def recorded_read(self, **kwargs):
        reply = read(self, **kwargs)
        messages.append(("read", reply))
        return reply

    monkeypatch.setattr(VISAAdapter, "_write", recorded_write)
    monkeypatch.setattr(VISAAdapter, "_read", recorded_read)
    return messages


def currents_on_the_wire(messages: list[tuple[str, str]]) -> tuple[dict, dict]:
    """Per channel: the setpoint first read back (what the rig found on opening, before it
    sent any current), and every current sent. A TSP line may hold several statements
    (``;``), each query among them answered by a reply line of its own, in order."""
    found: dict[str, float] = {}
    sent: dict[str, list[float]] = {}
    pending: list[str | None] = []  # the channels whose setpoints the next reads answer
    for kind, text in messages:
        if kind == "read":
            channel = pending.pop(0) if pending else None
            if channel is not None and channel not in sent and channel not in found:
                found[channel] = float(text)
            continue
        pending = []
        for statement in text.split(";"):
            if m := CURRENT.search(statement):
                sent.setdefault(m["smu"] or "a", []).append(float(m["value"]))
            elif m := SETPOINT.search(statement):
                pending.append(m["smu"] or "a")
            elif statement.endswith("?") or statement.startswith("print("):
                pending.append(None)
    return found, sent


def rig_for(driver: str) -> RigSpec:
    address, options, _ = SOURCES[driver]
    return RigSpec.model_validate({"name": "smu", "instruments": {"smu": {
        "kind": "current_source", "driver": driver, "address": address, "options": options,
        "limits": {"max_current": LIMIT, "max_step": STEP}}}})


value = st.one_of(st.floats(-0.02, 0.03), st.sampled_from([math.nan, math.inf, 1.0, LIMIT]))


@pytest.mark.parametrize("driver", sorted(SOURCES))
@settings(max_examples=15, deadline=None,  # the fixture's list is cleared for every example
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(st.lists(value, min_size=2, max_size=2), min_size=1, max_size=5))
def test_no_current_beyond_the_limits_reaches_the_wire(wire, driver, requests):
    wire.clear()
    channels = SOURCES[driver][2]
    with Rig(rig_for(driver)) as rig:
        for request in requests:
            try:
                rig.set_currents("smu", np.array(request[:channels]))
            except RigLimitError:
                pass
        last = rig.source("smu").get_currents()
    found, per_channel = currents_on_the_wire(wire)
    assert len(per_channel) == channels, f"current commands not recognised in {wire}"
    assert found.keys() == per_channel.keys(), f"no setpoint read before the first current in {wire}"
    for channel, sent in per_channel.items():
        start = found[channel]  # what an earlier test (or program) left: the ramp starts there
        # down from a negative start the ramp passes through negative currents; nothing else may
        assert all(min(0.0, start) <= c <= LIMIT for c in sent)
        assert np.abs(np.diff([start, *sent])).max() <= STEP + 1e-12  # ramped, never a jump
        assert sent[-1] == 0.0  # the rig left the source at zero
    assert np.all((0 <= last) & (last <= LIMIT))
