"""An instrument fault mid-training: safe rig, intact checkpoint, clean resume."""

from __future__ import annotations

import subprocess

import yaml
from conftest import SATLAB, TWO_LAYER_RIG, tiny_config, write_yaml

from satlab import checkpoint


def satlab(*args):
    return subprocess.run([SATLAB, *map(str, args), "--quiet"],
                          capture_output=True, text=True, timeout=600)


def test_fault_leaves_rig_safe_and_checkpoint_resumable(tmp_path):
    trace = tmp_path / "fc2.trace"
    rig = yaml.safe_load(TWO_LAYER_RIG.read_text())
    # 18 writes per SAT step on fc2 (SPSA, 4 directions: 1 + 2*4 per pass, two passes)
    rig["instruments"]["heaters_fc2"]["options"] = {"fail_after_writes": 100, "trace_file": str(trace)}
    rig_path = write_yaml(tmp_path / "rig.yaml", rig)
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config(rig_path, methods=["sat"], epochs=2))
    run = tmp_path / "run"

    result = satlab("train", cfg, "--run-dir", run)
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]  # one line: the rig file's name for it first
    assert first.startswith("error: heaters_fc2: simulated MRR heater source")
    assert first.endswith("'set_currents' -> OSError: simulated heater source: no reply to "
                          "write #101 (the rig was left in its safe state)")
    assert f"satlab train --resume {run}" in result.stderr
    output, max_current, _ = trace.read_text().splitlines()[-1].split()
    assert output == "0" and float(max_current) == 0.0  # ramped down and switched off

    state = checkpoint.load(run / "sat" / "checkpoint.pt")  # intact, from before the fault
    assert (state["epoch"], state["step"]) == (1, 0) and not state["done"]

    resolved = yaml.safe_load((run / "rig.yaml").read_text())
    resolved["instruments"]["heaters_fc2"]["options"].pop("fail_after_writes")  # "repaired"
    write_yaml(run / "rig.yaml", resolved)
    result = satlab("train", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert checkpoint.load(run / "sat" / "checkpoint.pt")["done"]
    assert (run / "sat" / "summary.json").exists()
