"""Golden values: the D2NN and free-space systems reproduce the numbers of commit 45bb449.

Pinned before simulators/ was grouped by system, so the move (and anything after it)
must leave their physics and training bit for bit as they were. golden/optics_45bb449.json
was written by `python tests/test_golden_optics.py --write` at that commit. Cases run in
a fresh process with processor-independent arithmetic, as in test_golden.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import golden_harness
from conftest import write_yaml

from satlab.config import load_config
from satlab.data import load_offline_mnist
from satlab.evaluation import imperfection_sweep
from satlab.rig import Rig
from satlab.rigfile import load_rig_file
from satlab.training import build_trainee

GOLDEN = Path(__file__).parent / "golden" / "optics_45bb449.json"
CONFIGS = Path(__file__).resolve().parents[1] / "satlab" / "configs"
FREESPACE_MODEL = {"front": "image", "physical": [784, 144, 10], "activation": "sigmoid",
                   "readout_scale": 10, "init_weight_range": 0.3}
CASES = {  # rig, model, SAT's alignment radii, the sweep point scored after training
    "d2nn": ("d2nn-sim.yaml", {"front": "image", "physical": [4096, 10], "readout_scale": 10},
             {"mount": 1.0}, ("mask_rotation_deg", 0.5)),
    "freespace_physical": ("freespace-sim.yaml", FREESPACE_MODEL, {"mount1": 2.0, "stage1": 2.0},
                           ("shift_px", 1.5)),
    "freespace_paper": ("freespace-paper-sim.yaml",
                        {**FREESPACE_MODEL, "between": "bias", "readout_scale": 1,
                         "init_weight_range": 0.036},
                        {"mount1": 2.0, "stage1": 2.0, "zoom1": 0.1, "zoom2": 0.1},
                        ("rotation_deg", 1.0)),
}


def run_case(tmp: Path, rig_name: str, model: dict, rho_alignment: dict,
             point: tuple[str, float]) -> dict:
    """Two SAT steps with the alignment knobs, then the outputs and a misaligned sweep point."""
    cfg = load_config(write_yaml(tmp / "cfg.yaml", {
        "name": "golden", "rig": str(CONFIGS / rig_name),
        "data": {"train_per_class": 2, "test_per_class": 1}, "model": model,
        "estimator": {"name": "physics_aware"},
        "training": {"methods": ["sat"], "epochs": 1, "batch_size": 10, "lr_controls": 0.05,
                     "lr_digital": 0.01, "rho": 0.1, "adaptive": False,
                     "rho_alignment": rho_alignment}}))
    data = load_offline_mnist(2, 1)
    with Rig(load_rig_file(cfg.rig), cfg.rig) as rig:
        tr = build_trainee(cfg, rig, "sat")
        losses = [float(tr.controller.step(data.train_x[i:i + 10], data.train_y[i:i + 10])[0])
                  for i in (0, 10)]
        controls = [c.detach() for c in tr.model.control_parameters()]
        tr.model.eval()
        with torch.no_grad():
            outputs = tr.model(data.test_x[:5])
        swept = imperfection_sweep(tr.model, rig, data.test_x, data.test_y,
                                   [(point[0], [point[1]])], progress=False)
    return {"losses": losses, "control_sums": [float(c.sum()) for c in controls],
            "control_sq_sums": [float(c.pow(2).sum()) for c in controls],
            "outputs": outputs.double().flatten().tolist(), "rig_queries": tr.rig_queries,
            "swept_accuracy": swept[0]["accuracy"]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_optics_numbers_match_the_commit_before_simulators_were_grouped(case, tmp_path):
    expected = json.loads(GOLDEN.read_text())[case]
    got = golden_harness.run_reproducibly(__file__, case, tmp_path)
    assert got["rig_queries"] == expected["rig_queries"]
    assert got["swept_accuracy"] == expected["swept_accuracy"]
    for key in ("losses", "control_sums", "control_sq_sums", "outputs"):
        assert got[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-15), key


if __name__ == "__main__":
    golden_harness.main(__file__, CASES, run_case, GOLDEN)
