"""Choosing the VISA backend: an address's own suffix, the rig file's visa_backend, or the
command line's --visa-backend; serial instruments are left as they are."""

from __future__ import annotations

import re

import pytest
from conftest import write_yaml
from satlab.drivers.visa_session import split_backend

from satlab.cli import main
from satlab.rig import Rig
from satlab.rigfile import load_rig_file


def smu(address: str) -> dict:
    return {"kind": "current_source", "driver": "keithley.2400", "address": address,
            "options": {"compliance_voltage": 5}, "limits": {"max_current": 0.02}}


@pytest.mark.parametrize(("address", "split"), [
    ("GPIB0::24::INSTR@sim", ("GPIB0::24::INSTR", "@sim")),
    ("TCPIP::10.0.0.5::hislip0::INSTR@py", ("TCPIP::10.0.0.5::hislip0::INSTR", "@py")),
    ("USB0::0x1313::0x8072::P2000000::INSTR@ivi", ("USB0::0x1313::0x8072::P2000000::INSTR", "@ivi")),
    ("GPIB0::24::INSTR", ("GPIB0::24::INSTR", None)),
    ("TCPIP::host@lab::INSTR", ("TCPIP::host@lab::INSTR", None)),  # an @ that is no backend
])
def test_an_address_may_end_in_its_backend(address, split):
    assert split_backend(address) == split


def test_the_rig_files_backend_opens_every_visa_address_without_one(tmp_path, capsys):
    rig = write_yaml(tmp_path / "bench.yaml", {"visa_backend": "@sim",
                                               "instruments": {"smu": smu("GPIB0::24::INSTR")}})
    assert load_rig_file(rig).name == "bench"  # no name: the file's
    assert main(["rig", "check", str(rig)]) == 0
    assert "MODEL 2400" in capsys.readouterr().out


def test_the_command_line_outranks_the_rig_file_and_serial_addresses_stay(tmp_path, capsys):
    rig = write_yaml(tmp_path / "bench.yaml", {"visa_backend": "@ivi",
                                               "instruments": {"smu": smu("GPIB0::24::INSTR")}})
    assert main(["rig", "check", str(rig), "--visa-backend", "@sim"]) == 0
    assert "MODEL 2400" in capsys.readouterr().out
    spec = load_rig_file(write_yaml(tmp_path / "q.yaml", {"visa_backend": "@sim", "instruments": {
        "heaters": {"kind": "current_source", "driver": "qontrol.q8iv", "address": "/dev/null",
                    "limits": {"max_current": 0.01}}}}))
    rig = Rig(spec, visa_backend="@py")
    assert rig.visa_backend == "@py"
    with pytest.raises(Exception, match=r"^heaters: Q8iv at /dev/null: "):  # not /dev/null@py
        rig.__enter__()


def test_an_unknown_backend_in_a_rig_file_is_refused_before_anything_opens(tmp_path, capsys):
    rig = write_yaml(tmp_path / "bench.yaml", {"visa_backend": "@ni",
                                               "instruments": {"smu": smu("GPIB0::24::INSTR")}})
    assert main(["rig", "check", str(rig)]) == 2
    err = capsys.readouterr().err
    assert re.match(r"error: .*bench.yaml: visa_backend: ", err), err


def test_pyvisa_py_lists_what_it_sees_without_vendor_software(capsys):
    assert main(["instruments", "--only", "--visa-backend", "@py", "--timeout", "0.2"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("VISA @py")]
    assert len(notes) == 1 and re.match(r"VISA @py: \d+ resource\(s\) listed", notes[0]), notes


def test_once_identified_a_visa_instrument_is_named_with_its_serial(tmp_path):
    rig = write_yaml(tmp_path / "bench.yaml", {"instruments": {"smu": smu("GPIB0::24::INSTR@sim")}})
    with Rig.from_file(rig) as opened:
        assert opened.instruments["smu"].name == "Keithley 2400 #1248014 at GPIB0::24::INSTR@sim"
