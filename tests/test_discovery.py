"""`satlab instruments`: asks each port who it is, recognises the shipped drivers' instruments,
and prints a snippet that is a working rig file."""

from __future__ import annotations

import yaml
from satlab.drivers.keithley.k2400 import SIMULATION
from satlab.simulators.emulators.q8iv import Q8ivEmulator

from satlab.cli import main


def test_discovery_recognises_the_emulated_q8iv_and_the_simulated_keithley(tmp_path, capsys):
    emulator = Q8ivEmulator(modules=2)
    port = emulator.start()
    try:
        assert main(["instruments", "--only", "--port", port, "--port", port,
                     "--visa-library", f"{SIMULATION}@sim"]) == 0  # a port given twice: asked once
        out = capsys.readouterr().out
        assert emulator.commands == ["id?"]  # asked who it is, nothing set
        lines = out.splitlines()
        assert any(line.split()[:3] == [port, "qontrol.q8iv", "Q8iv-0001"] for line in lines)
        assert any(line.split()[:2] == ["GPIB0::24::INSTR@sim", "keithley.2400"] for line in lines)
        assert "VISA @sim: 3 resource(s) listed" in lines

        snippet = yaml.safe_load(out[out.index("instruments:"):])
        rig = tmp_path / "found.yaml"
        rig.write_text(yaml.safe_dump(snippet))  # no name: the rig is named after its file
        assert main(["rig", "check", str(rig)]) == 0  # the snippet opens as it is
        checked = capsys.readouterr().out
        assert "Q8iv-0001 v2.4.1 (16 channels" in checked and "MODEL 2400" in checked
    finally:
        emulator.stop()
