"""The replay camera: recorded frames served through the Camera interface."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from conftest import SATLAB
from satlab.drivers.replay.camera import ReplayCamera, record

from satlab.instruments import InstrumentFault, Roi
from satlab.validation import OptionError


@pytest.fixture
def recording(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(100, 3000, size=(5, 12, 16), dtype=np.uint16)
    frames[3, 7, 9] = 4095  # one saturated pixel in the 4th frame (12-bit camera)
    path = tmp_path / "rec.npz"
    np.savez(path, frames=frames, exposure_s=0.002, bit_depth=12, pixel_pitch_m=5.5e-6)
    return path, frames


def test_frames_come_back_in_order_over_the_roi_and_loop(recording):
    path, frames = recording
    cam = ReplayCamera(str(path))
    assert cam.shape == (12, 16) and cam.bit_depth == 12 and cam.exposure_s == 0.002
    np.testing.assert_array_equal(cam.grab(2), frames[:2])
    cam.set_roi(Roi(row=2, col=3, height=4, width=5))
    got = cam.grab(4)  # frames 2, 3, 4, then 0 again
    np.testing.assert_array_equal(got, frames[[2, 3, 4, 0], 2:6, 3:8])
    with pytest.raises(ValueError, match="does not fit"):
        cam.set_roi(Roi(row=10, col=0, height=4, width=4))


def test_saturation_is_flagged_per_frame_and_the_dark_frame_is_subtracted(recording):
    path, frames = recording
    cam = ReplayCamera(str(path))
    dark = cam.take_dark(frames=5)
    np.testing.assert_allclose(dark, frames.mean(axis=0))
    shot = cam.acquire(frames=5)
    assert shot.saturated.tolist() == [False, False, False, True, False]
    np.testing.assert_allclose(shot.signal, frames - frames.mean(axis=0))
    cam.set_roi(Roi(0, 0, 4, 4))  # a dark frame of another ROI would be wrong: forgotten
    assert cam.acquire().dark is None


def test_a_recording_without_loop_runs_out_as_a_fault(recording):
    path, _ = recording
    cam = ReplayCamera(str(path), loop=False)
    cam.grab(4)
    with pytest.raises(InstrumentFault, match="ends after 5 frames"):
        cam.grab(2)
    for frames in (0, -3):
        with pytest.raises(ValueError, match="positive number of frames"):
            cam.grab(frames)


def test_only_the_recorded_exposure_exists(recording):
    cam = ReplayCamera(str(recording[0]))
    cam.set_exposure(0.002)
    with pytest.raises(ValueError, match="recorded at 0.002 s"):
        cam.set_exposure(0.01)


def test_record_writes_what_the_camera_grabbed(recording, tmp_path):
    path, frames = recording
    source = ReplayCamera(str(path))
    source.set_roi(Roi(1, 1, 6, 7))
    copy = ReplayCamera(str(record(source, tmp_path / "copy", frames=5)))
    assert copy.shape == (6, 7) and copy.pixel_pitch_m == 5.5e-6
    np.testing.assert_array_equal(copy.grab(5), frames[:, 1:7, 1:8])


@pytest.mark.parametrize("contents, message", [
    ({"frames": np.zeros((2, 3, 3))}, "unsigned counts"),
    ({"frames": np.zeros((2, 3, 3), np.uint16), "bit_depth": 12}, "scalar 'exposure_s'"),
    ({"frames": np.full((2, 3, 3), 300, np.uint16), "bit_depth": 8, "exposure_s": 0.1}, "bit_depth 8"),
    ({"frames": np.zeros((2, 3, 3), np.uint8), "bit_depth": 8, "exposure_s": -1.0}, "positive"),
])
def test_a_bad_recording_is_named_with_what_is_wrong(tmp_path, contents, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **contents)
    with pytest.raises(OptionError, match=message) as err:
        ReplayCamera.check_options(str(path))
    assert err.value.option == "file" and str(path) in str(err.value)
    (tmp_path / "text.npz").write_text("not a recording")
    with pytest.raises(OptionError, match="not a readable .npz"):
        ReplayCamera(str(tmp_path / "text.npz"))


def test_rig_check_reads_a_frame(recording, tmp_path):
    path, _ = recording
    rig = tmp_path / "cam-rig.yaml"
    rig.write_text(f"name: camera-only\ninstruments:\n  cam:\n    kind: camera\n"
                   f"    driver: replay.camera\n    options: {{file: '{path}'}}\n")
    out = subprocess.run([SATLAB, "rig", "check", str(rig)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "16x12 px ROI, 12-bit, max" in out.stdout and "5 frames of 16x12" in out.stdout
    bad = tmp_path / "bad-rig.yaml"
    bad.write_text(rig.read_text().replace(str(path), str(tmp_path / "missing.npz")))
    out = subprocess.run([SATLAB, "rig", "check", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "instruments.cam.options.file" in out.stderr
