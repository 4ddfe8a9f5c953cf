"""Count the torch ops a kernel really executes (for checking describe() graphs).

A ``TorchDispatchMode`` sees every ATen op after autograd and the Python frontend
decompose a call: ``torch.matmul`` on 4-D tensors arrives as expand/view/bmm/
_unsafe_view. Views and other metadata-only ops move no data and launch no kernel,
so they are not counted; every other op (GEMMs, pointwise ops, reductions, fills,
copies, index ops) is one launch that ``describe()`` must list.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that only create a new view of existing storage (no kernel, no data movement).
# ``func.is_view`` covers the aliasing ops; _unsafe_view / _reshape_alias are views
# that torch does not flag as such.
METADATA_OPS = frozenset(
    {
        "_unsafe_view",
        "_reshape_alias",
        "detach",
        "lift_fresh",
        "alias",
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
    }
)


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = func.overloadpacket.__name__
        if not (func.is_view or name in METADATA_OPS):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> collections.Counter[str]:
    """Executed non-view ATen ops of one call of ``fn``, by op name."""
    counter = _Counter()
    with torch.no_grad(), counter:
        fn()
    return counter.counts
