"""Rig files: every mistake is reported with file, field and expectation, before any hardware."""

from __future__ import annotations

import copy

import pytest

from satlab.rigfile import load_rig_file
from satlab.validation import ConfigError

from conftest import TWO_LAYER_RIG, bank_rig, write_yaml


def broken(path, edit):
    data = bank_rig()
    edit(data)
    return write_yaml(path, data)


CASES = [
    (lambda d: d["instruments"]["heaters"]["limits"].update(max_current=-1),
     "instruments.heaters.limits.max_current", "greater than 0"),
    (lambda d: d["instruments"]["heaters"].update(driver="simulated.nope"),
     "instruments.heaters.driver", "unknown driver 'simulated.nope'"),
    (lambda d: d["instruments"]["pd"].update(driver="simulated.mrr_heaters"),
     "instruments.pd.driver", "is a current_source, not a photodetector"),
    (lambda d: d["instruments"]["heaters"].pop("limits"),
     "instruments.heaters", "needs limits"),
    (lambda d: d["instruments"]["heaters"].update(resource="chip2"),
     "instruments.heaters.resource", "no resource named 'chip2'"),
    (lambda d: d["system"]["layers"][0].update(detector="inputs"),
     "system.layers.0.detector", "must be a photodetector"),
    (lambda d: d["system"]["layers"][0].update(heater_channels=[0, 1]),
     "system.layers.0", "must list 24 channels"),
    (lambda d: d["instruments"]["heaters"]["limits"].update(max_total_power=1.0),
     "instruments.heaters.limits", "needs heater_resistance_ohm"),
    (lambda d: d["instruments"]["heaters"].update(settle=0.1),
     "instruments.heaters.settle", "Extra inputs are not permitted"),
]


@pytest.mark.parametrize("edit,field,expected", CASES)
def test_bad_rig_file_names_file_field_and_expectation(tmp_path, edit, field, expected):
    path = broken(tmp_path / "bad-rig.yaml", edit)
    with pytest.raises(ConfigError) as info:
        load_rig_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}")
    assert expected in message


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "rig.yaml"
    path.write_text("name: x\ninstruments: {a: [1, 2}\n")
    with pytest.raises(ConfigError, match=r"rig.yaml: line 2: not valid YAML"):
        load_rig_file(path)


def test_shipped_rig_validates_and_expands_anchors():
    spec = load_rig_file(TWO_LAYER_RIG)
    assert [layer.name for layer in spec.system.layers] == ["fc2", "fc3"]
    assert spec.system.layers[0].twin.options == spec.resources["chip_fc2"].options


def test_valid_file_round_trips(tmp_path):
    data = copy.deepcopy(bank_rig())
    spec = load_rig_file(write_yaml(tmp_path / "rig.yaml", data))
    assert spec.instruments["heaters"].limits.max_current == 0.024
