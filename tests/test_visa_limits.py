"""No current beyond a rig file's limits ever reaches a VISA current source: every command
the Keithley drivers write through pyvisa (to the shipped simulations) is recorded and
its current parsed, whatever sequence of requests the rig receives."""

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


@pytest.fixture
def wire(monkeypatch):
    sent: list[str] = []
    write = VISAAdapter._write

    def recorded(self, command, **kwargs):
        sent.append(command)
        return write(self, command, **kwargs)

    monkeypatch.setattr(VISAAdapter, "_write", recorded)
    return sent


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
    per_channel: dict[str, list[float]] = {}
    for command in wire:
        if m := CURRENT.search(command):
            per_channel.setdefault(m["smu"] or "a", []).append(float(m["value"]))
    assert len(per_channel) == channels, f"current commands not recognised in {wire}"
    for sent in per_channel.values():
        assert all(0.0 <= c <= LIMIT for c in sent)
        assert np.abs(np.diff([0.0, *sent])).max() <= STEP + 1e-12  # ramped, never a jump
        assert sent[-1] == 0.0  # the rig left the source at zero
    assert np.all((0 <= last) & (last <= LIMIT))
