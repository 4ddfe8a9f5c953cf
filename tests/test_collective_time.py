"""``network.collective_time`` (the engines' collective pricer: the time alone) is
``cost_collective(...).time_s`` bit for bit: NCCL on NVSwitch (with NVLS), on A100 (the
all-gather's read-mode copy), on PCIe with a PCIe tree, and across nodes (rails, NVLS
and CollNet trees); HCCL's full mesh (direct and symmetric all-to-alls), a die-to-die
package, an oversubscribed fabric; every kind, auto and fixed algorithms, sizes from a
byte to a GiB, groups from 2 ranks to 1,024 (numpy-priced phases). The choice prices
every candidate from ``analytical.phase_times`` and ``_protocol_parts`` instead of the
full report, so any drift between the two paths shows here."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.ir import Collective, CollectiveKind
from xpusim.sim.network import collective_time, comm_time_fn, cost_collective
from xpusim.sim.network.algorithms import build, candidates
from xpusim.sim.network.analytical import cost_phase, phase_times
from xpusim.sim.network.topology import Topology

SIZES = (1, 96, 4096, 123_457.5, 2**20, 3 * 2**24 + 7, 2**30)
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "broadcast", "all-to-all", "send-recv")
CASES = [  # (system, nodes, group)
    ("hgx-h200", None, (0, 1)),
    ("dgx-h100", None, tuple(range(8))),
    ("dgx-a100", None, tuple(range(8))),
    ("dgx-a100", None, (2, 3, 6, 7)),
    ("pcie-l40s", None, (0, 1, 2, 3)),
    ("pcie-rtx4090", None, (0, 1)),
    ("atlas-800t-a2", None, tuple(range(8))),
    ("atlas-800t-a3", None, tuple(range(16))),
    ("dgx-h100", 4, tuple(range(32))),
    ("dgx-h100", 2, (0, 1, 8, 9)),
    ("dgx-a100", 3, (0, 8, 16)),
    ("atlas-800t-a2", 4, tuple(range(32))),
    ("gb200-nvl72", None, tuple(range(72))),
    ("dgx-h100", 128, tuple(range(1024))),
]


@pytest.mark.parametrize("system_name,nodes,group", CASES,
                         ids=[f"{c[0]}-{c[1]}-{len(c[2])}" for c in CASES])
def test_collective_time_equals_cost_collective(system_name, nodes, group):
    system = load_system(system_name, nodes=nodes)
    for kind in KINDS:
        if kind == "send-recv" and len(group) > 8:
            continue
        for nbytes in SIZES:
            full = cost_collective(system, kind, group, nbytes).time_s
            assert collective_time(system, kind, group, nbytes) == full, (kind, nbytes)


@pytest.mark.parametrize("system_name,nodes,group", CASES[:12],
                         ids=[f"{c[0]}-{c[1]}-{len(c[2])}" for c in CASES[:12]])
def test_fixed_algorithms_and_phase_terms(system_name, nodes, group):
    """Each candidate algorithm forced, and each phase's (transfer, latency) terms
    against the full phase cost."""
    system = load_system(system_name, nodes=nodes)
    topo = Topology(system)
    for kind in ("all-reduce", "all-gather", "all-to-all"):
        for name in candidates(CollectiveKind(kind), topo, group):
            for nbytes in (96, 2**20, 2**30):
                full = cost_collective(system, kind, group, nbytes, algorithm=name).time_s
                assert collective_time(system, kind, group, nbytes, name) == full
                for phase in build(CollectiveKind(kind), name, topo, group, nbytes):
                    cost = cost_phase(topo, phase)
                    assert phase_times(topo, phase) == (cost.transfer_s, cost.latency_s)


def test_trivial_groups_and_the_engines_pricer():
    system = load_system("dgx-h100")
    assert collective_time(system, "all-reduce", (3,), 2**20) == 0.0
    assert collective_time(system, "all-reduce", (0, 1), 0) == 0.0
    fn = comm_time_fn(system)
    coll = Collective("ar", CollectiveKind.ALL_REDUCE, tuple(range(8)), 3 * 2**20)
    assert fn(coll) == cost_collective(system, "all-reduce", range(8), 3 * 2**20).time_s
