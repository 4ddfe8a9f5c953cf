"""The ``page_fault`` microbenchmark: ``torch.full`` of a fresh fp32 vector of >= 32 MiB.

An allocation of at least 32 MiB is a fresh anonymous mmap on every call (glibc's mmap
threshold never rises above 32 MiB: sim/cost/page_faults.py), so the fill's first write
to each 4 KiB page takes a minor fault in which the kernel clears the page, and the
free is a munmap: the cost every out-of-place op with an output that large pays on top
of its own stream (standard attention's score matrices from 32 MiB on: 4 heads x 2048^2
fp32 are 64 MiB; its causal mask is a ``torch.full`` of seq^2). The fill is the same
``elementwise`` op (one write per element) as standard attention's ``mask_full``; the
fresh pages are priced as the ``page_fault`` kind, so the fit gives that kind its own
speed and overhead (calibrate/fit.py: every non-reference kind carrying >= 50% of >= 3
fit cases; the cpu-host profile's estimate of the speed puts it at ~80% at the start).

Why a fill and not one write per page: measured on the dev VM (2026-12-07, one thread,
load 3), a fresh ``torch.full`` less ``fill_`` into a preallocated vector costs
0.93-1.09 us per page at 48-128 MiB, the same as an out-of-place ``torch.add`` less the
add into a preallocated output (1.01-1.06 us), while ``torch.empty`` plus one write per
page costs 1.37 us per page: the op's own writes land in the page the kernel has just
cleared (cache-hot) instead of missing to DRAM, which the fill carries and a strided
touch does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from xpusim.sim import ops
from xpusim.sim.ir import Op

Shape = dict[str, float]

# Sizes from the threshold (32 MiB) to 8x it; quick mode keeps 4 so that its seeded split
# leaves the fit the 3 cases a kind needs (calibrate/fit.py MIN_CASES_PER_KIND).
PAGE_FAULT_MIB_FULL = (32, 48, 64, 96, 128, 256)
PAGE_FAULT_MIB_QUICK = (32, 48, 64, 128)
FLOAT_BYTES = 4


def page_fault_ops(s: Shape, dtype: str) -> list[Op]:
    """``torch.full`` of ``mib`` MiB of fp32: one write per element into a fresh output."""
    nbytes = s["mib"] * 1024 * 1024
    op = ops.elementwise("full", nbytes / FLOAT_BYTES, "fp32", 1.0, 0, 1)
    return [replace(op, fresh_bytes=nbytes)]


def page_fault_runner(s: Shape, dtype: str, device: str) -> Callable[[], object]:
    """``torch.full((numel,), 1.0)`` for ``mib`` MiB of fp32 (freed when the call returns)."""
    import torch
    from xpusim.calibrate.kernel_runners import inference_mode

    numel = int(s["mib"] * 1024 * 1024) // FLOAT_BYTES
    return inference_mode(lambda: torch.full((numel,), 1.0, dtype=torch.float32, device=device))
