"""The display SLM under a real X server (Xvfb, started by pytest-xvfb): what reaches the
screen is read back with a screenshot of the X root window and compared pixel by pixel
with the LUT's gray levels."""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest
from conftest import SATLAB
from PIL import ImageGrab
from satlab.drivers.display.slm import DisplaySlm

from satlab import rig as rig_module
from satlab.phase_lut import PhaseLut
from satlab.rig import Rig
from satlab.rigfile import RigSpec
from satlab.validation import OptionError


@pytest.fixture
def display(xvfb):
    if xvfb is None:  # a failure, not a skip: the SLM path would go untested
        pytest.fail("Xvfb is not installed (apt-get install xvfb libgl1-mesa-dri libglx-mesa0 libgl1)")
    return xvfb


def screenshot() -> np.ndarray:
    """The X root window as (rows, cols, 3) uint8."""
    return np.asarray(ImageGrab.grab(xdisplay=os.environ["DISPLAY"]).convert("RGB"))


def test_a_mask_reaches_the_monitor_as_the_luts_gray_levels_pixel_for_pixel(display, tmp_path):
    # a calibrated, non-linear LUT: the shown levels must come from it, not from 2π g/256
    levels = np.arange(256)
    lut_file = tmp_path / "lut.txt"
    np.savetxt(lut_file, 2 * np.pi * (levels / 256) ** 1.3)
    slm = DisplaySlm(screen=0, lut_file=str(lut_file))
    try:
        assert slm.shape == (display.height, display.width)
        rows, cols = np.mgrid[0:slm.shape[0], 0:slm.shape[1]]
        mask = 0.02 * cols + 3.0 * np.sin(rows / 17.0) - 1.0  # wraps several times, negative too
        shown = slm.show_phase(mask)
        expected = PhaseLut.from_file(lut_file).to_gray(mask)
        np.testing.assert_array_equal(shown, expected)
        shot = screenshot()
        assert shot.shape[:2] == slm.shape
        for channel in range(3):
            np.testing.assert_array_equal(shot[..., channel], expected)
        assert len(np.unique(expected)) == 256  # every level exercised, none merged on the way

        slm.safe_state()
        assert not screenshot().any()  # blank: gray 0 everywhere
    finally:
        slm.close()


def test_rows_and_columns_are_not_swapped_or_flipped(display):
    slm = DisplaySlm(screen=0, bit_depth=2)
    try:
        gray = np.zeros(slm.shape, dtype=np.uint8)
        gray[0, 0], gray[0, -1], gray[-1, 0] = 1, 2, 3
        slm.show_gray(gray)
        shot = screenshot()[..., 0]
        assert (shot[0, 0], shot[0, -1], shot[-1, 0], shot[-1, -1]) == (1, 2, 3, 0)
        assert shot.sum() == 6
    finally:
        slm.close()


def test_bad_options_are_refused_before_a_window_opens(display, tmp_path):
    with pytest.raises(OptionError, match=r"monitor 3 does not exist; this display has 0 \(800x600\)"):
        DisplaySlm(screen=3)
    with pytest.raises(OptionError, match="not 1080x1920"):
        DisplaySlm(screen=0, shape=[1080, 1920])
    with pytest.raises(OptionError, match="bit_depth"):
        DisplaySlm.check_options(bit_depth=10)
    short = tmp_path / "short.txt"
    np.savetxt(short, np.linspace(0, 6, 16))
    with pytest.raises(OptionError, match="16 levels; the SLM's 8 bits need 256"):
        DisplaySlm(screen=0, lut_file=str(short))
    with pytest.raises(OptionError, match="does not fit monitor 0"):
        DisplaySlm(screen=0, fullscreen=False, shape=[700, 100])


def test_a_windowed_slm_of_a_given_shape(display):
    slm = DisplaySlm(screen=0, fullscreen=False, shape=[64, 96])
    try:
        assert slm.shape == (64, 96)
        with pytest.raises(ValueError, match=r"shape \(64, 96\)"):
            slm.show_phase(np.zeros((96, 64)))
        with pytest.raises(ValueError, match="finite"):
            slm.show_phase(np.full((64, 96), np.nan))
        with pytest.raises(ValueError, match="integers"):
            slm.show_gray(np.full((64, 96), 3.7))  # would be truncated silently
        with pytest.raises(ValueError, match="in \\[0, 256\\)"):
            slm.show_gray(np.full((64, 96), 256))
    finally:
        slm.close()


def test_rig_check_opens_the_slm_and_a_missing_display_is_one_fault(display, tmp_path):
    rig = tmp_path / "slm-rig.yaml"
    rig.write_text("name: slm-only\ninstruments:\n  mask:\n    kind: phase_modulator\n"
                   "    driver: display.slm\n    options: {screen: 0, pixel_pitch_um: 8}\n")
    out = subprocess.run([SATLAB, "rig", "check", str(rig)], capture_output=True, text=True, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert "display SLM on monitor 0: 800x600, 8-bit, 8 um pitch" in out.stdout
    gone = subprocess.run([SATLAB, "rig", "check", str(rig)], capture_output=True, text=True,
                          env={**os.environ, "DISPLAY": ":97"})  # no X server there
    assert gone.returncode == 1
    assert gone.stderr.count("\n") == 1 and "display SLM on monitor 0" in gone.stderr


def test_readings_after_a_mask_wait_for_the_slms_settle_time(display, monkeypatch):
    waited = []
    monkeypatch.setattr(rig_module, "wait_until", waited.append)  # the deadlines asked for
    spec = RigSpec.model_validate({"name": "slm-and-meter", "instruments": {
        "mask": {"kind": "phase_modulator", "driver": "display.slm", "options": {"screen": 0},
                 "settle_time": 0.25},
        "meter": {"kind": "photodetector", "driver": "thorlabs.pm100",
                  "address": "USB0::0x1313::0x8072::P2000000::INSTR@sim"}}})
    with Rig(spec) as rig:
        before = time.perf_counter()
        gray = rig.show_phase("mask", np.full(rig.instruments["mask"].shape, np.pi))
        assert int(gray[0, 0]) == 128 and rig.commands[-1].action == "show_phase"
        rig.read("meter")
    assert waited[-1] >= before + 0.25  # the reading was held until the mask had settled
