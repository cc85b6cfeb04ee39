"""Command round trip of the Q8iv driver stack vs raw pyserial, side by side in one run.

Both talk to the protocol emulator on a real pseudo-terminal. One channel write with its
read-back is measured three ways:
1. raw pyserial: write ``I<ch>=<mA>``, read ``OK``, write ``I<ch>?``, read the value;
2. the pymeasure protocol class (``Q8iv``): ``ch.current_mA = v`` then ``ch.current_mA``;
3. satlab's ``Q8ivSource.set_currents`` changing one channel (write, read-back, checks).
The emulator's own work is the same in all three: the ratios are the stack's overhead.

Usage: python benchmarks/q8iv_roundtrip.py [--writes N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import serial
from pymeasure.adapters import SerialAdapter
from satlab.drivers.qontrol.q8iv import Q8iv, Q8ivSource
from satlab.simulators.emulators.q8iv import Q8ivEmulator


def per_write(fn, writes: int) -> float:
    """Seconds per call of fn(k) over ``writes`` calls, after a warm-up."""
    for k in range(5):
        fn(k)
    start = time.perf_counter()
    for k in range(writes):
        fn(k)
    return (time.perf_counter() - start) / writes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=500)
    args = ap.parse_args()
    emulator = Q8ivEmulator(modules=1)
    port = emulator.start()
    def value(k: int) -> float:
        return 1.0 + (k % 7)  # mA: every write is a change

    raw = serial.Serial(port, 115200, timeout=1.0)

    def raw_write(k: int) -> None:
        raw.write(f"I3={value(k):.4f}\n".encode())
        assert raw.readline() == b"OK\n"
        raw.write(b"I3?\n")
        float(raw.readline().split()[0])  # "+1.0021 mA"
    t_raw = per_write(raw_write, args.writes)
    raw.close()

    adapter = SerialAdapter(port, baudrate=115200, timeout=1.0, read_termination="\n",
                            write_termination="\n")
    device = Q8iv(adapter, port)

    def protocol_write(k: int) -> None:
        device.ch_3.current_mA = value(k)
        _ = device.ch_3.current_mA
    t_protocol = per_write(protocol_write, args.writes)
    adapter.close()

    source = Q8ivSource(port)
    currents = np.zeros(source.channels)

    def source_write(k: int) -> None:
        currents[3] = value(k) * 1e-3
        source.set_currents(currents)
    t_source = per_write(source_write, args.writes)
    source.close()
    emulator.stop()

    print(f"one channel write + read-back, {args.writes} times, emulator on {port}:")
    print(f"  raw pyserial             {1e6 * t_raw:8.1f} us")
    print(f"  pymeasure Q8iv           {1e6 * t_protocol:8.1f} us  ({t_protocol / t_raw:.2f}x raw)")
    print(f"  satlab Q8ivSource        {1e6 * t_source:8.1f} us  ({t_source / t_raw:.2f}x raw)")


if __name__ == "__main__":
    main()
