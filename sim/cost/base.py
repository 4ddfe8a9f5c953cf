"""The one interface for "how long does this op take": ``CostModel.time(op) -> OpCost``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from xpusim.sim.ir import Op


@dataclass(frozen=True)
class OpCost:
    """Predicted time of one op and why.

    ``time_s = max(compute_s, memory_s) + overhead_s``: compute and memory traffic
    overlap (roofline), the launch overhead does not. ``bound`` names the largest term.
    """

    time_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    bound: str  # "compute" | "memory" | "overhead"
    details: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "time_s": self.time_s,
            "compute_s": self.compute_s,
            "memory_s": self.memory_s,
            "overhead_s": self.overhead_s,
            "bound": self.bound,
            **self.details,
        }


class CostModel(Protocol):
    name: str

    def time(self, op: Op) -> OpCost: ...


# Ops a ``CachedCostModel`` answers by identity before their content key: the last this
# many it priced. A training step's contended rates ask for each segment's ops again right
# after the segment was priced (``Pricing._contended_rate``: ~876,000 asks over the
# training rows of ``validate --published``), and a content key costs a tuple, a sort and a
# dataclass hash and comparison per ask. Bounded: the memo holds its ops alive.
RECENT_OPS = 4096


class CachedCostModel:
    """Memoises any cost model on the op's content (names do not matter); the ops priced
    last also by identity (``RECENT_OPS``: an op is frozen, so its content key and cost
    do not change while the memo holds it)."""

    def __init__(self, inner: CostModel) -> None:
        self.inner = inner
        self.name = inner.name
        self._cache: dict[tuple, OpCost] = {}
        self._recent: dict[int, tuple[Op, OpCost]] = {}

    def time(self, op: Op) -> OpCost:
        seen = self._recent.get(id(op))
        if seen is not None and seen[0] is op:
            return seen[1]
        key = op.cache_key()
        cost = self._cache.get(key)
        if cost is None:
            cost = self.inner.time(op)
            self._cache[key] = cost
        if len(self._recent) >= RECENT_OPS:
            self._recent.clear()
        self._recent[id(op)] = (op, cost)
        return cost
