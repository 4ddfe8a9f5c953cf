"""Flow-level discrete-event backend: every flow on its links, max-min fair sharing.

Each phase starts all its flows together. Rates come from progressive filling:
raise every unfrozen flow's rate equally until some link is full, freeze the flows
on full links, repeat (the max-min fair allocation). The next event is the first
flow to finish; the clock advances to it, finished flows leave, and the rates are
solved again. A phase ends when its last flow ends, then pays the same per-round
latency as the analytical backend. Meant for groups up to ~64 ranks (it lists
every flow); the analytical backend must agree with it there (tests/test_network_agree.py).
"""

from __future__ import annotations

import numpy as np
from xpusim.sim.errors import InputError
from xpusim.sim.network.analytical import describe_link, phase_latency
from xpusim.sim.network.phases import NetworkCost, Phase, PhaseCost
from xpusim.sim.network.topology import LinkId, Topology

# The incidence matrix is flows x links booleans; beyond this many cells (~50 MB) the
# analytical backend is the tool.
MAX_CELLS = 50_000_000
_EPS = 1e-12


def cost_phases(topo: Topology, phases: list[Phase]) -> NetworkCost:
    costs = [simulate_phase(topo, p) for p in phases]
    return NetworkCost(sum(c.time_s for c in costs), costs)


def max_min_rates(incidence: np.ndarray, capacity: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Max-min fair rates of the ``active`` flows (rows of ``incidence``) on the links."""
    rates = np.zeros(incidence.shape[0])
    frozen = ~active
    remaining = capacity.astype(float).copy()
    while not frozen.all():
        users = incidence[~frozen].sum(axis=0)  # unfrozen flows per link
        used = users > 0
        share = np.full(len(capacity), np.inf)
        share[used] = remaining[used] / users[used]
        delta = share.min()
        rates[~frozen] += delta
        remaining -= delta * users
        full = used & (remaining <= _EPS * capacity)
        if not full.any():  # numerical guard: freeze the tightest link
            full = share == delta
        frozen |= incidence[:, full].any(axis=1)
    return rates


def _too_large(topo: Topology, phase: Phase) -> InputError | None:
    """The MAX_CELLS verdict from counts alone, before the flows are listed (an
    all-to-all lists n^2 flows: 10^10 at 100,000 ranks, which would never finish).

    Every flow leaves its source on a link of its own (die-to-die, mesh, switch port)
    or on its node's NIC, which at most ``devices_per_nic`` devices share; so the
    phase uses at least ceil(sources / devices_per_nic) links and the incidence matrix
    has at least flows x that many cells. Rejecting on this lower bound rejects only
    phases that the exact check after listing would reject too.
    """
    listed = [f for f in phase.flows if f[0] != f[1] and f[2] > 0]
    n_flows = len(listed)
    sources = {f[0] for f in listed}
    if phase.a2a_bytes > 0:
        n_flows += sum(len(g) * (len(g) - 1) for g in phase.a2a_groups)
        sources.update(d for g in phase.a2a_groups if len(g) > 1 for d in g)
    min_links = -(-len(sources) // topo.devices_per_nic())
    if n_flows * min_links <= MAX_CELLS:
        return None
    return InputError(
        f"phase '{phase.name}' has {n_flows:,} flows on at least {min_links:,} links, too "
        "many for the flow backend (meant for groups up to ~64 ranks): use --backend "
        "analytical"
    )


def simulate_phase(topo: Topology, phase: Phase) -> PhaseCost:
    early = _too_large(topo, phase)
    if early is not None:
        raise early
    flows = phase.expand()
    if not flows and not phase.port_bytes:
        return PhaseCost(phase.name, 0.0, 0.0, 0.0, {}, "none (no traffic)")
    links: dict[LinkId, int] = {}
    paths: list[list[int]] = []
    by_class: dict[str, float] = {}
    hop = 0.0
    for src, dst, nbytes in flows:
        path = topo.path(src, dst, phase.via_nic)
        paths.append([links.setdefault(link, len(links)) for link in path])
        for cls in {topo.link_class(link) for link in path}:
            by_class[cls] = by_class.get(cls, 0.0) + nbytes
        hop = max(hop, topo.path_latency(src, dst, phase.via_nic))
    # In-switch traffic: one flow up and one down each device's port, sized so that
    # the port's capacity prices it at the phase's port_scale.
    for dev, nbytes in phase.port_bytes:
        for link in (("up", dev), ("down", dev)):
            flows.append((dev, dev, nbytes / phase.port_scale))
            paths.append([links.setdefault(link, len(links))])
        by_class["intra_node"] = by_class.get("intra_node", 0.0) + nbytes
        hop = max(hop, topo.class_latency("intra_node"))
    if len(flows) * len(links) > MAX_CELLS:
        raise InputError(
            f"phase '{phase.name}' has {len(flows)} flows on {len(links)} links, too many "
            "for the flow backend (meant for groups up to ~64 ranks): use --backend analytical"
        )
    incidence = np.zeros((len(flows), len(links)), dtype=bool)
    for i, link_indices in enumerate(paths):
        incidence[i, link_indices] = True
    capacity = np.array([topo.capacity(link) for link in links])
    sizes = np.array([f[2] for f in flows], dtype=float)
    remaining = sizes.copy()
    active = remaining > 0
    now = 0.0
    while active.any():  # one event per batch of finishing flows
        rates = max_min_rates(incidence, capacity, active)
        dt = np.min(remaining[active] / rates[active])
        now += dt
        remaining[active] -= rates[active] * dt
        active &= remaining > 1e-9 * sizes
    # Report the link with the most bytes per unit capacity, as the analytical backend does.
    ids = list(links)
    load = incidence.T.astype(float) @ sizes
    busiest = int(np.argmax(load / capacity))
    latency = phase_latency(topo, phase, hop)
    return PhaseCost(
        phase.name,
        now + latency,
        now,
        latency,
        by_class,
        describe_link(topo, ids[busiest], float(load[busiest])),
    )
