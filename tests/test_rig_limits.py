"""The rig's single write path: limits, ramps, clipping, and the safe state on every exit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import bank_rig
from hypothesis import given, settings
from hypothesis import strategies as st

from satlab.rig import Rig, RigLimitError
from satlab.rigfile import RigSpec

CH = 6
LIMITS = {"max_current": [0.01, 0.01, 0.008, 0.01, 0.006, 0.01], "max_total_power": 0.1,
          "heater_resistance_ohm": 500.0, "max_step": 0.004}


def make_rig(clip: bool = False, max_current: float | list[float] = LIMITS["max_current"]) -> Rig:
    limits = {**LIMITS, "clip": clip, "max_current": max_current}
    return Rig(RigSpec.model_validate(bank_rig(rows=2, cols=3, heater_options={"record": True},
                                               limits=limits)))


def assert_history_within_limits(history: list[np.ndarray],
                                 max_current: float | list[float] = LIMITS["max_current"]) -> None:
    previous = np.zeros(CH)
    for applied in history:
        assert applied.min() >= 0
        assert (applied <= np.array(max_current)).all()
        assert float(applied @ applied) * 500.0 <= LIMITS["max_total_power"] * (1 + 1e-12)
        assert np.abs(applied - previous).max() <= LIMITS["max_step"] + 1e-12
        previous = applied


bad_value = st.one_of(st.floats(-0.02, 0.03), st.sampled_from([math.nan, math.inf, -math.inf, 1.0]))
# Mostly plausible requests near the limits, some with one corrupted channel.
request = st.tuples(st.lists(st.floats(0, 0.012), min_size=CH, max_size=CH),
                    st.one_of(st.none(), st.tuples(st.integers(0, CH - 1), bad_value)))


@settings(max_examples=150, deadline=None)
@given(st.lists(request, min_size=1, max_size=8), st.booleans(),
       st.sampled_from([LIMITS["max_current"], 0.007]))
def test_no_request_sequence_exceeds_limits(requests, clip, max_current):
    with make_rig(clip, max_current) as rig:
        source = rig.source("heaters")
        for values, corruption in requests:
            req = np.array(values)
            if corruption is not None:
                req[corruption[0]] = corruption[1]
            try:
                rig.set_currents("heaters", req)
            except RigLimitError:
                pass
        during = list(source.history)
    assert_history_within_limits(during, max_current)
    assert_history_within_limits(source.history, max_current)  # including the ramp down on exit
    assert np.array_equal(source.history[-1], np.zeros(CH)) and not source.output


def test_rejections_name_the_problem_and_leave_state_unchanged():
    with make_rig() as rig:
        rig.set_currents("heaters", np.full(CH, 0.002))
        before = rig.source("heaters").get_currents()
        with pytest.raises(RigLimitError, match="non-finite.*channels \\[2\\]"):
            rig.set_currents("heaters", np.array([0, 0, np.nan, 0, 0, 0.0]))
        with pytest.raises(RigLimitError, match="channel 4 requested 0.007 A, allowed \\[0, 0.006\\]"):
            rig.set_currents("heaters", np.array([0, 0, 0, 0, 0.007, 0.0]))
        with pytest.raises(RigLimitError, match="total heater power"):
            rig.set_currents("heaters", np.array([0.01, 0.01, 0.008, 0.01, 0.006, 0.01]))
        assert np.array_equal(rig.source("heaters").get_currents(), before)


def test_clip_applies_nearest_allowed_value():
    with make_rig(clip=True) as rig:
        rig.set_currents("heaters", np.array([-1.0, 0.002, 0.009, 0.0, 0.05, 0.0]))
        assert np.allclose(rig.source("heaters").get_currents(), [0, 0.002, 0.008, 0, 0.006, 0])


def test_large_move_is_ramped_in_max_steps():
    with make_rig() as rig:
        rig.set_currents("heaters", np.array([0.01, 0, 0, 0, 0, 0.0]))
        steps = [h[0] for h in rig.source("heaters").history[1:]]  # [0]: zeroed on opening
    # 0.01 A in steps of at most 0.004 A: three equal steps
    assert steps == pytest.approx([0.01 / 3, 0.02 / 3, 0.01])


def test_exception_inside_rig_ramps_down_and_switches_off():
    with pytest.raises(RuntimeError, match="experiment failed"), make_rig() as rig:
        source = rig.source("heaters")
        rig.set_currents("heaters", np.full(CH, 0.005))
        raise RuntimeError("experiment failed")
    assert np.array_equal(source.history[-1], np.zeros(CH)) and not source.output
    assert_history_within_limits(source.history)
    assert len(source.history) >= 1 + 2  # up in two ramp steps, down in two


def test_channel_map_routes_each_ring_to_its_heater_and_commands_are_logged():
    import torch

    from satlab.systems.mrr import MrrLayerBackend

    data = bank_rig(rows=2, cols=3)
    permutation = [5, 3, 1, 0, 2, 4]
    data["system"]["layers"][0]["heater_channels"] = permutation
    spec = RigSpec.model_validate(data)
    with Rig(spec) as rig:
        backend = MrrLayerBackend(rig, spec.system.layers[0])
        ring_currents = np.arange(1, 7) * 1e-3
        backend.evaluate(torch.rand(2, 3), torch.from_numpy(ring_currents))
        applied = rig.source("heaters").get_currents()
        writes = [c for c in rig.commands if c.action == "set_currents"]
    assert np.allclose(applied[permutation], ring_currents)
    # opening writes zeros (before enabling the outputs), then the layer's one write
    assert len(writes) == 2 and not writes[0].value.any() and np.allclose(writes[1].value, applied)


def test_failed_ramp_down_still_reaches_the_safe_state():
    spec = RigSpec.model_validate(bank_rig(rows=2, cols=3, limits=LIMITS,
                                           heater_options={"record": True, "fail_after_writes": 2}))
    with Rig(spec) as rig:
        source = rig.source("heaters")
        rig.set_currents("heaters", np.full(CH, 0.002))  # writes 1 (zero on opening) and 2 succeed
    # the ramp-down write failed; the instrument's own safe state still zeroed it and switched off
    assert np.array_equal(source.history[-1], np.zeros(CH))
    assert source.history[-2] == pytest.approx(np.full(CH, 0.002))
    assert not source.output
