"""Golden values: the MRR system reproduces the numbers main gave before the system protocol.

The values in golden/mrr_before_protocol.json are the numbers of commit 85a289e (before
the MRR code moved behind the system protocol and before batched probes): this module
and its conftest.py copied into a folder beside an install of 85a289e
(`pip install .` in a worktree of that commit), TWO_LAYER_RIG pointed at that worktree's
satlab/configs/mrr-sim.yaml, then `python test_golden.py --write` run there.

Each case runs in a fresh process with one thread and the CPU-independent arithmetic of
PyTorch's kernels and MKL (no AVX2/AVX-512 dispatch, no oneDNN): float32 convolutions
otherwise round differently on different processors, and the golden file must hold on
any machine, not only the one that wrote it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import golden_harness
from conftest import TWO_LAYER_RIG, tiny_config, write_yaml

from satlab.config import load_config
from satlab.data import load_offline_mnist
from satlab.rig import Rig
from satlab.rigfile import load_rig_file
from satlab.training import build_trainee, evaluate_trainee

GOLDEN = Path(__file__).parent / "golden" / "mrr_before_protocol.json"
CASES = {
    "fd_central_sat": ({"name": "finite_difference", "scheme": "central"}, "sat", 0.0),
    "fd_forward_plain": ({"name": "finite_difference", "scheme": "forward"}, "plain", 0.0),
    "spsa_sat_noisy": ({"name": "spsa", "directions": 3}, "sat", 2e-5),
    "physics_aware_sat": ({"name": "physics_aware"}, "sat", 0.0),
}


def run_case(tmp: Path, estimator: dict, method: str, noise_W: float) -> dict:
    """Three training steps of a two-layer demo rig and a small evaluation, as numbers."""
    rig = yaml.safe_load(TWO_LAYER_RIG.read_text())
    for name in ("chip_fc2", "chip_fc3"):
        rig["resources"][name]["options"]["detector_noise_W"] = noise_W
    rig_path = write_yaml(tmp / "rig.yaml", rig)
    data_cfg = tiny_config(rig_path, methods=[method])
    data_cfg["estimator"] = estimator
    data_cfg["model"]["conv_channels"] = [4]
    cfg = load_config(write_yaml(tmp / "cfg.yaml", data_cfg))
    data = load_offline_mnist(12, 5)
    with Rig(load_rig_file(cfg.rig), cfg.rig) as rig:
        tr = build_trainee(cfg, rig, method)
        losses = []
        for step in range(3):
            idx = slice(24 * step, 24 * (step + 1))
            loss, _ = tr.controller.step(data.train_x[idx], data.train_y[idx])
            losses.append(float(loss))
        controls = [c.detach() for c in tr.model.control_parameters()]
        result = evaluate_trainee(cfg, tr, rig, data, [0.0, 1.0], progress=False)
        return {
            "losses": losses,
            "control_sums": [float(c.sum()) for c in controls],
            "control_sq_sums": [float(c.pow(2).sum()) for c in controls],
            "rig_queries": tr.rig_queries,
            "accuracy": [p["accuracy"] for p in result["drift_sweep"]],
        }


@pytest.mark.parametrize("case", sorted(CASES))
def test_mrr_numbers_match_main_before_the_protocol(case, tmp_path):
    expected = json.loads(GOLDEN.read_text())[case]
    got = golden_harness.run_reproducibly(__file__, case, tmp_path)
    assert got["rig_queries"] == expected["rig_queries"]
    assert got["accuracy"] == expected["accuracy"]
    for key in ("losses", "control_sums", "control_sq_sums"):
        assert got[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-15), key


if __name__ == "__main__":
    golden_harness.main(__file__, CASES, run_case, GOLDEN)
