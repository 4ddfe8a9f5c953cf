"""Reuse distances of a kernel graph's operands, from the data flow its builder describes.

A builder that knows which buffer each op reads and writes names them here
(``Reuse.touch``); the tracker keeps a clock of the main-memory bytes the graph's ops
have moved so far and, per buffer, the clock at its last touch. An op touching a buffer
that an earlier op touched gets a ``(bytes, distance)`` entry in ``Op.reuse``: the
bytes of its traffic on that buffer, and the bytes moved since that touch plus the
op's own traffic (the working set the buffer had to survive in); the rest of the op's
traffic (the kernel's inputs and outputs, a buffer's first touch in the call) gets an
infinite distance. A calibrated CPU prices the bytes by that distance: within the core's
L2 at the L2 tier's rate, beyond the last-level cache at main memory's
(sim/cost/l2_reuse.py); every other device ignores them.

What counts as a touch is the builder's statement of the kernel's data flow: a
buffer is named after its role (``"s"``, the scores of the current key block), so a
fresh output that eager PyTorch allocates where the same statement's previous result
was freed (glibc hands back the most recently freed chunk of a fitting size) is a touch
of that name, one loop iteration after its last one. The distance over-counts the
distinct bytes (a buffer touched twice in between counts twice): the L2 rule is
conservative. A GEMM's stated weights (``GemmShape.weight_bytes``) are left out: they
keep their own tier (``roofline.cold_bytes``, ``pack_read_time``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from xpusim.sim.ir import MAIN_MEMORY, GemmShape, Op


@dataclass
class Reuse:
    """The clock of main-memory bytes moved so far and each named buffer's last touch."""

    clock: float = 0.0
    last: dict[str, float] = field(default_factory=dict)

    def touch(self, op: Op, buffers: Mapping[str, float]) -> Op:
        """``op`` with its ``reuse`` entries for ``buffers`` (name -> bytes of the op's
        traffic on it) an earlier op touched; advances the clock by the op's traffic and
        marks the buffers touched at its end."""
        own = op.bytes.get(MAIN_MEMORY, 0.0)
        pairs = tuple(
            (float(nbytes), self.clock - self.last[name] + own)
            for name, nbytes in buffers.items()
            if name in self.last and nbytes > 0
        )
        # The rest of the traffic touches nothing an earlier op of the call touched (the
        # kernel's inputs and outputs, a buffer's first touch): an infinite distance. A
        # GEMM's weights keep their own tier (roofline.cold_bytes, pack_read_time).
        shape = op.shape
        weights = shape.weight_bytes if isinstance(shape, GemmShape) else 0.0
        rest = own - sum(b for b, _ in pairs) - weights
        if rest > 0:
            pairs = (*pairs, (rest, math.inf))
        self.clock += own
        for name, nbytes in buffers.items():
            if nbytes > 0:
                self.last[name] = self.clock
        return replace(op, reuse=pairs) if pairs else op


def repeated_call(ops: list[Op]) -> list[Op]:
    """Ops of a case timed back to back (a microbenchmark): each op's whole traffic
    touches what the previous call of the same ops touched, a call's traffic ago."""
    call = sum(op.bytes.get(MAIN_MEMORY, 0.0) for op in ops)
    return [replace(op, reuse=((op.bytes.get(MAIN_MEMORY, 0.0), call),))
            if op.bytes.get(MAIN_MEMORY, 0.0) > 0 else op for op in ops]
