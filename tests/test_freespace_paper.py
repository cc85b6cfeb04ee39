"""The SAT paper's own free-space geometry (preset paper_system4) behind the simulated instruments."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import SATLAB, freespace_config, random_weights_and_images, write_yaml

from satlab.rig import Rig
from satlab.rigfile import load_rig_file
from satlab.simulators.freespace.tile_frames import TileFrameModel
from satlab.systems import system_for
from satlab.validation import ConfigError

RIG_FILE = Path(__file__).resolve().parents[1] / "satlab" / "configs" / "freespace-paper-sim.yaml"
NAMES = ("rotation_deg", "shift_px", "scale")


def frames_as_described(weights: np.ndarray, side: int) -> torch.Tensor:
    """shared/REFERENCES.md's frames, built directly: each map zero-padded to 32 rows x 30
    columns (centred), 3 x 4 tiles to a frame, every column doubled (96 x 240)."""
    top, left = (32 - side) // 2, (30 - side) // 2
    count = math.ceil(len(weights) / 12)
    frames = torch.zeros(count, 96, 120, dtype=torch.float32)
    for k, w in enumerate(weights):
        f, slot = divmod(k, 12)
        r, c = divmod(slot, 4)
        frames[f, 32 * r + top:32 * r + top + side, 30 * c + left:30 * c + left + side] = \
            torch.from_numpy(w.reshape(side, side))
    return frames.repeat_interleave(2, dim=-1)


def read_back_as_described(frames: torch.Tensor, outputs: int, side: int) -> np.ndarray:
    """The even columns, each tile's weights at their fixed place."""
    top, left = (32 - side) // 2, (30 - side) // 2
    even = frames[..., ::2]
    out = []
    for k in range(outputs):
        f, slot = divmod(k, 12)
        r, c = divmod(slot, 4)
        out.append(even[f, 32 * r + top:32 * r + top + side, 30 * c + left:30 * c + left + side].flatten())
    return torch.stack(out).numpy()


def nearest_affine(frames: torch.Tensor, rotation_deg: float, shift_px: float, scale: float) -> torch.Tensor:
    """Each frame rotated (anticlockwise as displayed), magnified and shifted down about its
    centre, nearest-neighbour, zero fill: the inverse map onto grid_sample's pixel centres."""
    rows, cols = frames.shape[-2:]
    a = math.radians(rotation_deg)
    # grid_sample's output (x right, y down) → input; anticlockwise as displayed takes the
    # point on the right, (1, 0), to the top, (0, -1)
    theta = torch.tensor([[math.cos(a), -math.sin(a) * rows / cols], [math.sin(a) * cols / rows, math.cos(a)]],
                         dtype=torch.float32) / scale
    shift = torch.tensor([0.0, -2 * shift_px / rows], dtype=torch.float32)
    affine = torch.cat([theta, (theta @ shift)[:, None]], 1)
    grid = F.affine_grid(affine[None].expand(len(frames), 2, 3), [len(frames), 1, rows, cols], align_corners=False)
    return F.grid_sample(frames[:, None], grid, mode="nearest", align_corners=False)[:, 0]


@pytest.mark.parametrize(("side", "outputs"), [(28, 144), (12, 10)])
@pytest.mark.parametrize("misalignment", [(1.0, 0.0, 1.0), (0.0, 2.0, 1.0), (0.0, 1.5, 1.0), (-2.3, -1.0, 0.93),
                                          (0.4, 0.5, 1.05), (0.0, 0.0, 0.9)])
def test_the_read_back_weights_are_those_of_the_frames_as_described(side, outputs, misalignment):
    rng = np.random.default_rng(side)
    weights = rng.uniform(-1, 1, (outputs, side * side)).astype(np.float32)
    rotation, shift, scale = misalignment
    expected = read_back_as_described(nearest_affine(frames_as_described(weights, side), *misalignment),
                                      outputs, side)
    model = TileFrameModel(side, outputs)
    found = model.tile_sums(torch.eye(side * side, dtype=torch.float64),
                            torch.from_numpy((weights.astype(np.float64) + 1) / 2),
                            {"rotation_deg": rotation, "shift_px": shift, "scale": scale - 1})
    np.testing.assert_allclose(found.T.numpy(), expected, atol=1e-6)
    assert (expected == 0).mean() > 0.01  # some weights left their place: the case is not trivial


def test_one_pixel_of_shift_is_one_weight_row_and_nothing_moves_across_columns():
    model = TileFrameModel(28, 144)
    weights = torch.rand(144, 784, dtype=torch.float64) * 2 - 1
    moved = model.tile_sums(torch.eye(784, dtype=torch.float64), (weights + 1) / 2, {"shift_px": 1.0}).T
    maps, seen = weights.reshape(144, 28, 28), moved.reshape(144, 28, 28)
    assert torch.equal(seen[:, 1:], maps[:, :-1])  # every map one row down
    assert torch.equal(seen[:, 0], torch.zeros(144, 28, dtype=torch.float64))  # the padding above comes in


def test_through_its_instruments_the_bench_equals_the_twin_and_reads_signed_sums():
    spec = load_rig_file(RIG_FILE)
    with Rig(spec, RIG_FILE) as rig:
        layers = system_for(spec, RIG_FILE).build_layers(rig)
        for seed, layer in enumerate(layers):
            w, x = random_weights_and_images(layer, seed)
            measured = layer.query(x, w.numpy())
            assert torch.equal(torch.from_numpy(measured), layer.twin(x, w))
            mean, std = (0.1307, 0.3081) if layer.name == "fc1" else (0.0, 1.0)
            expected = ((x - mean) / std) @ w.reshape(layer.out_features, -1).T
            assert (expected < 0).any() and (expected > 0).any()
            np.testing.assert_allclose(measured, expected.numpy(), atol=2e-3)  # the camera's steps: 1e-3


def test_layer_two_takes_the_scale_and_nothing_else():
    spec = load_rig_file(RIG_FILE)
    with Rig(spec, RIG_FILE) as rig:
        fc1, fc2 = system_for(spec, RIG_FILE).build_layers(rig)
        w, x = random_weights_and_images(fc2, 4)
        w1, x1 = random_weights_and_images(fc1, 5)
        aligned, first = fc2.query(x, w.numpy()), fc1.query(x1, w1.numpy())
        for name, value in (("rotation_deg", 2.0), ("shift_px", 2.0)):
            rig.set_imperfection(name, value)
            assert np.array_equal(fc2.query(x, w.numpy()), aligned), name
        assert np.abs(fc1.query(x1, w1.numpy()) - first).max() > 0.01
        rig.reset_imperfections()
        rig.set_imperfection("scale", 1.1)
        assert np.abs(fc2.query(x, w.numpy()) - aligned).max() > 0.01


@pytest.mark.parametrize(("options", "field", "message"), [
    ({"input_normalisation": [0.1, 0.3]}, "input_normalisation", "need preset paper_system4"),
    ({"preset": "paper_system4", "input_normalisation": [0.1, 0]}, "input_normalisation", "std > 0"),
    ({"preset": "paper_system5"}, "preset", "physical, paper_system4"),
    ({"preset": "paper_system4", "misaligns": ["tilt"]}, "misaligns", "rotation_deg, shift_px, scale"),
])
def test_bad_preset_options_name_their_field(tmp_path, options, field, message):
    data = yaml.safe_load(RIG_FILE.read_text())
    data["resources"]["fc1"]["options"] = {"side": 28, "outputs": 144, **options}
    path = write_yaml(tmp_path / "rig.yaml", data)
    with pytest.raises(ConfigError) as err:
        load_rig_file(path)
    assert field in err.value.field and message in str(err.value)


def test_the_paper_config_trains_with_electronic_biases_and_all_knobs(tmp_path):
    config = yaml.safe_load(freespace_config(tmp_path, RIG_FILE).read_text())
    config["model"].update(between="bias", readout_scale=1, init_weight_range=0.036)
    config["training"]["rho_alignment"] = {"mount1": 2.0, "stage1": 2.0, "zoom1": 0.1, "zoom2": 0.1}
    config["training"]["gamma"] = 1 / 3
    path = write_yaml(tmp_path / "paper.yaml", config)
    result = subprocess.run([SATLAB, "train", str(path), "--run-dir", str(tmp_path / "run"), "--quiet"],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    state = torch.load(tmp_path / "run" / "sat" / "checkpoint.pt", weights_only=False)["model"]
    biases = [k for k in state if k.endswith(".bias") and k.startswith("between.")]
    assert biases == ["between.0.0.bias", "between.1.bias"]  # hidden units and logits
    assert not any("running_mean" in k for k in state)  # no BatchNorm anywhere
    assert state["between.0.0.bias"].abs().max() > 0  # trained
    # two steps, each: two passes through both layers, and every knob probed at ±step
    summary = json.loads((tmp_path / "run" / "sat" / "summary.json").read_text())
    assert summary["rig_queries"] == 2 * (2 * 2 + 2 * 4)


def test_registration_refuses_the_paper_geometry_before_any_query():
    from satlab.calibration.freespace import calibrate_registration

    spec = load_rig_file(RIG_FILE)
    with Rig(spec, RIG_FILE) as rig:
        rig.commands.clear()
        with pytest.raises(ConfigError) as err:
            calibrate_registration(rig, system_for(spec, RIG_FILE))
        assert err.value.field == "system.layers.0.twin" and "reference tile" in str(err.value)
        assert not rig.commands
