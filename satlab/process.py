"""Process-wide settings for training: memory reuse and one compute thread pool.

- A simulated bench evaluates a step's probes as one stack, so every rig query allocates
  and frees arrays of several MB. glibc returns such blocks to the OS as soon as they are
  freed (mmap for large blocks, heap trimming for the rest), and the next query faults the
  pages back in: on a virtual machine that costs as much as the physics itself. Keeping up
  to a few hundred MB of freed heap makes the next query reuse it.
- numpy's BLAS does small products here (an estimator's contraction per layer and step).
  Its threads spin after each call and take the cores torch's own pool is about to use:
  on two cores a SAT step ran twice as long with both pools at two threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from threadpoolctl import threadpool_limits

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>


def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Ask glibc to serve blocks below ``mmap_threshold`` from the heap and keep up to
    ``trim_threshold`` bytes of it free; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
                and mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def prepare_for_training() -> None:
    """Both settings above; the satlab command and the benchmarks call this first."""
    retain_freed_memory()
    threadpool_limits(1, user_api="blas")  # numpy's BLAS; torch keeps its own pool
