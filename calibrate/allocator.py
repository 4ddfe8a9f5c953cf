"""Put glibc's malloc in the state the CPU cost model prices before kernels are timed.

``sim/cost/page_faults.py`` prices first-touch page faults only for fresh outputs of at
least 32 MiB: glibc's dynamic mmap threshold has then risen to its ceiling,
``DEFAULT_MMAP_THRESHOLD_MAX`` (32 MiB on a 64-bit host), with the trim threshold at twice
that, and every smaller block is recycled from the heap without faults. A process only
reaches that state after it has freed a mmapped chunk of just under 32 MiB; before, the
threshold sits at the largest such chunk freed so far (128 KiB at start), blocks between
it and 32 MiB are mapped and unmapped on every call, and the heap top is trimmed once
more than twice the threshold is free. Which of a kernel's intermediates fault then
depends on the cases that ran before it in the same process.

Measured on a Zen 4 KVM guest (2026-12-07; docs/calibration_notes.md, twenty-third
session): FastAttention (1 x 6 heads, seq 700, non-causal) took 1,138 minor faults per
call in a process that had run only attention and MoE cases and 1.1 after the two
``mallopt`` calls below (25.5 ms -> 19.1 ms of thread CPU time; faults cost 2-11 us per
4 KiB page on that guest), and standard attention at seq 2,048 faulted on one of its three
64 MiB score tensors instead of all three. ``calibrate`` and ``validate`` run different
case sequences, so without this the same held-out case is timed in different allocator
states by the two commands.

Setting either threshold with ``mallopt`` also turns glibc's dynamic adjustment off
(glibc malloc/malloc.c, ``do_set_mmap_threshold``: ``mp_.no_dyn_threshold = 1``), so the
state is fixed for the rest of the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from xpusim.sim.cost.page_faults import MMAP_THRESHOLD_MAX_BYTES

# glibc malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def glibc_thresholds() -> tuple[int, int]:
    """(mmap threshold, trim threshold) in bytes: glibc's dynamic ceiling (malloc.c's
    ``__libc_free`` sets the trim threshold to twice the mmap threshold)."""
    mmap = int(MMAP_THRESHOLD_MAX_BYTES)
    return mmap, 2 * mmap


def pin_glibc_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds at their dynamic ceiling for this process.

    Returns False (and changes nothing) where the C library has no ``mallopt`` (not
    glibc) or rejects the values."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap, trim = glibc_thresholds()
    return bool(mallopt(M_MMAP_THRESHOLD, mmap)) and bool(mallopt(M_TRIM_THRESHOLD, trim))
