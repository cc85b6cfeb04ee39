"""The Qontrol Q8iv driver: its messages (pymeasure expected_protocol), and end to end
through pyserial against the protocol emulator on a real pseudo-terminal."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import SATLAB, write_yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pymeasure.test import expected_protocol
from satlab.drivers.qontrol.q8iv import Q8iv, Q8ivSource, serial_port
from satlab.simulators.q8iv_emulator import Q8ivEmulator

from satlab.cli import main
from satlab.instruments import InstrumentFault
from satlab.rig import Rig, RigLimitError
from satlab.rigfile import RigSpec

QUIET = {"in_waiting": 0}  # nothing unprompted in the input buffer


def test_opening_counts_the_channels_and_settings_expect_ok():
    with expected_protocol(Q8iv, [("id?", "Q8iv-0007"), ("nchan?", "8"), ("I3=1.5000", "OK"), ("I3?", "1.5000"),
                                  ("IMAX7=12.0000", "OK")], connection_attributes=QUIET) as q:
        assert sorted(q.channels) == list(range(8))
        q.ch_3.current_mA = 1.5
        assert q.ch_3.current_mA == 1.5
        q.ch_7.current_limit_mA = 12


@pytest.mark.parametrize("reply,message", [
    ("E2:3", r"'I3=30.0000' -> error E2:3 \(over-current on channel 3\)"),
    ("E12:3", r"-> error E12:3 \(bad channel on channel 3\)"),
    ("E99:3", r"-> error E99:3 \(device error on channel 3\)"),
    ("OKAY", r"unexpected reply 'OKAY'"),
    ("", r"no reply before the timeout"),
])
def test_a_setting_that_is_not_ok_is_one_fault_naming_instrument_command_and_reply(reply, message):
    with expected_protocol(Q8iv, [("id?", "Q8iv-0007"), ("nchan?", "8"), ("I3=30.0000", reply)],
                           connection_attributes=QUIET) as q:
        with pytest.raises(InstrumentFault, match="^Qontrol Q8iv: .*" + message):
            q.ch_3.current_mA = 30


def test_multi_line_replies_are_read_line_by_line_and_garbage_is_a_fault():
    with expected_protocol(Q8iv, [("id?", "Q8iv-0007"), ("nchan?", "2"), ("Iall?", "1.0000"),
                                  (None, "2.5000"),
                                  ("Vall?", "0.5"), (None, "x!")],
                           connection_attributes=QUIET) as q:
        assert q.numbers("Iall?", 2) == [1.0, 2.5]
        with pytest.raises(InstrumentFault, match=r"'Vall\?' -> expected a number, got 'x!'"):
            q.numbers("Vall?", 2)


def test_rig_addresses_name_the_serial_port():
    assert serial_port("ASRL/dev/ttyUSB0::INSTR") == "/dev/ttyUSB0"
    assert serial_port("/dev/ttyUSB1") == "/dev/ttyUSB1"


@pytest.fixture
def emulator():
    emu = Q8ivEmulator(modules=2)
    emu.start()
    yield emu
    emu.stop()


def arrived(source: Q8ivSource, timeout_s: float = 5.0) -> None:
    """Wait until an unprompted line is in the port's input buffer (a pty delivers later)."""
    deadline = time.monotonic() + timeout_s
    while not source.device.adapter.connection.in_waiting:
        assert time.monotonic() < deadline, "the emulator's line never arrived"
        time.sleep(0.01)


@pytest.fixture
def source(emulator):
    src = Q8ivSource(emulator.port, timeout_s=0.5, modules=2)
    yield src
    src.close()


def test_through_pyserial_every_write_is_read_back(source, emulator):
    assert source.channels == 16 and source.max_current == pytest.approx(0.024)
    assert source.identify() == "Q8iv-0001 (16 channels; chain: Q8iv-0001 : 0, Q8iv-0002 : 1)"
    currents = np.zeros(16)
    currents[[2, 9]] = [0.004, 0.0125]
    source.set_currents(currents)
    assert source.get_currents() == pytest.approx(currents)
    assert emulator.current_mA[9] == pytest.approx(12.5)
    writes = [c for c in emulator.commands if re.match(r"I\d+=", c)]
    reads = [c for c in emulator.commands if re.match(r"I\d+\?", c)]
    assert writes == ["I0=0.0000", "I1=0.0000", "I2=4.0000"] + [f"I{k}=0.0000" for k in range(3, 9)] \
        + ["I9=12.5000"] + [f"I{k}=0.0000" for k in range(10, 16)]
    assert reads == [f"I{k}?" for k in range(16)]  # one read-back per write
    source.set_currents(currents)  # nothing changed: nothing written
    assert len([c for c in emulator.commands if re.match(r"I\d+=", c)]) == 16


def test_faults_through_the_serial_line(source, emulator):
    source.apply_limits(np.full(16, 0.010))
    assert emulator.imax_mA == [10.0] * 16
    with pytest.raises(InstrumentFault, match=r"'I4=11.0000' -> error E2:4 \(over-current"):
        source.set_currents(np.where(np.arange(16) == 4, 0.011, 0.0))
    assert emulator.current_mA[4] == 0.0
    emulator.send("E1:6")  # a trip reported between commands
    arrived(source)
    with pytest.raises(InstrumentFault, match=r"'\(unprompted\)' -> error E1:6 \(over-voltage"):
        source.get_currents()
    currents = np.where(np.arange(16) == 7, 0.0042, 0.0)
    source.set_currents(currents)
    emulator.reply_delay_s = 1.2  # slower than the 0.5 s timeout, every time
    with pytest.raises(InstrumentFault, match=r"'Iall\?' -> no reply before the timeout|"
                                              r"'id\?' -> no answer to 3 tries: the line is lost"):
        source.get_currents()
    emulator.reply_delay_s = 0.0
    source.device.resync()  # the late replies arrive and are dropped
    assert source.get_currents() == pytest.approx(currents)  # its own answer, not a late one
    emulator.drop()
    with pytest.raises(InstrumentFault, match=r"-> the port failed"):
        source.get_currents()


def test_a_lost_reply_is_asked_again_within_the_retry_budget(source, emulator):
    source.set_currents(np.zeros(16))  # every channel known: the next call writes only ch 5
    currents = np.where(np.arange(16) == 5, 0.003, 0.0)
    emulator.swallow_replies = 1  # the set's OK is lost on the line
    source.set_currents(currents)
    assert emulator.current_mA[5] == 3.0
    assert emulator.commands.count("I5=3.0000") == 2  # sent, then sent again after a resync
    emulator.swallow_replies = 1000  # nothing comes back any more
    with pytest.raises(InstrumentFault, match=r"no reply before the timeout|the line is lost"):
        source.get_currents()
    emulator.swallow_replies = 0
    source.device.resync()
    emulator.send("E2:1")  # an error reply is definitive: never retried
    arrived(source)
    asked = emulator.commands.count("Iall?")
    with pytest.raises(InstrumentFault, match="unprompted"):
        source.get_currents()
    assert emulator.commands.count("Iall?") == asked


def q8iv_rig(port: str) -> dict:
    return {"name": "q8iv-bench", "instruments": {"heaters": {
        "kind": "current_source", "driver": "qontrol.q8iv", "address": f"ASRL{port}::INSTR",
        "options": {"timeout_s": 0.5, "modules": 2},
        "limits": {"max_current": 0.012, "max_step": 0.005}}}}


def test_rig_check_identifies_the_chain_and_leaves_every_channel_at_zero(emulator, tmp_path,
                                                                          capsys):
    rig = write_yaml(tmp_path / "rig.yaml", q8iv_rig(emulator.port))
    assert main(["rig", "check", str(rig)]) == 0
    out = capsys.readouterr().out
    assert "Q8iv-0001 (16 channels; chain: Q8iv-0001 : 0, Q8iv-0002 : 1)" in out
    assert "left in their safe state" in out
    assert emulator.imax_mA == [12.0] * 16  # the rig file's limit, in the firmware
    assert emulator.current_mA == [0.0] * 16


@settings(max_examples=30, deadline=None)
@given(valid=st.lists(st.floats(0, 0.012), min_size=16, max_size=16),
       bad=st.none() | st.tuples(st.integers(0, 15),
                                 st.sampled_from([-1e-3, 0.0121, 0.03, np.nan, np.inf])))
def test_no_value_beyond_the_limits_ever_reaches_the_wire(valid, bad):
    requested = np.array(valid)
    if bad is not None:
        requested[bad[0]] = bad[1]
    emu = Q8ivEmulator(modules=2)
    emu.start()
    try:
        with Rig(RigSpec.model_validate(q8iv_rig(emu.port))) as rig:
            if bad is None:
                rig.set_currents("heaters", requested)
                assert rig.source("heaters").get_currents() == pytest.approx(requested, abs=1e-7)
            else:
                with pytest.raises(RigLimitError):
                    rig.set_currents("heaters", requested)
        sent = [float(c.split("=")[1]) for c in emu.commands if re.match(r"I\d+=", c)]
        assert all(0.0 <= v <= 12.0 for v in sent)
        assert emu.current_mA == [0.0] * 16  # and the rig left them all at zero
    finally:
        emu.stop()


def test_satlab_emulate_serves_a_port_until_ctrl_c(tmp_path):
    proc = subprocess.Popen([SATLAB, "emulate", "q8iv", "--modules", "3"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        port = proc.stdout.readline().split(" on ")[1].strip()
        src = Q8ivSource(port, timeout_s=1.0)
        assert src.channels == 24 and src.identify().startswith("Q8iv-0001 (24 channels")
        src.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()


def test_rig_check_on_a_dead_port_is_one_line_naming_the_instrument(emulator, tmp_path, capsys):
    rig = write_yaml(tmp_path / "rig.yaml", q8iv_rig(emulator.port))
    emulator.drop()
    assert main(["rig", "check", str(rig)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    # the port is gone (opening fails) or still listed but silent (the first query fails)
    assert re.match(rf"error: Q8iv at ASRL{emulator.port}::INSTR: '(\(opening the port\)|id\?)' -> ",
                    err[0]), err[0]
