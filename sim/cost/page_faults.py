"""First-touch page faults of large fresh CPU allocations.

torch's CPU allocator (``c10::alloc_cpu``: ``posix_memalign``) is glibc's malloc. glibc
serves a request of at least ``mmap_threshold`` bytes with a fresh anonymous ``mmap``
and returns it with ``munmap`` on free; the threshold starts at 128 KiB and rises to the
size of each freed mmapped chunk, but never above ``DEFAULT_MMAP_THRESHOLD_MAX`` =
4 * 1024 * 1024 * sizeof(long) = 32 MiB on a 64-bit host (glibc malloc/malloc.c: the
constant and ``__libc_free``'s "dynamic brk/mmap threshold" update, which only follows
chunks ``<= DEFAULT_MMAP_THRESHOLD_MAX``; the file's own note: "each time glibc mmaps from
the kernel, the kernel is forced to zero out the memory it gives to the application").
So every call of an eager op whose output is >= 32 MiB maps new pages, and the op's
first write to each 4 KiB page takes a minor fault in which the kernel clears the page.
Below the cap, a process that has freed such a block once reuses heap memory.

Measured on the dev VM (2026-12-07, torch 2.13, one thread, ``getrusage`` minor faults
per call of an out-of-place ``torch.add``): 0 faults for outputs of 128 KiB-24 MiB,
``bytes / 4096 + 1`` from 32 MiB on (8,193 at 32 MiB, 65,537 at 256 MiB), and ~1 us
of CPU time per fault (the add took 59.8 ms against 26.7 ms into a preallocated
output at 128 MiB). docs/calibration_notes.md (twentieth session).

The cost is priced as a stream of the faulted pages' bytes on the main-memory curve
under its own op kind (``OpKind.PAGE_FAULT``), whose speed and overhead a calibration
fits from the ``page_fault`` microbenchmark (calibrate/page_fault_micro.py); it is never
served by the cache tier (the cost is the fault and the clear of each new page, not a
re-read of cached data). Only devices with ``arch == "cpu"`` pay it: GPU and NPU
frameworks keep freed blocks in a caching allocator.
"""

from __future__ import annotations

import math

from xpusim.hwprofiles.spec import Device
from xpusim.sim.ir import Op

PAGE_BYTES = 4096.0
# glibc malloc/malloc.c, DEFAULT_MMAP_THRESHOLD_MAX on a 64-bit host (see module doc).
MMAP_THRESHOLD_MAX_BYTES = 4.0 * 1024 * 1024 * 8
PAGE_FAULT_KIND = "page_fault"


def fresh_page_bytes(nbytes: float) -> float:
    """Bytes of the pages a fresh ``nbytes`` allocation faults in: 0 below the mmap
    threshold, else its 4 KiB pages plus one (the chunk header and the alignment padding
    put the block across one more page: measured ``bytes / 4096 + 1`` faults per call)."""
    if nbytes < MMAP_THRESHOLD_MAX_BYTES:
        return 0.0
    return (math.ceil(nbytes / PAGE_BYTES) + 1) * PAGE_BYTES


def fault_bytes(op: Op, device: Device) -> float:
    """Bytes of fresh pages ``op`` faults in on ``device`` (0 off a CPU, or when the op
    states no fresh output at or above the threshold)."""
    if op.fresh_bytes <= 0 or device.arch != "cpu":
        return 0.0
    return fresh_page_bytes(op.fresh_bytes)


def fault_time_s(op: Op, device: Device) -> float:
    """Seconds ``op`` spends faulting in its fresh pages: the pages' bytes at the cores'
    main-memory rate (no cache tier) divided by the calibrated ``page_fault`` kind speed,
    plus that kind's calibrated overhead (per op with faults; no launch overhead, the
    faults happen inside the op). 0 when ``fault_bytes`` is 0."""
    nbytes = fault_bytes(op, device)
    if nbytes <= 0:
        return 0.0
    eff = device.efficiency
    rate = device.main_memory_rate(eff.memory_max)
    speed = eff.kind_speed.get(PAGE_FAULT_KIND, 1.0)
    return (nbytes + eff.memory_half_bytes) / rate / speed + eff.kind_overhead_s.get(
        PAGE_FAULT_KIND, 0.0
    )
