"""The incoherent free-space system (System 4) on its simulated bench."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
import torch
import yaml
from conftest import FREESPACE_RIG as RIG_FILE
from conftest import SATLAB, freespace_config, random_weights_and_images, write_yaml

from satlab.rig import Rig, RigError, RigLimitError
from satlab.simulators.freespace import optics
from satlab.simulators.freespace.incoherent import IncoherentModel
from satlab.rigfile import load_rig_file
from satlab.validation import ConfigError


def test_each_layer_computes_wx_over_the_input_light_and_equals_its_twin_bit_for_bit(freespace_opened):
    _, layers = freespace_opened
    assert [(l.in_features, l.out_features) for l in layers] == [(784, 144), (144, 10)]
    for seed, layer in enumerate(layers):
        w, x = random_weights_and_images(layer, seed)
        measured = layer.query(x, w.numpy())
        assert torch.equal(torch.from_numpy(measured), layer.twin(x, w))
        expected = (x @ w.reshape(layer.out_features, -1).T) / x.sum(1, keepdim=True)
        np.testing.assert_allclose(measured, expected.numpy(), atol=2e-3)  # the 16-bit camera's steps


def test_a_shifted_display_moves_the_whole_picture_down_into_the_neighbouring_tiles(freespace_opened):
    rig, layers = freespace_opened
    layer = layers[1]  # 10 + 1 tiles of 12x12, shown 4 to a row: a 3 x 4 picture of tiles
    w, x = random_weights_and_images(layer, 3)
    aligned = layer.query(x, w.numpy())
    rig.set_imperfection("shift_px", 2.0)
    # the shipped rig misaligns the first layer only (as the paper's study does)
    assert np.array_equal(layer.query(x, w.numpy()), aligned)
    rig.resources["fc2"].misaligns = ("shift_px",)
    rig.set_imperfection("shift_px", 2.0)
    measured = layer.query(x, w.numpy())
    tiles = np.concatenate([(w.reshape(10, 12, 12).numpy() + 1) / 2, np.full((1, 12, 12), 0.5)])
    # the reference in the middle place (row 1, column 2), the outputs row by row around it
    places = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 6]
    picture = np.zeros((3 * 12, 4 * 12))
    for k, tile in zip(places, tiles):
        picture[k // 4 * 12:(k // 4 + 1) * 12, k % 4 * 12:(k % 4 + 1) * 12] = tile
    moved = np.zeros_like(picture)
    moved[2:] = picture[:-2]  # two rows down, nothing shown above
    shown = np.stack([moved[k // 4 * 12:(k // 4 + 1) * 12, k % 4 * 12:(k % 4 + 1) * 12] for k in places])
    sums = x.numpy().reshape(-1, 144) @ shown.reshape(11, -1).T
    expected = (sums[:, :-1] - sums[:, -1:]) / sums[:, -1:]
    np.testing.assert_allclose(measured, expected, atol=2e-3)
    assert np.abs(measured - aligned).max() > 0.01  # and it matters


def test_a_rotated_display_moves_outer_tiles_further_than_central_ones(freespace_opened):
    rig, layers = freespace_opened
    layer = layers[1]
    rig.resources["fc2"].misaligns = ("rotation_deg", "shift_px", "scale")
    w, x = random_weights_and_images(layer, 5)
    aligned = layer.query(x, w.numpy())
    rig.set_imperfection("rotation_deg", 3.0)
    change = np.abs(layer.query(x, w.numpy()) - aligned).mean(0)
    # output 5 sits beside the picture's centre (with the reference), outputs 0, 3 and 7
    # at its corners (places 0, 3 and 8)
    assert change[[0, 3, 7]].min() > 2 * change[5]


@pytest.mark.parametrize("misalignment", [{"rotation_deg": 3.0}, {"rotation_deg": -3.0},
                                          {"scale": -0.1}, {"scale": 0.1}])
def test_the_reference_tile_stays_on_its_place_when_the_picture_turns_or_shrinks(misalignment):
    # every output is read against the reference tile; fc1's picture is 13 x 12 tiles
    model = IncoherentModel(28, 144)
    transmission = torch.ones(145, 28 * 28, dtype=torch.float64)
    transmission[-1] = 0.5  # the reference, among outputs at full transmission
    moved = optics.affine_resample(model.picture(transmission), math.radians(misalignment.get("rotation_deg", 0.0)),
                                   scale=1.0 + misalignment.get("scale", 0.0))
    reference = model.tiles(moved, 145)[-1]
    # its place shows mostly the reference (0.5): neither dark (off the picture) nor the
    # outputs (1.0); at a corner of the picture it would read about 0.26 or 0.74 at ∓3°
    assert 0.45 < float(reference.mean()) < 0.62


@pytest.mark.parametrize("name, value", [("rotation_deg", 3.0), ("scale", 1.1)])
def test_rotation_and_scale_change_the_outputs_until_reset(freespace_opened, name, value):
    rig, layers = freespace_opened
    layer = layers[0]
    w, x = random_weights_and_images(layer, 4)
    aligned = layer.query(x, w.numpy())
    rig.set_imperfection(name, value)
    assert np.abs(layer.query(x, w.numpy()) - aligned).max() > 0.01
    rig.reset_imperfections()
    assert np.array_equal(layer.query(x, w.numpy()), aligned)


def test_a_saturated_tile_camera_is_an_error(freespace_opened):
    rig, layers = freespace_opened
    rig.resources["fc2"].camera.electrons_per_unit = 1e4
    w, x = random_weights_and_images(layers[1], 5)
    with pytest.raises(RigError, match="camera2 saturated"):
        layers[1].query(x * 3, w.numpy())


@pytest.mark.parametrize("change, field, message", [
    (lambda s: s["system"]["layers"][0].update(in_features=780), "system.layers.0.in_features",
     "side x side pixels"),
    (lambda s: s["system"]["layers"][1].update(camera="camera1"), "system.layers.1.camera",
     "already used"),
    (lambda s: s["system"]["layers"][0].update(weights="camera1"), "system.layers.0.weights",
     "must be a input_modulator"),
    (lambda s: s["system"]["layers"][1].update(out_features=12), "system.layers.1.out_features",
     "weights2 has 1584 channels; this layer needs 1872"),
])
def test_rig_file_mistakes_name_their_field(tmp_path, change, field, message):
    spec = yaml.safe_load(RIG_FILE.read_text())
    change(spec)
    path = write_yaml(tmp_path / "rig.yaml", spec)
    with pytest.raises(ConfigError, match=message) as err:
        rig_spec = load_rig_file(path)
        with Rig(rig_spec, path):
            pass
    assert err.value.field == field


def test_sat_trains_the_displayed_weights_through_satlab_train(tmp_path):
    config = freespace_config(tmp_path)
    run = tmp_path / "run"
    done = subprocess.run([SATLAB, "train", str(config), "--run-dir", str(run), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "sat" / "summary.json").read_text())
    assert summary["rig_queries"] == 2 * 2 * 2  # two steps, two layers, SAT's two passes
    swept = subprocess.run([SATLAB, "evaluate", str(run), "--sweep", "shift_px=0,3"],
                           capture_output=True, text=True)
    assert swept.returncode == 0, swept.stderr
    assert "shift_px" in swept.stdout
    assert "BatchNorm running statistics" in swept.stdout  # BatchNorm between the layers


def test_a_weight_beyond_one_is_refused_by_the_rig_not_clipped(freespace_opened):
    _, layers = freespace_opened
    w, x = random_weights_and_images(layers[1], 7)
    w[5] = 1.2
    with pytest.raises(RigLimitError, match="within \\[0, 1\\]"):
        layers[1].query(x, w.numpy())
