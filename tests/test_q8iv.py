"""The Qontrol Q8iv driver and emulator, both held to the vendor's reference
(tests/references/q8iv.yaml: recordings of a real chain and the vendor's qontrol.py):
messages (pymeasure expected_protocol), every documented reply form, the vendor's own
client against `satlab emulate q8iv`, and end to end through pyserial on a real pty."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SATLAB, write_yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pymeasure.adapters import ProtocolAdapter
from satlab.drivers.qontrol.q8iv import Q8ivSource, parse_module, parse_quantity, serial_port
from satlab.simulators.emulators.q8iv import Q8ivEmulator

from satlab.cli import main
from satlab.instruments import InstrumentFault
from satlab.rig import Rig, RigError, RigLimitError
from satlab.rigfile import RigSpec

REFERENCE = yaml.safe_load((Path(__file__).parent / "references" / "q8iv.yaml").read_text())
QUERIES = {c["command"]: c for c in REFERENCE["commands"]}
QUIET = {"in_waiting": 0}  # nothing unprompted in the input buffer
# a one-module chain opening as the references answer it
OPENING = [("id?", "Q8iv-0007"), ("nup=0", None), ("id?", "\x06OK"), (None, "Q8iv-0007"),
           ("nupall?", None), ("id?", "Q8iv-0007: 0"), (None, "Q8iv-0007"),
           ("ifull?", "+24.0000 mA"), ("vfull?", "+12.0000 V"), ("firmware?", "v2.4.1")]


# a channel's setpoint is unknown until written: the first write covers every channel
ZEROED = ([(f"I{k}=0.0000", "OK") for k in range(8)]
          + [(f"I{k}?", "-0.0000 mA") for k in range(8)])


def opened(pairs: list, **options) -> tuple[Q8ivSource, ProtocolAdapter]:
    adapter = ProtocolAdapter(OPENING + pairs, connection_attributes=QUIET)
    return Q8ivSource(adapter=adapter, **options), adapter


# -- the emulator against the reference ------------------------------------------------
def test_every_emulator_reply_has_the_form_the_vendor_documents():
    emu = Q8ivEmulator(modules=2)
    for command, ref in QUERIES.items():
        lines = emu.reply(command)
        expected = {"modules": 2, "channels": 16}.get(ref.get("lines"), 1)
        assert len(lines) == expected, command
        for line in lines:
            assert re.match(ref["form"], line), (command, line)
    for bad in ("I99?", "frobnicate?", "I3=abc", "IVEC3=1,2,3,4,5,6", "I3=30"):
        (line,) = emu.reply(bad)
        assert re.match(REFERENCE["errors"]["form"], line), (bad, line)


def test_the_emulator_reads_back_a_measurement_within_the_recorded_offsets():
    emu = Q8ivEmulator(modules=1)
    assert emu.reply("I3=5.0") == ["OK"]
    (line,) = emu.reply("I3?")
    assert abs(float(line.split()[0]) - 5.0) <= 0.012  # recorded zero readings: -0.0112..+0.0017
    assert emu.reply("I3=30") == ["E02:03"] and emu.current_mA[3] == 5.0  # over IMAX: refused


def test_the_vendors_own_client_drives_satlab_emulate(tmp_path):
    import qontrol  # the vendor's client, 1.1.20: a test dependency
    proc = subprocess.Popen([SATLAB, "emulate", "q8iv", "--modules", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        port = proc.stdout.readline().split(" on ")[1].strip()
        q = qontrol.QXOutput(serial_port_name=port, response_timeout=0.1)
        try:
            assert [d["device_id"] for d in q.chain] == ["Q8iv-0001", "Q8iv-0002"]
            assert (q.n_chs, q.v_full, q.i_full) == (16, 12.0, 24.0)
            q.imax[3] = 10
            assert q.imax[3] == 10.0
            q.i[3] = 5.0
            assert q.i[3] == pytest.approx(5.0, abs=0.012)
            vector = [0.5 * k for k in range(16)]
            q.set_all_values("I", vector)  # IVEC0=... and IVEC8=..., one per module
            assert q.get_all_values("I") == pytest.approx(vector, abs=0.012)
            assert not [e for e in q.log if e["type"] == "err"]
        finally:
            q.close()
        source = Q8ivSource(port, timeout_s=1.0, modules=2)  # and satlab reads what it wrote
        assert source.get_currents() * 1e3 == pytest.approx([0.5 * k for k in range(16)], abs=0.012)
        source.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:  # it ignored the signal (e.g. started with SIGINT ignored): no leak
                proc.kill()
                proc.wait()
        assert code == 0, proc.stderr.read()


# -- the driver's parsers against the reference ---------------------------------------
@pytest.mark.parametrize("command", [c for c, r in QUERIES.items() if r["form"].endswith(("mA$", "V$"))])
def test_every_documented_quantity_is_read_as_written(command):
    unit = "mA" if QUERIES[command]["form"].endswith("mA$") else "V"
    for example in QUERIES[command]["examples"]:
        number = float(example.split()[0])
        for wire in (example, f" {example}\r", f"{example}\r\n"):
            assert parse_quantity(wire, unit) == number, wire
        assert parse_quantity(example, "V" if unit == "mA" else "mA") is None  # the other unit


def test_every_documented_module_line_is_read():
    for example in QUERIES["nupall?"]["examples"]:
        name, channels, index = parse_module(example)
        assert example.startswith(name) and channels == 8 and example.endswith(f": {index}")


NUMBERS = st.floats(-1e4, 1e4, allow_nan=False).map(lambda v: round(v, 4))


@settings(max_examples=300, deadline=None)
@given(value=NUMBERS, decimals=st.sampled_from([3, 4]), sign=st.booleans(),
       unit=st.sampled_from(["mA", "V", None]), pad=st.sampled_from(["", " ", "\r", "\r\n", " \r\n"]))
def test_no_documented_reply_form_is_misread(value, decimals, sign, unit, pad):
    text = f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"
    reply = f"{pad.strip(chr(13) + chr(10))}{text}{f' {unit}' if unit else ''}{pad}"
    expected = float(text)
    assert parse_quantity(reply, unit or "mA") == expected
    if unit:  # a reply in the other unit is never taken for this one
        assert parse_quantity(reply, "V" if unit == "mA" else "mA") is None


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Nd",)), min_size=0, max_size=12),
    st.builds(lambda v, u: f"{v:+.4f} {u}", NUMBERS, st.sampled_from(["A", "uA", "mV", "W", "ma"])),
    st.builds(lambda a, b: f"{a:+.4f},{b:+.4f}", NUMBERS, NUMBERS),
    st.builds(lambda v: f"{v:+.4f} mA extra", NUMBERS),
    st.sampled_from(["nan", "inf", "-inf", "NaN mA", "1.2.3 mA", "+ 1.0 mA", "mA", "OK", "E02:04",
                     "Q8iv-0001", "1e999 mA", "--1.0 mA", "1.0  mA"])))
def test_no_undocumented_reply_is_accepted(reply):
    assert parse_quantity(reply, "mA") is None


# -- messages ----------------------------------------------------------------------------
def test_opening_follows_the_vendor_api_and_names_the_module():
    source, adapter = opened([])
    assert adapter._index == len(adapter.comm_pairs)
    assert (source.channels, source.max_current, source.full_scale_V) == (8, 0.024, 12.0)
    assert source.identify() == ("Q8iv-0007 v2.4.1 (8 channels, 24 mA / 12 V full scale; "
                                 "chain: Q8iv-0007: 0)")


def test_channel_writes_are_one_command_each_and_read_back_each():
    source, adapter = opened([*ZEROED, ("I2=4.0000", "OK"), ("I5=1.2500", "OK"),
                              ("I2?", "+4.0021 mA"), ("I5?", "-0.0000 mA")], write_mode="channel")
    source.set_currents(np.zeros(8))
    with pytest.raises(InstrumentFault, match=r"^Q8iv-0007 at \(adapter\): 'I5\?' -> channel 5 "
                                              r"reads -0.0000 mA after setting 1.2500 mA"):
        source.set_currents(np.array([0, 0, 0.004, 0, 0, 0.00125, 0, 0]))
    assert adapter._index == len(adapter.comm_pairs)


def test_a_vector_write_is_one_command_a_module_and_one_read_back():
    readings = [f"{v:+.4f} mA" for v in (0, 0.0031, 4.0, 0, 0, 1.25, 0, 0)]
    source, adapter = opened([("IVEC0=0.0000,0.0000,4.0000,0.0000,0.0000,1.2500,0.0000,0.0000", "OK"),
                              ("Iall?", readings[0]), *[(None, r) for r in readings[1:]]],
                             write_mode="vector")
    source.set_currents(np.array([0, 0, 0.004, 0, 0, 0.00125, 0, 0]))
    assert adapter._index == len(adapter.comm_pairs)


@pytest.mark.parametrize("reply,message", [
    ("E02:03", r"'I3=30.0000' -> error E02:03 \(over-current, 03\)"),
    ("E12:03", r"-> error E12:03 \(unrecognised channel, 03\)"),
    ("E77:03", r"-> error E77:03 \(unrecognised error code, 03\)"),
    ("OKAY", r"expected OK, got 'OKAY'"),
    ("\x15" + "x" * 60, r"expected OK, got '" + "x" * 40 + r"\.\.\.'"),  # 40 printable, shown
    ("", r"no reply before the timeout"),
])
def test_a_setting_that_is_not_ok_is_one_fault_naming_instrument_command_and_reply(reply, message):
    zeroing = [(f"I{k}=0.0000", "OK") for k in range(3)]
    source, _ = opened([*zeroing, ("I3=30.0000", reply)], write_mode="channel", retries=0)
    with pytest.raises(InstrumentFault, match="^Q8iv-0007 at .*" + message):
        source.set_currents(np.where(np.arange(8) == 3, 0.030, 0.0))


def test_a_reply_in_no_documented_form_is_a_fault():
    source, _ = opened([("Iall?", "+0.0012 mA"), (None, "12 V")], retries=0)
    with pytest.raises(InstrumentFault, match=r"'Iall\?' -> expected a number in mA, got '12 V'"):
        source.get_currents()


def test_a_chain_that_does_not_acknowledge_its_enumeration_is_a_fault():
    pairs = OPENING[:2] + [("id?", "NOPE"), (None, "Q8iv-0007")]
    with pytest.raises(InstrumentFault, match=r"'nup=0' -> expected OK, got 'NOPE'"):
        Q8ivSource(adapter=ProtocolAdapter(pairs, connection_attributes=QUIET))


def test_a_chain_that_is_not_the_rig_files_is_refused_at_opening():
    with pytest.raises(InstrumentFault, match=r"'nupall\?' -> the chain has 1 module\(s\) "
                                              r"\(Q8iv-0007: 0\), but options.modules says 2"):
        opened([], modules=2)


def test_rig_addresses_name_the_serial_port():
    assert serial_port("ASRL/dev/ttyUSB0::INSTR") == "/dev/ttyUSB0"
    assert serial_port("/dev/ttyUSB1") == "/dev/ttyUSB1"


# -- through pyserial on a pty ----------------------------------------------------------
@pytest.fixture
def emulator():
    emu = Q8ivEmulator(modules=2)
    emu.start()
    yield emu
    emu.stop()


def arrived(source: Q8ivSource, timeout_s: float = 5.0) -> None:
    """Wait until an unprompted line is in the port's input buffer (a pty delivers later)."""
    import time
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
    assert source.identify().endswith("chain: Q8iv-0001: 0, Q8iv-0002: 1)")
    currents = np.zeros(16)
    currents[[2, 9]] = [0.004, 0.0125]
    expected = {"channel": ["I2=4.0000", "I9=12.5000", "I2?", "I9?"],
                "vector": ["IVEC0", "IVEC8", "Iall?"]}
    for mode in ("channel", "vector", "auto"):
        source.write_mode = mode
        source.set_currents(np.zeros(16))
        start = len(emulator.commands)
        source.set_currents(currents)
        sent = emulator.commands[start:]
        if mode == "vector":
            sent = [c.split("=")[0] for c in sent]
        assert sent == expected.get(mode, sent)
        assert emulator.current_mA[2] == 4.0 and emulator.current_mA[9] == 12.5
        assert source.get_currents() == pytest.approx(currents, abs=12e-6)
        start = len(emulator.commands)
        source.set_currents(currents)  # nothing changed: nothing written
        assert emulator.commands[start:] == []


def test_faults_through_the_serial_line(source, emulator):
    source.write_mode = "channel"
    source.apply_limits(np.full(16, 0.010))
    assert emulator.imax_mA == [10.0] * 16
    with pytest.raises(InstrumentFault, match=r"'I4=11.0000' -> error E02:04 \(over-current, 04\)"):
        source.set_currents(np.where(np.arange(16) == 4, 0.011, 0.0))
    assert emulator.current_mA[4] == 0.0
    emulator.send("E01:06")  # a trip reported between commands
    arrived(source)
    with pytest.raises(InstrumentFault, match=r"'\(unprompted\)' -> error E01:06 \(over-voltage"):
        source.get_currents()
    currents = np.where(np.arange(16) == 7, 0.0042, 0.0)
    source.set_currents(currents)
    emulator.reply_delay_s = 1.2  # slower than the 0.5 s timeout, every time
    with pytest.raises(InstrumentFault, match=r"'Iall\?' -> no reply before the timeout|"
                                              r"'id\?' -> no answer to 3 tries: the line is lost"):
        source.get_currents()
    emulator.reply_delay_s = 0.0
    source.device.resync()  # the late replies arrive and are dropped
    assert source.get_currents() == pytest.approx(currents, abs=12e-6)  # its own answer
    emulator.drop()
    with pytest.raises(InstrumentFault, match=r"-> the port failed"):
        source.get_currents()


def test_a_lost_reply_is_asked_again_within_the_retry_budget(source, emulator):
    source.write_mode = "channel"
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
    emulator.send("E02:01")  # an error reply is definitive: never retried
    arrived(source)
    asked = emulator.commands.count("Iall?")
    with pytest.raises(InstrumentFault, match="unprompted"):
        source.get_currents()
    assert emulator.commands.count("Iall?") == asked


def q8iv_rig(port: str, **options) -> dict:
    return {"name": "q8iv-bench", "instruments": {"heaters": {
        "kind": "current_source", "driver": "qontrol.q8iv", "address": f"ASRL{port}::INSTR",
        "options": {"timeout_s": 0.5, "modules": 2, **options},
        "limits": {"max_current": 0.012, "max_step": 0.005}}}}


def test_rig_check_identifies_the_chain_reports_wire_time_and_leaves_zero(emulator, tmp_path,
                                                                           capsys):
    rig = write_yaml(tmp_path / "rig.yaml", q8iv_rig(emulator.port))
    assert main(["rig", "check", str(rig)]) == 0
    out = capsys.readouterr().out
    assert ("Q8iv-0001 v2.4.1 (16 channels, 24 mA / 12 V full scale; "
            "chain: Q8iv-0001: 0, Q8iv-0002: 1)") in out
    assert re.search(r"wire \d+\.\d\d ms per write \(\d+\), \d+\.\d\d ms per read \(\d+\)", out)
    assert "left in their safe state" in out
    assert emulator.imax_mA == [12.0] * 16  # the rig file's limit, in the firmware
    assert emulator.current_mA == [0.0] * 16


@pytest.mark.parametrize("change,message", [
    ({"options": {"modules": 3}}, r"options.modules says 3"),
    ({"limits": {"max_current": 0.03}}, r"instruments.heaters.limits.max_current: 0.03 A is "
                                        r"above the full scale of Q8iv-0001"),
])
def test_a_rig_file_that_disagrees_with_the_chain_is_refused_at_opening(emulator, tmp_path,
                                                                         capsys, change, message):
    spec = q8iv_rig(emulator.port)
    heaters = spec["instruments"]["heaters"]
    for key, value in change.items():
        heaters[key] = {**heaters[key], **value}
    assert main(["rig", "check", str(write_yaml(tmp_path / "rig.yaml", spec))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    written = [float(v) for c in emulator.commands if re.match(r"I(VEC)?\d+=", c)
               for v in c.split("=")[1].split(",")]
    assert not any(written)  # nothing but the safe state's zeros


def test_a_fault_names_the_rigs_instrument_and_nothing_more_is_written(emulator):
    with Rig(RigSpec.model_validate(q8iv_rig(emulator.port))) as rig:
        emulator.imax_mA[4] = 1.0  # a firmware limit below the rig's (a module swapped in)
        with pytest.raises(InstrumentFault, match=r"^heaters: Q8iv-0001 at .*: "
                                                  r"'I4=2.0000' -> error E02:04 \(over-current"):
            rig.set_currents("heaters", np.where(np.arange(16) == 4, 0.002, 0.0))
        sent = len(emulator.commands)
        with pytest.raises(RigError, match="^heaters: nothing more is written to it after its fault"):
            rig.set_currents("heaters", np.zeros(16))
        assert len(emulator.commands) == sent
    assert emulator.current_mA == [0.0] * 16  # the way to the safe state still writes


SETPOINTS = st.lists(st.floats(0, 0.012), min_size=16, max_size=16)


@settings(max_examples=15, deadline=None)
@given(steps=st.lists(st.tuples(st.sets(st.integers(0, 15), min_size=1, max_size=16), SETPOINTS),
                      min_size=1, max_size=4))
def test_vector_writes_leave_the_wire_as_channel_writes_do_within_limits_and_steps(steps):
    states, emulators = {}, []
    try:
        for mode in ("channel", "vector", "auto"):
            emu = Q8ivEmulator(modules=2)
            emu.start()
            emulators.append(emu)
            history = []
            emu.on_change = lambda ch, mA, h=history: h.append((ch, mA))
            with Rig(RigSpec.model_validate(q8iv_rig(emu.port, write_mode=mode))) as rig:
                requested = np.zeros(16)
                seen = []
                for channels, values in steps:
                    requested[list(channels)] = np.array(values)[list(channels)]
                    rig.set_currents("heaters", requested)
                    seen.append(list(emu.current_mA))
                    assert rig.source("heaters").get_currents() == pytest.approx(requested, abs=12e-6)
            states[mode] = seen
            level = np.zeros(16)  # every applied value within the limit, no jump over max_step
            for ch, mA in history:
                assert 0 <= mA <= 12.0 and abs(mA - level[ch]) <= 5.0 + 1e-9
                level[ch] = mA
            assert emu.current_mA == [0.0] * 16
        assert states["vector"] == states["channel"] == states["auto"]
    finally:
        for emu in emulators:
            emu.stop()


@settings(max_examples=30, deadline=None)
@given(valid=SETPOINTS,
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
                assert rig.source("heaters").get_currents() == pytest.approx(requested, abs=12e-6)
            else:
                with pytest.raises(RigLimitError):
                    rig.set_currents("heaters", requested)
        sent = [float(v) for c in emu.commands if re.match(r"I(VEC)?\d+=", c)
                for v in c.split("=")[1].split(",")]
        assert sent and all(0.0 <= v <= 12.0 for v in sent)
        assert emu.current_mA == [0.0] * 16  # and the rig left them all at zero
    finally:
        emu.stop()


def test_rig_check_on_a_dead_port_is_one_line_naming_the_instrument(emulator, tmp_path, capsys):
    rig = write_yaml(tmp_path / "rig.yaml", q8iv_rig(emulator.port))
    emulator.drop()
    assert main(["rig", "check", str(rig)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    # the port is gone (opening fails) or still listed but silent (the first query fails)
    assert re.match(rf"error: heaters: Q8iv at ASRL{emulator.port}::INSTR: "
                    r"'(\(opening the port\)|id\?)' -> ", err[0]), err[0]
