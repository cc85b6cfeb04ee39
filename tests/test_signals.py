"""A real process holding a rig is interrupted: the rig must end in its safe state."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import bank_rig, write_yaml

CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from satlab.rig import Rig
    with Rig.from_file(sys.argv[1]) as rig:
        rig.set_currents("heaters", np.full(6, 0.008))
        print("ready", flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_leaves_rig_safe(tmp_path, sig):
    trace = tmp_path / "heaters.trace"
    rig = write_yaml(tmp_path / "rig.yaml", bank_rig(
        rows=2, cols=3, heater_options={"trace_file": str(trace)},
        limits={"max_current": 0.01, "max_step": 0.003}))
    # cwd: keep the source folder satlab/ off the child's sys.path (see conftest.SATLAB)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(rig)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stdout.readline().strip() == "ready"
    lines = trace.read_text().split("\n")
    assert lines[-2].split()[:2] == ["1", "0.008"]  # on, at 8 mA, before the signal
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    states = [line.split() for line in trace.read_text().splitlines()]
    output, max_current, _ = states[-1]
    assert output == "0" and float(max_current) == 0.0
    currents = [float(s[1]) for s in states]
    peak = len(currents) - 1 - currents[::-1].index(0.008)
    # ramped down in steps of at most max_step (0.003 A), not dropped at once
    assert currents[peak + 1:peak + 4] == pytest.approx([0.008 * 2 / 3, 0.008 / 3, 0.0])


def test_second_ctrl_c_during_ramp_down_does_not_cut_it_short(tmp_path):
    trace = tmp_path / "heaters.trace"
    data = bank_rig(rows=2, cols=3, heater_options={"trace_file": str(trace)},
                    limits={"max_current": 0.01, "max_step": 0.001})
    data["instruments"]["heaters"]["settle_time"] = 0.1  # ramp down: 8 steps, 0.1 s apart
    rig = write_yaml(tmp_path / "rig.yaml", data)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(rig)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert trace.read_text().splitlines()[-1].split()[0] == "1"  # still ramping down
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    currents = [float(line.split()[1]) for line in trace.read_text().splitlines()]
    peak = len(currents) - 1 - currents[::-1].index(0.008)
    assert currents[peak + 1:peak + 9] == pytest.approx([0.008 * k / 8 for k in range(7, -1, -1)])
    assert trace.read_text().splitlines()[-1].split()[:2] == ["0", "0"]
