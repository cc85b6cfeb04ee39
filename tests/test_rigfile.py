"""Rig files: every mistake is reported with file, field and expectation, before any hardware."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import TWO_LAYER_RIG, bank_rig, write_yaml

from satlab.rig import Rig
from satlab.rigfile import load_rig_file
from satlab.validation import ConfigError


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
     "instruments.pd.driver", "is not a photodetector (it is a current_source)"),
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
     "instruments.heaters.settle", "unknown key 'settle' (did you mean 'settle_time'?)"),
    (lambda d: d["instruments"]["heaters"]["options"].update(recrod=True),
     "instruments.heaters.options", "unexpected keyword argument 'recrod'"),
    (lambda d: d["resources"]["chip"]["options"].update(rows="ten"),
     "resources.chip.options.rows", "expected a positive integer up to 4096, got 'ten'"),
    (lambda d: d["resources"]["chip"]["options"].update(preset="nope"),
     "resources.chip.options.preset", "expected one of paper_system1, tait_bank"),
    (lambda d: d["resources"]["chip"]["options"].update(fwhm=0.3),
     "resources.chip.options.fwhm", "unknown option"),
    (lambda d: d["system"]["layers"][0]["twin"].update(driver="simulated.mrr_heaters"),
     "system.layers.0.twin.driver", "is not a digital twin"),
    (lambda d: d["system"]["layers"][0]["twin"]["options"].update(crosstalk="strong"),
     "system.layers.0.twin.options.crosstalk", "expected coupling fractions of the neighbours"),
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
    assert spec.instruments["heaters"].limits.max_current == [0.024]


def two_layer_rig(tmp_path, edit):
    data = yaml.safe_load(TWO_LAYER_RIG.read_text())
    edit(data)
    return write_yaml(tmp_path / "rig.yaml", data)


def test_layers_cannot_share_optics(tmp_path):
    path = two_layer_rig(tmp_path, lambda d: d["system"]["layers"][1].update(detector="pd_fc2"))
    with pytest.raises(ConfigError, match=r"system.layers.1.detector: 'pd_fc2' is already used by layer fc2"):
        load_rig_file(path)


def test_layers_sharing_a_source_need_disjoint_channels(tmp_path):
    path = two_layer_rig(tmp_path, lambda d: d["system"]["layers"][1].update(heaters="heaters_fc2"))
    with pytest.raises(ConfigError, match=r"system.layers.1.heater_channels: channels overlap"):
        load_rig_file(path)


@pytest.mark.parametrize("edit,field,expected", [
    (lambda d: d["system"]["layers"][0].update(heater_channels=list(range(100, 124))),
     "system.layers.0.heater_channels", "channel 123 does not exist on heaters (24 channels)"),
    (lambda d: d["instruments"]["heaters"]["limits"].update(max_current=[0.01, 0.02]),
     "instruments.heaters.limits.max_current", "one value per channel expected (24), got 2"),
])
def test_what_needs_the_open_instrument_is_checked_before_any_write(tmp_path, edit, field, expected):
    trace = tmp_path / "trace"
    data = bank_rig(heater_options={"trace_file": str(trace)})
    edit(data)
    with pytest.raises(ConfigError) as info:
        with Rig.from_file(write_yaml(tmp_path / "rig.yaml", data)):
            pass
    assert str(info.value).startswith(f"{tmp_path / 'rig.yaml'}: {field}: {expected}")
    assert not trace.exists() or "1 " not in trace.read_text()  # no current ever enabled
