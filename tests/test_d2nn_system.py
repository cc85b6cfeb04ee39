"""The D2NN system on its simulated bench: instruments as views of one bench, the twin equal
to the bench through the interfaces, macro-pixels at device resolution, misalignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from satlab import registry
from satlab.rig import Rig, RigError
from satlab.rigfile import RigSpec
from satlab.validation import ConfigError

RIG = registry.lookup("d2nn", registry.SYSTEMS)  # the system class, found as a rig file finds it


@pytest.fixture
def opened():
    from importlib.resources import files

    path = files("satlab.configs") / "d2nn-sim.yaml"
    data = yaml.safe_load(path.read_text())
    data["system"]["layer"]["macro_pixel"] = 4  # blocks, so the mapping to SLM pixels shows
    spec = RigSpec.model_validate(data)
    with Rig(spec, path) as rig:
        (layer,) = RIG(spec, path).build_layers(rig)
        yield rig, layer


def digits_like(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 4096, generator=gen, dtype=torch.float64) * 0.2


def test_the_bench_through_its_instruments_equals_the_twin_bit_for_bit(opened):
    rig, layer = opened
    assert (layer.in_features, layer.out_features, layer.n_controls) == (4096, 10, 2 * 32 * 32)
    gen = torch.Generator().manual_seed(1)
    settings = torch.stack([layer.initial_controls(gen, 1.0) for _ in range(2)])
    x = digits_like(6, 2)
    measured = layer.query_many(x, settings.numpy())
    for row, out in zip(settings, measured):
        assert torch.equal(torch.from_numpy(out), layer.twin(x, row))
    np.testing.assert_allclose(measured.sum(-1), 1.0, rtol=1e-12)
    assert not np.allclose(measured[0], measured[1])  # the controls matter


def test_a_macro_pixel_mask_is_shown_at_device_resolution(opened):
    rig, layer = opened
    controls = torch.zeros(layer.n_controls, dtype=torch.float64)
    controls[0] = math.pi  # the top-left 4x4 block of the first mask
    controls[32 * 32 + 34] = math.pi / 2  # block (row 1, column 2) of the second mask
    layer.query(digits_like(1, 3), controls.numpy())
    first, second = rig.instruments["slm1"].bench.masks
    assert torch.all(first[:4, :4] == math.pi) and torch.count_nonzero(first) == 16
    assert torch.all(second[4:8, 8:12] == math.pi / 2) and torch.count_nonzero(second) == 16


@pytest.mark.parametrize("name, value", [("mask_rotation_deg", 1.0), ("mask_shift_px", 2.0),
                                         ("axial_error_um", 100.0), ("slm_fringing_px", 1.0),
                                         ("input_intensity_std", 0.2)])
def test_misalignment_moves_the_bench_and_not_the_twin(opened, name, value):
    rig, layer = opened
    controls = layer.initial_controls(torch.Generator().manual_seed(4), 1.0)
    x = digits_like(4, 5)
    aligned = layer.query(x, controls.numpy())
    rig.set_imperfection(name, value)
    moved = layer.query(x, controls.numpy())
    assert np.abs(moved - aligned).max() > 1e-3
    assert torch.equal(layer.twin(x, controls), torch.from_numpy(aligned))  # the twin stays put
    rig.reset_imperfections()
    assert np.array_equal(layer.query(x, controls.numpy()), aligned)


def test_fringing_acts_only_where_the_phase_changes_from_pixel_to_pixel(opened):
    rig, layer = opened
    x = digits_like(3, 6)
    uniform = torch.full((layer.n_controls,), 2.0, dtype=torch.float64)
    textured = layer.initial_controls(torch.Generator().manual_seed(6), 1.0)
    sharp = [layer.query(x, c.numpy()) for c in (uniform, textured)]
    rig.set_imperfection("slm_fringing_px", 2.0)
    assert np.array_equal(layer.query(x, uniform.numpy()), sharp[0])
    assert np.abs(layer.query(x, textured.numpy()) - sharp[1]).max() > 1e-3


def test_input_light_fluctuates_from_frame_to_frame(opened):
    rig, layer = opened
    x = digits_like(3, 7)
    controls = layer.initial_controls(torch.Generator().manual_seed(7), 1.0)
    steady = layer.query(x, controls.numpy())
    assert np.array_equal(layer.query(x, controls.numpy()), steady)
    rig.set_imperfection("input_intensity_std", 0.1)
    first, second = (layer.query(x, controls.numpy()) for _ in range(2))
    assert np.abs(first - second).max() > 1e-4  # a new draw each frame
    spread = {std: None for std in (0.05, 0.3)}
    for std in spread:
        rig.set_imperfection("input_intensity_std", std)
        spread[std] = np.abs(layer.query(x, controls.numpy()) - steady).mean()
    assert spread[0.3] > 2 * spread[0.05]


def test_phases_wrap_instead_of_piling_up_at_an_edge(opened):
    _, layer = opened
    controls = torch.tensor([-0.5, 7.0, 3.0] + [1.0] * (layer.n_controls - 3), dtype=torch.float64)
    layer.project(controls)
    torch.testing.assert_close(controls[:3], torch.tensor([2 * math.pi - 0.5, 7.0 - 2 * math.pi, 3.0],
                                                          dtype=torch.float64))


def test_a_saturated_camera_is_an_error_naming_the_exposure(opened):
    rig, layer = opened
    rig.instruments["camera"].set_exposure(0.5)  # 500 times the layer's exposure
    with pytest.raises(RigError, match="camera saturated on the detectors in 2 of 2 frames: lower the layer's exposure_s"):
        layer.query(digits_like(2, 6), torch.zeros(layer.n_controls, dtype=torch.float64).numpy())


@pytest.mark.parametrize("change, field, message", [
    (lambda s: s["system"]["layer"].update(macro_pixel=5), "system.layer.macro_pixel",
     "does not tile the 128x128"),
    (lambda s: s["system"]["layer"].update(camera="slm2"), "system.layer.camera", "must be a camera"),
    (lambda s: s["system"]["layer"].update(image=32), "system.layer.image", "digits shows 4096"),
    (lambda s: s["system"]["layer"]["detectors"].update(spacing_px=60), "system.layer.detectors",
     "leaves the 128x128 grid"),
    (lambda s: s["system"]["layer"].update(slms=["slm1"]), "system.layer.twin",
     "models 2 masks of 128x128"),
])
def test_rig_file_mistakes_name_their_field(tmp_path, change, field, message):
    from importlib.resources import files

    spec = yaml.safe_load((files("satlab.configs") / "d2nn-sim.yaml").read_text())
    spec["system"]["layer"].setdefault("detectors", {})
    change(spec)
    with pytest.raises(ConfigError, match=message) as err:
        rig_spec = RigSpec.model_validate(spec)
        RIG(rig_spec, tmp_path / "rig.yaml").check()
        with Rig(rig_spec, tmp_path / "rig.yaml"):
            pass
    assert err.value.field == field


def test_a_restored_bench_draws_the_same_camera_noise():
    from satlab.simulators.freespace.d2nn_bench import D2nnBench

    bench = D2nnBench(camera={"shot_noise": True, "read_noise_e": 3.0}, noise_seed=7)
    bench.load(digits_like(2, 8).numpy())
    state = bench.state_dict()
    first = bench.frames(1e-3)
    assert not torch.equal(bench.frames(1e-3), first)  # noisy: a second frame differs
    bench.load_state_dict(state)
    assert torch.equal(bench.frames(1e-3), first)
