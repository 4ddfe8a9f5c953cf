"""Interim collective cost: closed-form ring/pairwise on the slowest link class.

To be replaced by topology-aware algorithms (issue 3); the signatures stay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from hwprofiles.spec import System
from sim.ir import Collective, CollectiveKind


@dataclass(frozen=True)
class CollectiveResult:
    time_s: float
    algorithm: str
    algorithm_bandwidth: float  # bytes/s: nbytes / time
    bus_bandwidth: float  # bytes/s: algbw x the nccl-tests bus factor
    link_bytes: dict[str, float] = field(default_factory=dict)
    bottleneck: str = ""


def bus_factor(kind: CollectiveKind, n: int) -> float:
    """nccl-tests' busbw/algbw factor (PERFORMANCE.md of nccl-tests)."""
    if n <= 1:
        return 0.0
    if kind == CollectiveKind.ALL_REDUCE:
        return 2 * (n - 1) / n
    if kind in (CollectiveKind.ALL_GATHER, CollectiveKind.REDUCE_SCATTER,
                CollectiveKind.ALL_TO_ALL, CollectiveKind.ALL_TO_ALLV):
        return (n - 1) / n
    return 1.0


def cost_collective(
    system: System,
    kind: CollectiveKind | str,
    group: Sequence[int],
    nbytes: float,
    algorithm: str = "auto",
    backend: str = "analytical",
) -> CollectiveResult:
    kind = CollectiveKind(kind)
    n = len(group)
    if n <= 1 or nbytes == 0:
        return CollectiveResult(0.0, "none", 0.0, 0.0)
    nodes = {g // system.devices_per_node for g in group}
    eff = system.collective_efficiency
    if len(nodes) > 1:
        per_node = n / len(nodes)
        bw = system.nic.bandwidth * min(system.nics_per_node, per_node) / per_node
        bw *= eff.inter_node / system.oversubscription
        alpha = system.nic.latency + eff.step_overhead_s
    else:
        links = system.links_per_device if system.intra_topology == "full_mesh" else 1
        bw = system.intra_link.bandwidth * links * eff.intra_node
        alpha = system.intra_link.latency + eff.step_overhead_s
    steps = {CollectiveKind.ALL_REDUCE: 2 * (n - 1)}.get(kind, n - 1)
    factor = bus_factor(kind, n)
    t = factor * nbytes / bw + steps * alpha
    algbw = nbytes / t
    return CollectiveResult(t, "ring", algbw, algbw * factor)


def comm_time_fn(system: System) -> Callable[[Collective], float]:
    @lru_cache(maxsize=65536)
    def _cost(kind: str, group: tuple[int, ...], nbytes: float, algorithm: str) -> float:
        return cost_collective(system, kind, group, nbytes, algorithm).time_s

    def comm_time(coll: Collective) -> float:
        return _cost(coll.kind, coll.group, coll.bytes, coll.algorithm)

    return comm_time
