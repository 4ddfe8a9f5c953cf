"""The numpy pricing of listed flows equals the per-flow loop exactly (hypothesis).

``analytical._flows`` prices phases of many flows with ``vectorized.FlowLoads``;
``analytical._flows_listed`` is the reference loop. Every field of the PhaseCost
(times, per-class bytes, the bottleneck text) must be equal with ``==``, not close.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_network_fixtures import dual_die, mesh, oversubscribed, shared_nic, switch
from xpusim.hwprofiles import load_system
from xpusim.sim.ir import CollectiveKind
from xpusim.sim.network import analytical
from xpusim.sim.network.algorithms import _tree_edges, build, candidates
from xpusim.sim.network.phases import Phase
from xpusim.sim.network.topology import Topology


def _supernode(nodes: int):
    return replace(switch(nodes), inter_topology="supernode")


FACTORIES = [
    mesh,
    switch,
    shared_nic,
    dual_die,
    _supernode,
    lambda n: oversubscribed(max(2, n), "rail_optimized", 2.0),
    lambda n: oversubscribed(max(2, n), "fat_tree", 3.0),
    lambda n: replace(dual_die(n), inter_topology="supernode"),
]


def _fast(topo: Topology, phase: Phase):
    flows = phase.expand()
    assert len(flows) + len(phase.port_bytes) >= 1
    return analytical._flows_vectorized(topo, phase, flows)


@st.composite
def _phases(draw):
    system = draw(st.sampled_from(FACTORIES))(draw(st.integers(1, 4)))
    n_dev = system.num_devices
    devs = st.integers(0, n_dev - 1)
    # Equal byte counts make ties between links: the bottleneck must be the first
    # link the loop meets among the equally loaded ones.
    size = st.sampled_from([1.0, 4.0, 3e6, 1e-3]) | st.floats(1e-3, 1e9)
    flows = draw(st.lists(st.tuples(devs, devs, size), min_size=1, max_size=200))
    ports = draw(st.lists(st.tuples(devs, size), max_size=6))
    scale = draw(st.sampled_from([1.0, 0.7]))
    via_nic = draw(st.booleans())
    phase = Phase("p", draw(st.integers(1, 9)), tuple(flows), port_bytes=tuple(ports),
                  port_scale=scale, via_nic=via_nic)
    return Topology(system), phase


@settings(max_examples=300, deadline=None)
@given(_phases())
def test_vectorized_equals_loop_on_random_flows(case):
    topo, phase = case
    flows = phase.expand()
    if not flows and not phase.port_bytes:
        return
    assert _fast(topo, phase) == analytical._flows_listed(topo, phase, flows)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(FACTORIES),
    st.integers(1, 4),
    st.sampled_from(list(CollectiveKind)),
    st.data(),
)
def test_vectorized_equals_loop_on_collective_groups(factory, nodes, kind, data):
    """Every candidate algorithm's phases, on random subsets and strided groups."""
    system = factory(nodes)
    topo = Topology(system)
    n_dev = system.num_devices
    stride = data.draw(st.integers(1, max(1, n_dev // 2)))
    group = data.draw(
        st.sampled_from(
            [
                tuple(range(0, n_dev, stride)),
                tuple(sorted(data.draw(st.sets(st.integers(0, n_dev - 1), min_size=2)))),
            ]
        )
    )
    if len(group) < 2:
        return
    for name in candidates(kind, topo, group):
        for phase in build(kind, name, topo, group, data.draw(st.floats(1.0, 2.0**33))):
            flows = phase.expand()
            if flows or phase.port_bytes:
                assert _fast(topo, phase) == analytical._flows_listed(topo, phase, flows)


@pytest.mark.parametrize("algorithm", ["ring", "tree", "hierarchical"])
def test_vectorized_equals_loop_at_6144_ranks(algorithm):
    """The Pangu case: a 4-byte all-reduce over 768 Atlas 800T A2 nodes."""
    topo = Topology(load_system("atlas-800t-a2", nodes=768))
    group = tuple(range(6144))
    for phase in build(CollectiveKind.ALL_REDUCE, algorithm, topo, group, 4.0):
        flows = phase.expand()
        if flows:
            assert _fast(topo, phase) == analytical._flows_listed(topo, phase, flows)


def _tree_edges_recursive(members):
    """The recursive form ``algorithms._tree_edges`` replaced by a loop."""
    edges = []

    def subtree(lo, hi, parent):
        if lo >= hi:
            return
        mid = (lo + hi) // 2
        if parent is not None:
            edges.append((members[mid], parent))
        subtree(lo, mid, members[mid])
        subtree(mid + 1, hi, members[mid])

    subtree(0, len(members), None)
    return edges


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 100, 1000, 6144])
def test_tree_edges_in_the_recursive_order(n):
    members = list(range(5, 5 + 2 * n, 2))
    assert list(_tree_edges(members)) == _tree_edges_recursive(members)
    # Kept per member tuple: asked again, and for the shifted order of the second tree.
    assert list(_tree_edges(members)) == _tree_edges_recursive(members)
    shifted = members[1:] + members[:1]
    assert list(_tree_edges(shifted)) == _tree_edges_recursive(shifted)


def _symmetric_reference(topo, groups):
    """The set-based check ``analytical._symmetric`` replaced with numpy."""
    locals_by_node = defaultdict(set)
    for sub in groups:
        for d in sub:
            locals_by_node[topo.node_of(d)].add(topo.local_of(d))
    layouts = {frozenset(v) for v in locals_by_node.values()}
    return len(layouts) == 1 and len({len(sub) for sub in groups}) == 1


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_symmetric_check_equals_set_reference(data):
    topo = Topology(mesh(4))
    nodes = data.draw(st.sets(st.integers(0, 3), min_size=1))
    locals_ = data.draw(st.sets(st.integers(0, 7), min_size=1))
    devs = [n * 8 + j for n in sorted(nodes) for j in sorted(locals_)]
    extra = data.draw(st.lists(st.integers(0, 31), max_size=3))
    devs = data.draw(st.permutations(devs + extra))
    parts = data.draw(st.integers(1, 3))
    groups = tuple(tuple(devs[i::parts]) for i in range(parts))
    assert analytical._symmetric(topo, groups) == _symmetric_reference(topo, groups)
