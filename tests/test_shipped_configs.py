"""Every training config shipped in satlab/configs is valid and fits its rig file."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from satlab.config import load_config
from satlab.rigfile import load_rig_file
from satlab.training import check_model_matches_rig

CONFIGS = sorted(p for p in Path(str(files("satlab.configs"))).glob("*.yaml")
                 if "rig" in yaml.safe_load(p.read_text()))


def test_the_paper_configs_are_among_them():
    assert {"d2nn-paper.yaml", "freespace-paper.yaml", "default.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_a_shipped_config_loads_and_its_model_fits_its_rig(path):
    cfg = load_config(path)
    check_model_matches_rig(cfg, load_rig_file(cfg.rig), path)
    if cfg.data.source == "idx":  # the full-MNIST configs name this repository's copy
        assert cfg.data.data_dir == (path.parent / "../../../shared/data/mnist").resolve()
