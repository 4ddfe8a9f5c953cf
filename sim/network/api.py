"""The collective cost API: algorithm choice, backend dispatch, nccl-tests bandwidths.

``cost_collective`` builds the system's ``Topology``, decomposes the collective into
phases with the chosen algorithm (``xpusim.sim.network.algorithms``) and prices them with
the analytical backend (per-link bytes / capacity) or the flow-level simulation
(max-min fair sharing). On an NCCL system the protocol (LL, LL128, Simple) then
scales that transfer time and NCCL's latency model adds the per-step latencies
(``xpusim.sim.network.protocols``); elsewhere each step costs a hop latency plus the
profile's step overhead. ``algorithm``/``protocol`` = "auto" price every applicable
pair analytically and keep the fastest, NCCL's own rule: LL for small messages,
LL128 / Simple as they grow, trees and NVLS where they win, two-level forms when
the group spans nodes, direct all-to-all inside a node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.errors import InputError
from xpusim.sim.gcpause import gc_paused
from xpusim.sim.ir import CollectiveKind
from xpusim.sim.network import analytical, flow, nvls
from xpusim.sim.network import protocols as proto
from xpusim.sim.network.algorithms import build, candidates
from xpusim.sim.network.copy import APIS, copy_system
from xpusim.sim.network.phases import NetworkCost, Phase, PhaseCost
from xpusim.sim.network.topology import Topology

BACKENDS = ("analytical", "flow")

# The largest collective group priced. The ring, tree and hierarchical decompositions
# list one flow per rank (the tree four), and ``auto`` prices each candidate, so the
# cost grows linearly with the group: ~4.5 s for an all-reduce at this limit on a
# 2-core laptop-class machine, ~35 s at 2^20. 2^17 ranks is above the largest
# clusters built (~100K GPUs; Pangu Ultra MoE trained on ~6K NPUs), so a larger group
# is a typo, not a study.
MAX_RANKS = 131_072
# Groups from this size are priced with the garbage collector paused (_gc_paused).
GC_PAUSE_FROM = 1024


@dataclass(frozen=True)
class CollectiveResult:
    time_s: float
    algorithm: str
    algorithm_bandwidth: float  # bytes/s: nbytes / time
    bus_bandwidth: float  # bytes/s: algbw x the nccl-tests bus factor
    link_bytes: dict[str, float] = field(default_factory=dict)  # bytes crossing each class
    bottleneck: str = ""  # the link that limits the slowest phase, and its load
    backend: str = "analytical"
    phases: tuple[dict[str, Any], ...] = ()  # per phase: name, time_s, transfer_s, latency_s, ...
    protocol: str = "Simple"  # LL, LL128 or Simple (NCCL); Simple elsewhere

    def as_dict(self) -> dict[str, Any]:
        return {
            "time_s": self.time_s,
            "algorithm": self.algorithm,
            "protocol": self.protocol,
            "algorithm_bandwidth": self.algorithm_bandwidth,
            "bus_bandwidth": self.bus_bandwidth,
            "backend": self.backend,
            "link_bytes": dict(self.link_bytes),
            "bottleneck": self.bottleneck,
            "phases": list(self.phases),
        }


def _gc_paused(active: bool) -> AbstractContextManager[None]:
    """``gcpause.gc_paused`` while ``active``: pricing a large group lists one flow tuple
    per rank and ring step (a ring all-reduce over 6,144 ranks: 49,152), all freed by
    reference counting when the candidate is priced. With the collector on, that burst
    of allocations promotes them and triggers full (generation 2) collections of the
    caller's whole heap: in a training step 0.1-0.15 s of collection during one
    6,144-rank all-reduce, more than the pricing itself. The few cycles pricing makes
    (the tree builder's recursive closure) wait for the next collection after the
    pause. Results are unaffected.
    """
    return gc_paused(active)


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


def _check_request(
    kind: CollectiveKind | str, backend: str, protocol: str, nbytes: float, ranks: int
) -> CollectiveKind:
    """The collective ``kind`` names, after checking the request's other fields."""
    try:
        kind = CollectiveKind(kind)
    except ValueError:
        raise InputError(
            f"unknown collective '{kind}'; choose one of: "
            f"{', '.join(k.value for k in CollectiveKind)}"
        ) from None
    if backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    if protocol != "auto" and protocol not in proto.PROTOCOLS:
        raise InputError(
            f"unknown protocol '{protocol}'; choose one of: auto, {', '.join(proto.PROTOCOLS)}"
        )
    if nbytes < 0:
        raise InputError(f"bytes must be >= 0, got {nbytes}")
    if ranks > MAX_RANKS:
        raise InputError(
            f"a group of {ranks:,} ranks is above the limit of {MAX_RANKS:,} "
            "(2^17, more than the largest clusters built); use fewer ranks"
        )
    return kind


def cost_collective(
    system: System,
    kind: CollectiveKind | str,
    group: Sequence[int],
    nbytes: float,
    algorithm: str = "auto",
    backend: str = "analytical",
    protocol: str = "auto",
    api: str = "library",
) -> CollectiveResult:
    """Price one collective. ``api``: "library" (default) runs it as the system's
    collective library does (NCCL's send/recv for ``send-recv``); "memcpy" prices a
    ``send-recv`` as a direct copy-engine copy (cudaMemcpy peer, nvbandwidth CE,
    aclrtMemcpy; ``sim/network/copy.py``)."""
    kind = _check_request(kind, backend, protocol, nbytes, len(group))
    group = tuple(int(g) for g in group)
    topo = Topology(system)
    topo.check_group(group)
    n = len(group)
    nodes = len({topo.node_of(d) for d in group})
    _check_api(api, kind, algorithm, protocol, nodes)
    if n <= 1 or nbytes == 0:
        return CollectiveResult(0.0, "none", 0.0, 0.0, backend=backend)
    if api == "memcpy":
        return _cost_copy(system, kind, group, nbytes, backend)
    with _gc_paused(n >= GC_PAUSE_FROM):
        algorithm, chosen, _ = _fastest(topo, kind, group, nbytes, algorithm, protocol, nodes)
        phases = build(kind, algorithm, topo, group, nbytes)
        pricer = flow.cost_phases if backend == "flow" else analytical.cost_phases
        cost = pricer(topo, phases)
    rounds = [ph.rounds for ph in phases]
    cost = _with_protocol(system, kind, algorithm, chosen, cost, rounds, nbytes, n, nodes)
    # After the choice: NCCL's tuner does not see this copy, so it picks as without it.
    copy_s = proto.read_mode_copy_s(system, kind, algorithm, chosen, nbytes, n, nodes)
    cost = _with_copy(cost, copy_s)
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
        protocol=chosen,
    )


def _check_api(
    api: str, kind: CollectiveKind, algorithm: str, protocol: str, nodes: int
) -> None:
    if api not in APIS:
        raise InputError(f"unknown api '{api}'; choose one of: {', '.join(APIS)}")
    if api == "library":
        return
    if kind != CollectiveKind.SEND_RECV:
        raise InputError(
            f"api memcpy prices a direct copy, i.e. send-recv only, not {kind}; "
            "use --api library"
        )
    if nodes > 1:
        raise InputError(
            "api memcpy is a copy-engine copy inside one node; a group across nodes "
            "goes through the NIC (use --api library)"
        )
    if algorithm not in ("auto", "direct") or protocol != "auto":
        raise InputError(
            "api memcpy has no algorithm or protocol to choose; drop --algorithm/--protocol"
        )


def _cost_copy(
    system: System, kind: CollectiveKind, group: tuple[int, ...], nbytes: float, backend: str
) -> CollectiveResult:
    """A send-recv as copy-engine copies: the same pairs, on the links at the copy
    engine's efficiency, one hop latency and no library step."""
    topo = Topology(copy_system(system))
    phases = build(kind, "direct", topo, group, nbytes)
    cost = flow.cost_phases(topo, phases) if backend == "flow" else analytical.cost_phases(
        topo, phases
    )
    algbw = nbytes / cost.time_s if cost.time_s > 0 else 0.0
    return CollectiveResult(
        time_s=cost.time_s,
        algorithm="memcpy",
        algorithm_bandwidth=algbw,
        bus_bandwidth=algbw * bus_factor(kind, len(group)),
        link_bytes=cost.link_bytes,
        bottleneck=cost.bottleneck,
        backend=backend,
        phases=tuple(p.as_dict() for p in cost.phases),
        protocol="copy",
    )


def collective_time(
    system: System,
    kind: CollectiveKind | str,
    group: Sequence[int],
    nbytes: float,
    algorithm: str = "auto",
) -> float:
    """``cost_collective(system, kind, group, nbytes, algorithm).time_s`` (analytical
    backend, the fastest protocol, the library API), the same float, without building
    the report (phases, link bytes, bottleneck): the engines' collective pricer."""
    kind = _check_request(kind, "analytical", "auto", nbytes, len(group))
    group = tuple(int(g) for g in group)
    topo = Topology(system)
    topo.check_group(group)
    n = len(group)
    nodes = len({topo.node_of(d) for d in group})
    _check_api("library", kind, algorithm, "auto", nodes)
    if n <= 1 or nbytes == 0:
        return 0.0
    with _gc_paused(n >= GC_PAUSE_FROM):
        algorithm, chosen, times = _fastest(topo, kind, group, nbytes, algorithm, "auto", nodes)
    return summed_with_copy(system, kind, algorithm, chosen, nbytes, n, nodes, times)


def summed_with_copy(system: System, kind: CollectiveKind, algorithm: str, protocol: str,
                     nbytes: float, n: int, nodes: int, times: list[float]) -> float:
    """``_with_copy``'s sum of the chosen phases' ``times``: the read-mode copy
    (``protocols.read_mode_copy_s``) on the first phase, then the phases in order."""
    copy_s = proto.read_mode_copy_s(system, kind, algorithm, protocol, nbytes, n, nodes)
    if copy_s > 0 and times:
        times = [times[0] + copy_s, *times[1:]]
    return sum(times)


def _fastest(
    topo: Topology,
    kind: CollectiveKind,
    group: tuple[int, ...],
    nbytes: float,
    algorithm: str,
    protocol: str,
    nodes: int,
    names: list[str] | None = None,
    latency: Callable[..., float] = proto.latency_s,
    times_of: Callable[[Topology, Phase], tuple[float, float]] = analytical.phase_times,
) -> tuple[str, str, list[float]]:
    """(algorithm, protocol, its phases' analytical times) of the fastest choice among
    ``algorithm`` and ``protocol`` ("auto": every candidate); the first found wins a
    tie. Each choice's time is ``_with_protocol``'s, from the phases' transfer and
    latency terms alone (``analytical.phase_times``). ``names`` (the algorithms to try,
    already checked against ``candidates``), ``latency`` (``protocols.latency_s`` or a
    memo of it) and ``times_of`` (``analytical.phase_times`` or the same with kept
    routes) let ``pricer.CollectivePricer`` keep what does not depend on the size."""
    system, n = topo.system, len(group)
    checked = names is not None
    if names is None:
        names = candidates(kind, topo, group) if algorithm == "auto" else [algorithm]
    best: tuple[float, str, str, list[float]] | None = None
    for name in names:
        phases = build(kind, name, topo, group, nbytes, checked=checked)
        terms = [times_of(topo, ph) for ph in phases]
        rounds = [ph.rounds for ph in phases]
        options = proto.protocols(system, kind, name, nbytes, n)
        if protocol != "auto":
            if protocol not in options:
                if algorithm != "auto":
                    raise InputError(
                        f"protocol {protocol} does not apply to {kind} with {name} on "
                        f"{system.name} (library {system.collective_library.name}); "
                        f"choose one of: auto, {', '.join(options)}"
                    )
                continue
            options = [protocol]
        for p in options:
            parts = _protocol_parts(system, kind, name, p, terms, rounds, nbytes, n, nodes,
                                    latency)
            times = [transfer + share for transfer, share in parts]
            t = sum(times)
            if best is None or t < best[0]:
                best = (t, name, p, times)
    if best is None:
        raise InputError(
            f"protocol {protocol} applies to no algorithm of {kind} on {system.name}; "
            "use --protocol auto"
        )
    return best[1], best[2], best[3]


def _with_protocol(
    system: System,
    kind: CollectiveKind,
    algorithm: str,
    protocol: str,
    cost: NetworkCost,
    rounds: list[int],
    nbytes: float,
    n: int,
    nodes: int,
) -> NetworkCost:
    """The phases' cost under ``protocol``: on an NCCL system the transfer time over
    the protocol's bandwidth fraction, and NCCL's latency (shared out over the phases
    by their rounds) instead of the per-round hop + step overhead."""
    if not proto.is_nccl(system):
        return cost  # the same floats as _protocol_parts' terms, kept as they are
    terms = [(p.transfer_s, p.latency_s) for p in cost.phases]
    parts = _protocol_parts(system, kind, algorithm, protocol, terms, rounds, nbytes, n, nodes)
    phases = [PhaseCost(p.name, t + share, t, share, p.link_bytes, p.bottleneck)
              for p, (t, share) in zip(cost.phases, parts, strict=True)]
    return NetworkCost(sum(p.time_s for p in phases), phases)


def _protocol_parts(
    system: System,
    kind: CollectiveKind,
    algorithm: str,
    protocol: str,
    terms: list[tuple[float, float]],
    rounds: list[int],
    nbytes: float,
    n: int,
    nodes: int,
    latency_of: Callable[..., float] = proto.latency_s,
) -> list[tuple[float, float]]:
    """(transfer, latency share) of each phase under ``protocol`` on an NCCL system,
    from the phases' analytical (transfer, latency) ``terms``; elsewhere the terms
    themselves (no protocol model: ``_with_protocol`` keeps the analytical cost).
    ``latency_of``: ``protocols.latency_s`` or a memo of it (the same floats)."""
    if not proto.is_nccl(system):
        return list(terms)
    transfer = sum(t for t, _ in terms)
    simple_busbw = nbytes * bus_factor(kind, n) / transfer if transfer > 0 else float("inf")
    frac = proto.bandwidth_fraction(
        system, kind, algorithm, protocol, nodes, simple_busbw, nbytes, n
    )
    weights = [max(1, r) for r in rounds]
    latency = latency_of(system, kind, algorithm, protocol, n, nodes, sum(rounds))
    parts = []
    for (transfer_s, _), w in zip(terms, weights, strict=True):
        share = latency * w / sum(weights)
        t = transfer_s / frac
        if algorithm == "nvls" and nodes == 1:
            # NVLS's chunk pipeline, which NCCL's tuner does not price (sim/network/nvls.py).
            share += nvls.pipeline_s(nbytes, n, t)
        parts.append((t, share))
    return parts


def _with_copy(cost: NetworkCost, copy_s: float) -> NetworkCost:
    """``cost`` with a serial local copy of ``copy_s`` added to its first phase's
    transfer (``protocols.read_mode_copy_s``)."""
    if copy_s <= 0 or not cost.phases:
        return cost
    p = cost.phases[0]
    first = PhaseCost(
        p.name, p.time_s + copy_s, p.transfer_s + copy_s, p.latency_s, p.link_bytes, p.bottleneck
    )
    phases = [first, *cost.phases[1:]]
    return NetworkCost(sum(q.time_s for q in phases), phases)
