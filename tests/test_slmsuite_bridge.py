"""Vendor SLMs and cameras through slmsuite, exercised with slmsuite's own simulated SLM
and camera (the camera images the SLM's far field, so what one shows the other sees)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from conftest import SATLAB
from satlab.drivers.slmsuite_bridge.camera import SlmsuiteCamera
from satlab.drivers.slmsuite_bridge.slm import SlmsuiteSlm
from slmsuite.hardware.cameras.simulated import SimulatedCamera
from slmsuite.hardware.slms.simulated import SimulatedSLM

from satlab.instruments import InstrumentFault, Roi
from satlab.validation import OptionError


@pytest.fixture
def bench():
    sim_slm = SimulatedSLM((64, 48), pitch_um=(8, 8))
    return SlmsuiteSlm(sim_slm), SlmsuiteCamera(SimulatedCamera(sim_slm, bitdepth=12))


def brightest(frame: np.ndarray) -> tuple[int, int]:
    return tuple(int(i) for i in np.unravel_index(frame.argmax(), frame.shape))


def test_a_blazed_grating_on_the_slm_moves_the_spot_on_the_camera(bench):
    slm, cam = bench
    assert slm.shape == (48, 64) and slm.bit_depth == 8 and slm.pixel_pitch_m == 8e-6
    assert cam.shape == (48, 64) and cam.bit_depth == 12
    flat = brightest(cam.acquire().counts[0])
    # a ramp of 2π every 8 columns deflects the beam by 64/8 = 8 camera pixels
    cols = np.arange(64)[None, :] * np.ones((48, 1))
    slm.show_phase(-2 * np.pi * cols / 8)
    moved = brightest(cam.acquire().counts[0])
    assert moved[0] == flat[0] and abs(moved[1] - flat[1]) == 8
    slm.show_phase(2 * np.pi * cols / 8)  # the opposite blaze deflects the other way
    back = brightest(cam.acquire().counts[0])
    assert back[0] == flat[0] and back[1] - flat[1] == flat[1] - moved[1]
    slm.safe_state()
    assert not np.asarray(slm.slm.display).any()
    assert brightest(cam.acquire().counts[0]) == flat


def test_camera_roi_exposure_and_saturation(bench):
    slm, cam = bench
    full = cam.grab(1)[0]
    cam.set_roi(Roi(row=20, col=26, height=9, width=12))
    np.testing.assert_array_equal(cam.grab(2), np.stack([full[20:29, 26:38]] * 2))
    assert not cam.acquire().saturated.any()
    cam.set_exposure(50.0)
    assert cam.exposure_s == 50.0
    assert cam.acquire().saturated.all()  # the spot clips at 4095
    with pytest.raises(ValueError, match="does not fit"):
        cam.set_roi(Roi(40, 0, 20, 10))


def test_a_vendor_error_is_one_fault_naming_the_call(bench):
    slm, _ = bench

    def refuse(*args, **kwargs):
        raise RuntimeError("SDK error 7: display not connected")

    slm.slm.set_phase = refuse
    with pytest.raises(InstrumentFault, match=r"SimulatedSLM: 'set_phase' -> RuntimeError: SDK error 7"):
        slm.show_phase(np.zeros(slm.shape))


def test_rig_file_names_slmsuite_classes_and_bad_names_are_refused(tmp_path):
    rig = tmp_path / "rig.yaml"
    rig.write_text("name: slmsuite-slm\ninstruments:\n  mask:\n    kind: phase_modulator\n"
                   "    driver: slmsuite.slm\n"
                   "    options: {model: simulated.SimulatedSLM, settings: {resolution: [64, 48]}}\n")
    out = subprocess.run([SATLAB, "rig", "check", str(rig)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "slmsuite SimulatedSLM: 64x48, 8-bit, 8 um pitch" in out.stdout
    for model, message in [("nosuch.Thing", "slmsuite has no slm module 'nosuch'"),
                           ("Holoeye", "expected module.Class")]:
        with pytest.raises(OptionError, match=message):
            SlmsuiteSlm.check_options(model)
    with pytest.raises(OptionError, match="has no class 'Nope'"):
        SlmsuiteSlm("simulated.Nope")
    with pytest.raises(OptionError, match="exposure_s"):
        SlmsuiteCamera.check_options("simulated.SimulatedCamera", exposure_s=0)
    with pytest.raises(OptionError, match="lut_file"):
        SlmsuiteSlm.check_options("simulated.SimulatedSLM", lut_file=str(tmp_path / "missing.txt"))


def test_a_failed_open_closes_the_device_and_a_refused_window_is_a_fault(tmp_path):
    sim = SimulatedSLM((64, 48))
    closed = []
    sim.close = lambda: closed.append(True)
    short = tmp_path / "short.txt"
    np.savetxt(short, np.linspace(0, 6, 16))
    with pytest.raises(OptionError, match="16 levels; the SLM's 8 bits need 256"):
        SlmsuiteSlm(sim, lut_file=str(short))
    assert closed == [True]
    cam = SlmsuiteCamera(SimulatedCamera(SimulatedSLM((64, 48)), bitdepth=12))

    def snapping(woi):  # hardware that moves the origin to its 4-pixel steps
        return (woi[0] // 4 * 4, woi[1], woi[2], woi[3])

    cam.cam.set_woi = snapping
    with pytest.raises(InstrumentFault, match=r"the camera set \(4, 5, 0, 5\)"):
        cam.set_roi(Roi(row=0, col=6, height=5, width=5))
    assert cam.roi == Roi(0, 0, 48, 64)  # unchanged: frames keep their known window
