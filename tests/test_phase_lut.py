"""The SLM's gray-level ↔ phase table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from satlab.phase_lut import PhaseLut

TWO_PI = 2 * np.pi


def _calibrated(bits: int) -> PhaseLut:
    g = np.arange(2**bits) / 2**bits
    return PhaseLut(TWO_PI * (0.9 * g + 0.1 * g**3))  # a bent, measured-looking curve


@pytest.mark.parametrize("bits", [1, 4, 8, 10])
def test_every_gray_level_round_trips(bits):
    for lut in (PhaseLut.linear(bits), _calibrated(bits)):
        levels = np.arange(2**bits)
        np.testing.assert_array_equal(lut.to_gray(lut.to_phase(levels)), levels)
        assert lut.bits == bits and lut.to_gray(np.zeros(1)).dtype == (np.uint8 if bits <= 8 else np.uint16)


@given(st.lists(st.floats(-50, 50), min_size=1, max_size=30), st.sampled_from([2, 5, 8]))
def test_the_chosen_level_is_the_nearest_on_the_circle(phases, bits):
    lut = _calibrated(bits)
    phase = np.array(phases)
    chosen = lut.to_phase(lut.to_gray(phase))
    # circular distance from every level; the chosen one is (one of) the nearest
    every = np.abs(np.angle(np.exp(1j * (phase[:, None] - lut.phases[None, :]))))
    got = np.abs(np.angle(np.exp(1j * (phase - chosen))))
    np.testing.assert_allclose(got, every.min(axis=1), atol=1e-9)


def test_a_phase_just_below_two_pi_wraps_to_level_zero():
    lut = PhaseLut.linear(8)
    assert lut.to_gray(np.array([TWO_PI - 1e-6, -1e-6, TWO_PI])).tolist() == [0, 0, 0]
    assert len(np.unique(lut.to_gray(np.linspace(-10, 10, 100_000)))) == 256


@pytest.mark.parametrize("phases, message", [
    (np.linspace(0, 6, 100), "2\\^bits entries"),
    (np.array([0.0, 2.0, 1.0, 3.0]), "increase strictly"),
    (np.array([0.0, 2.0, 4.0, 7.0]), "within \\[0, 2π\\)"),
])
def test_unusable_tables_are_refused(phases, message):
    with pytest.raises(ValueError, match=message):
        PhaseLut(phases)


def test_a_calibration_file_names_itself_when_unusable(tmp_path):
    path = tmp_path / "lut.txt"
    path.write_text("0\n1\nabc\n3\n")
    with pytest.raises(ValueError, match=str(path)):
        PhaseLut.from_file(path)
