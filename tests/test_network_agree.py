"""The analytical and flow-level backends agree within 5% on groups of up to 64 ranks."""

from __future__ import annotations

import numpy as np
import pytest
from test_network_fixtures import dual_die, mesh, oversubscribed, shared_nic, switch
from xpusim.sim.errors import InputError
from xpusim.sim.network import cost_collective, cost_network
from xpusim.sim.network.algorithms import candidates
from xpusim.sim.network.ep import DISPATCH_MODES, EPConfig, simulate_ep
from xpusim.sim.network.flow import max_min_rates
from xpusim.sim.network.phases import Phase
from xpusim.sim.network.topology import Topology

CASES = [
    ("full mesh, 1 node", lambda: mesh(1), 8),
    ("full mesh, 2 nodes", lambda: mesh(2), 16),
    ("NVSwitch, 1 node", lambda: switch(1), 8),
    ("NVSwitch, 4 nodes on rails", lambda: switch(4), 32),
    ("full mesh, 8 nodes on rails", lambda: mesh(8), 64),
    ("shared NICs", lambda: shared_nic(2), 16),
    ("oversubscribed rails", lambda: oversubscribed(4), 32),
    ("oversubscribed fat tree", lambda: oversubscribed(4, "fat_tree"), 32),
    ("dual-die packages", lambda: dual_die(2), 32),
    ("ragged group", lambda: mesh(2), 12),
]
KINDS = ["all-reduce", "all-gather", "reduce-scatter", "all-to-all", "broadcast", "send-recv"]


@pytest.mark.parametrize("name,factory,n", CASES, ids=[c[0] for c in CASES])
def test_backends_agree_on_collectives(name, factory, n):
    system = factory()
    group = tuple(range(n))
    for kind in KINDS:
        for algo in candidates(kind, Topology(system), group):
            for size in (4e3, 1e6, 2**30):
                a = cost_collective(system, kind, group, size, algo, "analytical")
                f = cost_collective(system, kind, group, size, algo, "flow")
                assert f.time_s == pytest.approx(a.time_s, rel=0.05), (kind, algo, size)


@pytest.mark.parametrize("mode", DISPATCH_MODES)
@pytest.mark.parametrize("routing", ["uniform", "zipf:1.0"])
def test_backends_agree_on_ep_all_to_allv(mode, routing):
    for system in (mesh(4), switch(4), shared_nic(4)):
        cfg = EPConfig(
            hidden=4096,
            top_k=8,
            experts=256,
            ep=32,
            tokens_per_device=1024,
            dispatch=mode,
            routing=routing,
        )
        a = simulate_ep(cfg, system, "analytical")
        f = simulate_ep(cfg, system, "flow")
        assert f.dispatch_time_s == pytest.approx(a.dispatch_time_s, rel=0.05)
        assert f.inter_node_bytes == pytest.approx(a.inter_node_bytes, rel=1e-9)


def test_max_min_rates_textbook_example():
    # link 0 (cap 1) carries flows A, B; link 1 (cap 2) carries B, C.
    # Max-min: A = B = 0.5 (link 0 full), then C takes the rest of link 1 = 1.5.
    inc = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    rates = max_min_rates(inc, np.array([1.0, 2.0]), np.ones(3, dtype=bool))
    assert rates == pytest.approx([0.5, 0.5, 1.5])


def test_flow_backend_is_slower_or_equal_with_unequal_flows():
    # Unequal flows sharing ports: max-min never beats the busiest link's load / capacity.
    system = switch(1)
    phase = Phase("uneven", 1, flows=((0, 1, 1e9), (0, 2, 3e9), (4, 2, 1e9)))
    a = cost_network(system, [phase], "analytical")
    f = cost_network(system, [phase], "flow")
    assert f.time_s >= a.time_s * (1 - 1e-9)
    assert f.time_s == pytest.approx(a.time_s, rel=0.05)


def test_flow_backend_refuses_groups_it_cannot_list():
    with pytest.raises(InputError, match="backend analytical"):
        cost_collective(mesh(64), "all-to-all", range(512), 2**30, "pairwise", "flow")
