"""The engines' collective pricer: ``collective_time`` with its size-independent work kept.

A serving run prices the TP all-reduce of every decode batch size it meets: ~115,000
distinct (kind, group, bytes) over ``validate --published``'s serving rows, ~130 µs each
on an 8-GPU NVSwitch group (2026-12-07, twentieth session). Part of that work does not
depend on the size: building the ``Topology``, checking the group and the request
(``_check_request``, ``check_group``, ``_check_api``), counting its nodes, listing the
candidate algorithms (and listing them again in ``build`` to check the one asked for),
and NCCL's latency of each (algorithm, protocol, ranks, nodes, rounds)
(``protocols.latency_s`` reads only the system and those). ``CollectivePricer`` keeps
those per system and prices each size through the same ``api._fastest``: the same
phases, terms and floats as ``api.collective_time`` (``tests/test_collective_pricer.py``
compares the two with ``==``). Errors are raised as ``collective_time`` raises them: a
bad group or kind on its first call, a negative size on every call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from xpusim.hwprofiles.spec import System
from xpusim.sim.ir import Collective, CollectiveKind
from xpusim.sim.network import analytical, api
from xpusim.sim.network import protocols as proto
from xpusim.sim.network.algorithms import build, candidates
from xpusim.sim.network.phases import Phase
from xpusim.sim.network.topology import Topology

# (kind, members, algorithms to try, nodes) of a checked (kind, group, algorithm).
_Static = tuple[CollectiveKind, tuple[int, ...], list[str], int]


@dataclass
class CollectivePricer:
    """``api.collective_time(system, kind, group, nbytes, algorithm)`` for one system,
    keeping per (kind, group, algorithm) what does not depend on ``nbytes``."""

    system: System
    topo: Topology = field(init=False)
    _static: dict[tuple[CollectiveKind | str, tuple[int, ...], str], _Static] = field(default_factory=dict)
    _latency: dict[tuple[CollectiveKind, str, str, int, int, int], float] = field(
        default_factory=dict)
    _plans: dict[analytical.PhaseKey, analytical.LoadPlan] = field(default_factory=dict)
    _shifted: Callable[[CollectiveKind, tuple[int, ...], float, str], float] = field(
        init=False)

    def __post_init__(self) -> None:
        self.topo = Topology(self.system)
        # Per (kind, group moved to node 0, size, algorithm); a few thousand suffice
        # for one step's groups (a training step prices each distinct one once).
        self._shifted = lru_cache(maxsize=4096)(self._price)

    def time(self, kind: CollectiveKind | str, group: tuple[int, ...], nbytes: float,
             algorithm: str = "auto") -> float:
        if nbytes < 0:  # ``_check_request``'s size check, the only one per call
            api._check_request(kind, "analytical", "auto", nbytes, len(group))
        checked, members, names, nodes = self.static(kind, group, algorithm)
        if len(members) <= 1 or nbytes == 0:
            return 0.0
        return self._shifted(checked, self._based(members), nbytes, algorithm)

    def _based(self, members: tuple[int, ...]) -> tuple[int, ...]:
        """``members`` moved down by whole nodes so that the first lies on node 0.

        Pricing does not change under that move: every link, capacity, latency and
        route is a function of node differences, local indices and packages (whole
        nodes hold whole packages), the flows keep their order and the links their
        order of first appearance, so the loads are the same additions and the
        bottleneck the same link (``Topology``, ``vectorized``). A PCIe tree's extra
        links (``pcie.extra_links``) are named by device; those systems keep their
        group. The stages of a training plan run equal groups on other nodes: Pangu's
        16 stages priced each TP, EP and DP collective 16 times (~1/10 of its step)."""
        dpn = self.topo.dpn
        shift = min(members) // dpn * dpn
        if not shift or self.topo.has_pcie_tree:
            return members
        return tuple(d - shift for d in members)

    def _price(self, checked: CollectiveKind, members: tuple[int, ...], nbytes: float,
               algorithm: str) -> float:
        """``collective_time`` of a checked request of a non-zero size on 2+ ranks."""
        _, members, names, nodes = self.static(checked, members, algorithm)
        n = len(members)
        with api._gc_paused(n >= api.GC_PAUSE_FROM):
            algorithm, chosen, times = api._fastest(self.topo, checked, members, nbytes,
                                                    algorithm, "auto", nodes, names,
                                                    self._latency_s, self._phase_times)
        return api.summed_with_copy(self.system, checked, algorithm, chosen, nbytes, n, nodes,
                                    times)

    def static(self, kind: CollectiveKind | str, group: tuple[int, ...],
               algorithm: str) -> _Static:
        """The checked (kind, members, algorithms to try, nodes) of a request, kept."""
        key = (kind, group, algorithm)
        static = self._static.get(key)
        if static is None:
            static = self._static[key] = self._check(kind, group, algorithm)
        return static

    def _check(self, kind: CollectiveKind | str, group: tuple[int, ...],
               algorithm: str) -> _Static:
        """``collective_time``'s checks of everything but the size, and the algorithms
        its ``_fastest`` tries (``candidates``; one asked for is checked by ``build``)."""
        checked = api._check_request(kind, "analytical", "auto", 0.0, len(group))
        members = tuple(int(g) for g in group)
        self.topo.check_group(members)
        nodes = len({self.topo.node_of(d) for d in members})
        api._check_api("library", checked, algorithm, "auto", nodes)
        names = candidates(checked, self.topo, members)
        if algorithm != "auto":
            if algorithm not in names:
                build(checked, algorithm, self.topo, members, 1.0)  # raises: ``build``'s message
            names = [algorithm]
        return checked, members, names, nodes

    def _phase_times(self, topo: Topology, phase: Phase) -> tuple[float, float]:
        """``analytical.phase_times`` with this system's load plans kept."""
        return analytical.planned_phase_times(topo, phase, self._plans)

    def _latency_s(self, system: System, kind: CollectiveKind, algorithm: str, protocol: str,
                   n: int, nodes: int, rounds: int) -> float:
        """``protocols.latency_s``, kept per (kind, algorithm, protocol, n, nodes, rounds):
        it reads nothing else of this pricer's system."""
        key = (kind, algorithm, protocol, n, nodes, rounds)
        t = self._latency.get(key)
        if t is None:
            t = self._latency[key] = proto.latency_s(system, kind, algorithm, protocol, n,
                                                     nodes, rounds)
        return t


def comm_time_fn(system: System) -> CommTime:
    """The engines' collective pricer on ``system``: ``collective_time`` of a
    ``Collective``, each distinct (kind, group, bytes, algorithm) priced once."""
    return CommTime(CollectivePricer(system))


class CommTime:
    """``comm_time_fn``'s callable: a ``Collective``'s time, memoised per (kind, group,
    bytes, algorithm); ``pricer`` lets a caller price a block of sizes at once
    (``block_pricer.block_times``, the same floats)."""

    def __init__(self, pricer: CollectivePricer) -> None:
        self.pricer = pricer
        self._cost = lru_cache(maxsize=65536)(pricer.time)

    def __call__(self, coll: Collective) -> float:
        return self._cost(coll.kind, coll.group, coll.bytes, coll.algorithm)
