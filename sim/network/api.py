"""The collective cost API: algorithm choice, backend dispatch, nccl-tests bandwidths.

``cost_collective`` builds the system's ``Topology``, decomposes the collective into
phases with the chosen algorithm (``sim.network.algorithms``) and prices them with
the analytical backend (per-link bytes / capacity + latency) or the flow-level
simulation (max-min fair sharing). ``algorithm="auto"`` prices every applicable
algorithm analytically and keeps the fastest, which reproduces what NCCL/HCCL tuning
does: trees for small messages (fewer latency steps), rings for large ones,
two-level forms when the group spans nodes, direct all-to-all inside a node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from hwprofiles.spec import System
from sim.errors import InputError
from sim.ir import Collective, CollectiveKind
from sim.network import analytical, flow
from sim.network.algorithms import build, candidates
from sim.network.phases import NetworkCost, Phase
from sim.network.topology import Topology

BACKENDS = ("analytical", "flow")

# The largest collective group priced. The ring, tree and hierarchical decompositions
# list one flow per rank (the tree four), and ``auto`` prices each candidate, so the
# cost grows linearly with the group: ~4.5 s for an all-reduce at this limit on a
# 2-core laptop-class machine, ~35 s at 2^20. 2^17 ranks is above the largest
# clusters built (~100K GPUs; Pangu Ultra MoE trained on ~6K NPUs), so a larger group
# is a typo, not a study.
MAX_RANKS = 131_072


@dataclass(frozen=True)
class CollectiveResult:
    time_s: float
    algorithm: str
    algorithm_bandwidth: float  # bytes/s: nbytes / time
    bus_bandwidth: float  # bytes/s: algbw x the nccl-tests bus factor
    link_bytes: dict[str, float] = field(default_factory=dict)  # bytes crossing each class
    bottleneck: str = ""  # the link that limits the slowest phase, and its load
    backend: str = "analytical"
    phases: tuple[dict, ...] = ()  # per phase: name, time_s, transfer_s, latency_s, ...

    def as_dict(self) -> dict:
        return {
            "time_s": self.time_s,
            "algorithm": self.algorithm,
            "algorithm_bandwidth": self.algorithm_bandwidth,
            "bus_bandwidth": self.bus_bandwidth,
            "backend": self.backend,
            "link_bytes": dict(self.link_bytes),
            "bottleneck": self.bottleneck,
            "phases": list(self.phases),
        }


def bus_factor(kind: CollectiveKind, n: int) -> float:
    """nccl-tests' busbw/algbw factor (nccl-tests doc/PERFORMANCE.md)."""
    if n <= 1:
        return 0.0
    if kind == CollectiveKind.ALL_REDUCE:
        return 2 * (n - 1) / n
    if kind in (
        CollectiveKind.ALL_GATHER,
        CollectiveKind.REDUCE_SCATTER,
        CollectiveKind.ALL_TO_ALL,
        CollectiveKind.ALL_TO_ALLV,
    ):
        return (n - 1) / n
    return 1.0


def cost_network(system: System, phases: list[Phase], backend: str = "analytical") -> NetworkCost:
    """Price arbitrary phases of traffic (used by the EP study for all-to-allv)."""
    topo = Topology(system)
    if backend == "analytical":
        return analytical.cost_phases(topo, phases)
    if backend == "flow":
        return flow.cost_phases(topo, phases)
    raise InputError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")


def cost_collective(
    system: System,
    kind: CollectiveKind | str,
    group: Sequence[int],
    nbytes: float,
    algorithm: str = "auto",
    backend: str = "analytical",
) -> CollectiveResult:
    try:
        kind = CollectiveKind(kind)
    except ValueError:
        raise InputError(
            f"unknown collective '{kind}'; choose one of: "
            f"{', '.join(k.value for k in CollectiveKind)}"
        ) from None
    if backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    if nbytes < 0:
        raise InputError(f"bytes must be >= 0, got {nbytes}")
    if len(group) > MAX_RANKS:
        raise InputError(
            f"a group of {len(group):,} ranks is above the limit of {MAX_RANKS:,} "
            "(2^17, more than the largest clusters built); use fewer ranks"
        )
    group = tuple(int(g) for g in group)
    topo = Topology(system)
    topo.check_group(group)
    n = len(group)
    if n <= 1 or nbytes == 0:
        return CollectiveResult(0.0, "none", 0.0, 0.0, backend=backend)
    if algorithm == "auto":
        best = None
        for name in candidates(kind, topo, group):
            c = analytical.cost_phases(topo, build(kind, name, topo, group, nbytes))
            if best is None or c.time_s < best[1].time_s:
                best = (name, c)
        assert best is not None
        algorithm, cost = best
        if backend == "flow":
            cost = flow.cost_phases(topo, build(kind, algorithm, topo, group, nbytes))
    else:
        phases = build(kind, algorithm, topo, group, nbytes)
        cost = cost_network(system, phases, backend)
    algbw = nbytes / cost.time_s if cost.time_s > 0 else 0.0
    return CollectiveResult(
        time_s=cost.time_s,
        algorithm=algorithm,
        algorithm_bandwidth=algbw,
        bus_bandwidth=algbw * bus_factor(kind, n),
        link_bytes=cost.link_bytes,
        bottleneck=cost.bottleneck,
        backend=backend,
        phases=tuple(p.as_dict() for p in cost.phases),
    )


def comm_time_fn(system: System) -> Callable[[Collective], float]:
    @lru_cache(maxsize=65536)
    def _cost(kind: str, group: tuple[int, ...], nbytes: float, algorithm: str) -> float:
        return cost_collective(system, kind, group, nbytes, algorithm).time_s

    def comm_time(coll: Collective) -> float:
        return _cost(coll.kind, coll.group, coll.bytes, coll.algorithm)

    return comm_time
