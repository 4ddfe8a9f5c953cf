"""First touches of a kernel graph's operands, from the data flow its builder describes.

A builder that knows which buffer each op reads and writes names them here
(``DataFlow.touch``, name -> bytes of the op's traffic on it). The part of an op's
main-memory traffic on buffers no earlier op of the graph named, plus its unnamed
traffic (the kernel's inputs and outputs), is its ``Op.first_touch_bytes``: data not
left in the caches by the call so far. A calibrated CPU prices those bytes at the
main-memory rate (sim/cost/first_touch.py); every other device ignores them.

What counts as a touch is the builder's statement of the kernel's data flow: a buffer is
named after its role (``"s"``, the scores of the current key block), so a fresh output
that eager PyTorch allocates where the same statement's previous result was freed (glibc
hands back the most recently freed chunk of a fitting size) is a touch of that name, not
a first touch. A GEMM's stated weights (``GemmShape.weight_bytes``) are left out: they
keep their own tier (``roofline.cold_bytes``, ``pack_read_time``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from xpusim.sim.ir import GemmShape, Op


@dataclass
class DataFlow:
    """The buffers an earlier op of the graph touched."""

    touched: set[str] = field(default_factory=set)

    def touch(self, op: Op, buffers: Mapping[str, float]) -> Op:
        """``op`` with its ``first_touch_bytes``: its main-memory traffic less the bytes on
        ``buffers`` (name -> bytes) an earlier op touched and less a GEMM's weights."""
        seen = sum(b for name, b in buffers.items() if name in self.touched)
        shape = op.shape
        weights = shape.weight_bytes if isinstance(shape, GemmShape) else 0.0
        first = op.main_bytes - seen - weights
        self.touched.update(name for name, b in buffers.items() if b > 0)
        return replace(op, first_touch_bytes=first) if first > 0 else op
