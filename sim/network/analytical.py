"""Analytical backend: per-link bytes / capacity, plus a latency term per round.

For each phase the time is ``max over links(bytes on link / capacity) + rounds *
(hop latency + step overhead)``: every link carries its load at full (effective)
rate, so the busiest link sets the pace. Explicit flows are summed link by link.
A uniform all-to-all in subgroups is priced by symmetry: devices at the same local
index inside a node see the same traffic, so one representative per local index
gives every link's load and a 4,096-rank all-to-all costs O(devices per node x n).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import chain

import numpy as np
from xpusim.sim.errors import InputError
from xpusim.sim.network.phases import Flow, NetworkCost, Phase, PhaseCost
from xpusim.sim.network.topology import (
    DIE_TO_DIE,
    INTER,
    INTRA,
    LINK_CLASSES,
    SPINE,
    LinkId,
    Topology,
)
from xpusim.sim.network.vectorized import FlowLoads
from xpusim.sim.report import fmt_bytes, fmt_si

# A ragged (asymmetric) all-to-all is priced by listing its flows; beyond this many
# the group should be made symmetric instead.
MAX_LISTED_FLOWS = 1_000_000
# From this many listed flows (and port entries) a phase is priced with numpy; below,
# numpy's per-call overhead costs more than the loop it replaces.
VECTORIZE_FROM = 64


def cost_phases(topo: Topology, phases: list[Phase]) -> NetworkCost:
    costs = [cost_phase(topo, p) for p in phases]
    return NetworkCost(sum(c.time_s for c in costs), costs)


def cost_phase(topo: Topology, phase: Phase) -> PhaseCost:
    if _by_symmetry(topo, phase):
        return _uniform_a2a(topo, phase)
    return _flows(topo, phase, _listed(phase))


def phase_times(topo: Topology, phase: Phase) -> tuple[float, float]:
    """(transfer_s, latency_s) of ``cost_phase(topo, phase)``, the same floats; a phase
    of a few listed flows (``_flows_listed``'s) is priced without the report's fields
    (bytes by link class, the bottleneck's description). The collective choice prices
    every candidate algorithm and protocol this way, and only the chosen one in full."""
    if not _by_symmetry(topo, phase):
        flows = _listed(phase)
        if _loop_priced(topo, phase, flows):
            loads, hop = _link_loads(topo, phase, flows, None)
            transfer, _ = _busiest(topo, loads)
            return transfer, phase_latency(topo, phase, hop) if loads else 0.0
    cost = cost_phase(topo, phase)
    return cost.transfer_s, cost.latency_s


# A phase's listed traffic without its sizes: (via NIC?, (source, destination) of each
# flow, the devices of its in-switch port traffic). Its ``LoadPlan``: (each loaded link's
# capacity and the indices of the byte values added to it, in ``_link_loads``' order; the
# largest hop latency; any link loaded).
PhaseKey = tuple[bool, tuple[tuple[int, int], ...], tuple[int, ...]]
LoadPlan = tuple[tuple[tuple[float, tuple[int, ...]], ...], float, bool]


def planned_phase_times(topo: Topology, phase: Phase,
                        plans: dict[PhaseKey, LoadPlan]) -> tuple[float, float]:
    """``phase_times(topo, phase)``, the same floats, with the routes of a listed phase
    kept in ``plans`` (one ``Topology``'s): a collective priced at many sizes lists the
    same flows each time, only their bytes differ. The loads are the same additions in
    the same order (each link's contributions as ``_link_loads`` makes them: the flows
    in order, then the port traffic), divided by the same capacities; the largest quotient
    is the same float in any order."""
    if _by_symmetry(topo, phase):
        return phase_times(topo, phase)
    flows = _listed(phase)
    if not _loop_priced(topo, phase, flows):  # ``cost_phase``'s path, the flows listed once
        cost = _flows(topo, phase, flows)
        return cost.transfer_s, cost.latency_s
    key = (phase.via_nic, tuple((src, dst) for src, dst, _ in flows),
           tuple(dev for dev, _ in phase.port_bytes))
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = _load_plan(topo, phase, flows)
    links, hop, loaded = plan
    values = [f[2] for f in flows]
    values += [nbytes / phase.port_scale for _, nbytes in phase.port_bytes]
    transfer = 0.0
    for capacity, parts in links:
        load = 0.0
        for i in parts:
            load += values[i]
        t = load / capacity
        if t > transfer:
            transfer = t
    return transfer, phase_latency(topo, phase, hop) if loaded else 0.0


def _load_plan(topo: Topology, phase: Phase, flows: list[Flow]) -> LoadPlan:
    """``planned_phase_times``' plan of ``phase``: ``_link_loads`` with each flow's and
    port's bytes replaced by its index among the values (flows, then ports)."""
    parts: dict[LinkId, list[int]] = defaultdict(list)
    hop = 0.0
    routes = _routes(topo)
    for i, (src, dst, _) in enumerate(flows):
        path, _, latency = _route(topo, routes, src, dst, phase.via_nic)
        for link in path:
            parts[link].append(i)
        if path:
            hop = max(hop, latency)
    for j, (dev, _) in enumerate(phase.port_bytes):
        parts[("up", dev)].append(len(flows) + j)
        parts[("down", dev)].append(len(flows) + j)
        hop = max(hop, topo.class_latency(INTRA))
    links = tuple((topo.capacity(link), tuple(ix)) for link, ix in parts.items())
    return links, hop, bool(parts)


def _by_symmetry(topo: Topology, phase: Phase) -> bool:
    """``phase`` is a uniform all-to-all priced from one device per local index."""
    return (
        phase.is_uniform_a2a
        and not phase.via_nic
        and not topo.has_pcie_tree
        and _symmetric(topo, phase.a2a_groups)
    )


def _listed(phase: Phase) -> list[Flow]:
    """The phase's flows listed (``Phase.expand``), refusing a ragged all-to-all too
    large to list."""
    pairs = sum(len(g) * (len(g) - 1) for g in phase.a2a_groups)
    if pairs > MAX_LISTED_FLOWS:
        raise InputError(
            f"phase '{phase.name}': a ragged all-to-all of {pairs} flows is too large to "
            "list; use a group with the same devices on every node (a multiple of the "
            "devices per node) so it can be priced by symmetry"
        )
    return phase.expand()


def describe_link(topo: Topology, link: LinkId, load: float) -> str:
    cap = topo.capacity(link)
    names = {
        "d2d": "die-to-die link {1}->{2}",
        "mesh": "HCCS/mesh link {1}->{2}",
        "up": "switch port (send) of device {1}",
        "down": "switch port (receive) of device {1}",
        "nic_tx": "NIC {2} of {1} (send)",
        "nic_rx": "NIC {2} of {1} (receive)",
        "spine_up": "leaf {1} uplink to spine (oversubscribed)",
        "spine_down": "leaf {1} downlink from spine (oversubscribed)",
        "shm_rx": "SHM receive of device {1} (through host memory)",
        "xsock": "P2P flow {1}->{2} across the CPU socket link",
    }
    parts = list(link)
    if link[0] in ("nic_tx", "nic_rx") and isinstance(link[1], int):
        parts[1] = f"node {link[1]}"
    where = names[link[0]].format(*parts)
    return f"{where} [{topo.link_class(link)}]: {fmt_bytes(load)} at {fmt_si(cap, 'B/s')} effective"


def phase_latency(topo: Topology, phase: Phase, hop_latency: float) -> float:
    return phase.rounds * (hop_latency + topo.system.collective_efficiency.step_overhead_s)


def _flows(topo: Topology, phase: Phase, flows: list[Flow]) -> PhaseCost:
    """Price listed flows: with numpy when there are many (same numbers, see
    ``vectorized``), else the per-flow loop, which is cheaper for a handful."""
    if _loop_priced(topo, phase, flows):
        return _flows_listed(topo, phase, flows)
    return _flows_vectorized(topo, phase, flows)


def _loop_priced(topo: Topology, phase: Phase, flows: list[Flow]) -> bool:
    return topo.has_pcie_tree or len(flows) + len(phase.port_bytes) < VECTORIZE_FROM


def _flows_vectorized(topo: Topology, phase: Phase, flows: list[Flow]) -> PhaseCost:
    """Listed flows priced with numpy (``FlowLoads``): the same numbers as
    ``_flows_listed``, whatever the number of flows (tests compare the two)."""
    fl = FlowLoads(topo, phase, flows)
    transfer, link, load, loaded = fl.bottleneck()
    bottleneck = "none (no traffic)" if link is None else describe_link(topo, link, load)
    latency = phase_latency(topo, phase, fl.hop) if loaded else 0.0
    return PhaseCost(
        phase.name,
        transfer + latency,
        transfer,
        latency,
        {k: v for k, v in fl.by_class.items() if v},
        bottleneck,
    )


# Routes (path, link classes crossed, hop latency) of device pairs, per system object:
# a pure function of the system, which is frozen (never mutated; a what-if builds a new
# one with ``dataclasses.replace``). Keyed on the object's id, the object itself kept in
# the entry so the id is not reused while cached; the last ROUTE_SYSTEMS systems kept.
# A serving run prices a collective for each of thousands of buffer sizes on one group.
ROUTE_SYSTEMS = 8
# (links crossed, their classes once each, hop latency) by (source, destination, via NIC)
Route = tuple[tuple[LinkId, ...], tuple[str, ...], float]
_ROUTES: dict[int, tuple[object, dict[tuple[int, int, bool], Route]]] = {}


def _routes(topo: Topology) -> dict[tuple[int, int, bool], Route]:
    system = topo.system
    entry = _ROUTES.get(id(system))
    if entry is None or entry[0] is not system:
        if len(_ROUTES) >= ROUTE_SYSTEMS:
            del _ROUTES[next(iter(_ROUTES))]
        entry = _ROUTES[id(system)] = (system, {})
    return entry[1]


def _route(
    topo: Topology, routes: dict[tuple[int, int, bool], Route], src: int, dst: int, via_nic: bool
) -> Route:
    """(links crossed, their classes once each, hop latency) from ``src`` to ``dst``."""
    key = (src, dst, via_nic)
    route = routes.get(key)
    if route is None:
        path = topo.path(src, dst, via_nic)
        classes = tuple({topo.link_class(link) for link in path})
        latency = topo.path_latency(src, dst, via_nic) if path else 0.0
        route = routes[key] = (path, classes, latency)
    return route


def _flows_listed(topo: Topology, phase: Phase, flows: list[Flow]) -> PhaseCost:
    """The reference pricing of listed flows: one path per flow, loads summed link by link."""
    by_class = dict.fromkeys(LINK_CLASSES, 0.0)
    loads, hop = _link_loads(topo, phase, flows, by_class)
    transfer, worst = _busiest(topo, loads)
    bottleneck = "none (no traffic)" if worst is None else describe_link(topo, *worst)
    latency = phase_latency(topo, phase, hop) if loads else 0.0
    return PhaseCost(
        phase.name,
        transfer + latency,
        transfer,
        latency,
        {k: v for k, v in by_class.items() if v},
        bottleneck,
    )


def _link_loads(
    topo: Topology, phase: Phase, flows: list[Flow], by_class: dict[str, float] | None
) -> tuple[dict[LinkId, float], float]:
    """Bytes on each link crossed (flows in order, then the in-switch port traffic) and
    the largest hop latency; ``by_class`` (when given) gains the bytes that crossed
    each link class."""
    loads: dict[LinkId, float] = defaultdict(float)
    hop = 0.0
    routes = _routes(topo)
    for src, dst, nbytes in flows:
        path, classes, latency = _route(topo, routes, src, dst, phase.via_nic)
        for link in path:
            loads[link] += nbytes
        if by_class is not None:
            for cls in classes:
                by_class[cls] += nbytes  # bytes that crossed the class, once per flow
        if path:
            hop = max(hop, latency)
    for dev, nbytes in phase.port_bytes:  # in-switch traffic: both ports of the device
        loads[("up", dev)] += nbytes / phase.port_scale
        loads[("down", dev)] += nbytes / phase.port_scale
        if by_class is not None:
            by_class[INTRA] += nbytes
        hop = max(hop, topo.class_latency(INTRA))
    return loads, hop


def _busiest(
    topo: Topology, loads: dict[LinkId, float]
) -> tuple[float, tuple[LinkId, float] | None]:
    """(the largest load / capacity, that link and its load), the first found on a tie."""
    transfer, worst = 0.0, None
    for link, load in loads.items():
        t = load / topo.capacity(link)
        if t > transfer:
            transfer, worst = t, (link, load)
    return transfer, worst


def _symmetric(topo: Topology, groups: tuple[tuple[int, ...], ...]) -> bool:
    """Every node holding group members holds the same local indices, in every subgroup.

    With numpy (a 6,144-rank group is checked per phase): the distinct devices,
    sorted, list each node's local indices in order, so the nodes agree exactly when
    each holds the same count and the (nodes x count) table of local indices has
    equal rows.
    """
    if len({len(sub) for sub in groups}) != 1:
        return False
    flat = np.fromiter(chain.from_iterable(groups), dtype=np.int64)
    # Distinct and sorted; with an index output, as np.unique without one imports
    # numpy.ma on first use (~11 ms a process, ``vectorized.FlowLoads.bottleneck``).
    devs = np.unique(flat, return_index=True)[0]
    if not devs.size:
        return False
    _, per_node = np.unique(devs // topo.dpn, return_counts=True)
    if np.any(per_node != per_node[0]):
        return False
    table = (devs % topo.dpn).reshape(-1, int(per_node[0]))
    return bool(np.all(table == table[0]))


@dataclass(frozen=True)
class _Peers:
    """A representative device's all-to-all peers, by where they sit relative to it."""

    d2d: int  # same package, over the die-to-die link
    intra: int  # same node, other package
    inter: int  # other node
    cross: int  # other node under another leaf (an oversubscribed spine)


def _peers_of(topo: Topology, local: int, sub: tuple[int, ...]) -> _Peers:
    """Peers of the device of local index ``local`` in subgroup ``sub``."""
    dpn = topo.dpn
    members = np.array(sub, dtype=np.int64)
    r = next(d for d in sub if d % dpn == local)
    others = members[members != r]
    same_node = others // dpn == r // dpn
    if topo.system.dies_per_package > 1 and topo.system.die_to_die is not None:
        same_pkg = others // topo.system.dies_per_package == topo.package_of(r)
    else:
        same_pkg = np.zeros_like(same_node)
    remote = others[~same_node]
    if topo.system.oversubscription > 1.0:
        cross = sum(1 for d in remote if topo.leaf_of(d) != topo.leaf_of(r))
    else:
        cross = 0
    return _Peers(
        d2d=int(np.sum(same_pkg & same_node)),
        intra=int(np.sum(same_node & ~same_pkg)),
        inter=len(remote),
        cross=cross,
    )


def _in_node_links(
    topo: Topology, b: float, peers: dict[int, _Peers]
) -> tuple[list[tuple[float, str]], float]:
    """(time, description) of the busiest die-to-die and switch-port links of each local
    index, and the largest hop latency among them."""
    candidates: list[tuple[float, str]] = []
    mesh = topo.system.intra_topology == "full_mesh"
    hop = 0.0
    for local, p in peers.items():
        if p.d2d:
            die_link = ("d2d", f"local {local}", "its die peer")
            candidates.append((b / topo.d2d_capacity(), describe_link(topo, die_link, b)))
            hop = max(hop, topo.class_latency(DIE_TO_DIE))
        # On a supernode a cross-node flow also crosses the device's server port.
        port_peers = p.intra + (p.inter if topo.shared_port and not mesh else 0)
        if port_peers:
            load = b if mesh else b * port_peers
            rep = f"local {local}"
            link = ("mesh", rep, "each peer") if mesh else ("up", f"{rep} (every node)")
            candidates.append((load / topo.intra_capacity(), describe_link(topo, link, load)))
            hop = max(hop, topo.class_latency(INTRA))
    return candidates, hop


def _scale_out_links(
    topo: Topology, b: float, peers: dict[int, _Peers], local_count: np.ndarray
) -> tuple[list[tuple[float, str]], float]:
    """(time, description) of each NIC's and each leaf uplink's load, and the hop
    latency. A NIC shared by several local indices carries the sum of theirs; a leaf's
    spine uplink carries the sum over every device on that leaf."""
    nic_load: dict[int, float] = defaultdict(float)
    leaf_load: dict[int, float] = defaultdict(float)
    rail_leaf = topo.system.inter_topology == "rail_optimized"
    hop = 0.0
    for local, p in peers.items():
        nic_load[topo.nic_index(local)] += b * p.inter
        if p.cross:
            leaf = topo.nic_index(local) if rail_leaf else 0
            per_device = b * p.cross
            leaf_load[leaf] += per_device * (local_count[local] if rail_leaf else 1)
        if p.inter:
            hop = max(hop, topo.class_latency(INTER))
    candidates: list[tuple[float, str]] = []
    for nic, load in nic_load.items():
        if load:
            link = ("nic_tx", "every node", nic)
            candidates.append((load / topo.nic_capacity(), describe_link(topo, link, load)))
    for leaf, load in leaf_load.items():
        candidates.append(
            (load / topo.spine_capacity(), describe_link(topo, ("spine_up", leaf), load))
        )
    return candidates, hop


def _uniform_a2a(topo: Topology, phase: Phase) -> PhaseCost:
    """Loads of a uniform all-to-all inside each subgroup, from one device per local index.

    For a representative device r of local index l we count its peers by where they
    sit (same package, same node, other node, other leaf). Its send-side loads are
    bytes x count; by the symmetry of a uniform all-to-all its receive side is equal.
    """
    b = phase.a2a_bytes
    all_devs = np.array([d for sub in phase.a2a_groups for d in sub], dtype=np.int64)
    dpn = topo.dpn
    local_count = np.bincount(all_devs % dpn, minlength=dpn)
    reps: dict[int, tuple[int, ...]] = {}
    for sub in phase.a2a_groups:
        for d in sub:
            reps.setdefault(d % dpn, sub)
    peers = {local: _peers_of(topo, local, sub) for local, sub in reps.items()}
    in_node, in_node_hop = _in_node_links(topo, b, peers)
    scale_out, scale_out_hop = _scale_out_links(topo, b, peers, local_count)
    candidates = in_node + scale_out
    hop = max(in_node_hop, scale_out_hop)
    by_class = {
        DIE_TO_DIE: sum(local_count[loc] * peers[loc].d2d * b for loc in reps),
        INTRA: sum(local_count[loc] * peers[loc].intra * b for loc in reps),
        INTER: sum(local_count[loc] * peers[loc].inter * b for loc in reps),
        SPINE: sum(local_count[loc] * peers[loc].cross * b for loc in reps),
    }
    transfer, bottleneck = max(candidates, default=(0.0, "none (no traffic)"))
    latency = phase_latency(topo, phase, hop) if candidates else 0.0
    return PhaseCost(
        phase.name,
        transfer + latency,
        transfer,
        latency,
        {k: float(v) for k, v in by_class.items() if v},
        bottleneck,
    )
