"""``CollectivePricer`` (the engines' collective pricer, ``comm_time_fn``) against
``collective_time``: the same float for every kind, group, size and algorithm, on NCCL and
other libraries, one node and several, and the same errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.errors import InputError
from xpusim.sim.ir import Collective, CollectiveKind
from xpusim.sim.network import collective_time, comm_time_fn
from xpusim.sim.network.pricer import CollectivePricer

# Sizes a serving run meets (a TP all-reduce of B x hidden x 2 bytes) and around the
# protocol and tree-correction thresholds, plus odd and tiny ones.
SIZES = [0.0, 1.0, 63.0, 64.0, 1000.0, 4096.0, 8192.0 * 3, 65536.0, 16384.0 * 129,
         1.5e6, 2**22 + 7.0, 3e7, 2**30]
KINDS = ["all-reduce", "all-gather", "reduce-scatter", "all-to-all", "broadcast", "send-recv"]


@pytest.mark.parametrize("name, group", [
    ("dgx-h100", tuple(range(8))),
    ("dgx-h100", (0, 1)),
    ("dgx-a100", (0, 2, 4, 6)),
    ("pcie-l40s", tuple(range(4))),
    ("atlas-800t-a2", tuple(range(8))),
    ("cloudmatrix-384", tuple(range(16))),
])
def test_pricer_equals_collective_time(name, group):
    system = load_system(name)
    pricer = CollectivePricer(system)
    for kind in KINDS:
        g = group[:2] if kind == "send-recv" else group
        for size in SIZES:
            # Twice: the first call keeps the group's checks and the phases' load plans.
            for _ in range(2):
                assert pricer.time(kind, g, size) == collective_time(system, kind, g, size)


def test_pricer_across_nodes_and_named_algorithms():
    system = load_system("dgx-h100", nodes=2)
    pricer = CollectivePricer(system)
    group = tuple(range(16))
    for size in SIZES:
        for algorithm in ("auto", "ring", "tree"):
            assert pricer.time("all-reduce", group, size, algorithm) == collective_time(
                system, "all-reduce", group, size, algorithm)
        # Uneven members across nodes: no hierarchical candidate, listed flows.
        odd = (0, 1, 2, 9)
        assert pricer.time("all-gather", odd, size) == collective_time(
            system, "all-gather", odd, size)


def test_comm_time_fn_uses_the_pricer():
    system = load_system("dgx-h100")
    comm = comm_time_fn(system)
    group = tuple(range(8))
    for size in SIZES:
        coll = Collective("ar", CollectiveKind.ALL_REDUCE, group, size)
        assert comm(coll) == collective_time(system, "all-reduce", group, size)


def test_pricer_errors_as_collective_time():
    system = load_system("dgx-h100")
    pricer = CollectivePricer(system)
    with pytest.raises(InputError, match="outside"):
        pricer.time("all-reduce", (0, 99), 1e6)
    with pytest.raises(InputError, match="bytes must be >= 0"):
        pricer.time("all-reduce", (0, 1), -1.0)
    with pytest.raises(InputError, match="unknown collective"):
        pricer.time("all_reduce", (0, 1), 1e6)
    with pytest.raises(InputError, match="does not apply"):
        pricer.time("all-reduce", (0, 1), 1e6, "pairwise")


@pytest.mark.parametrize("name, nodes, oversubscription", [
    ("atlas-800t-a2", 8, None),
    ("atlas-800t-a2", 6, 2.0),  # rail-optimised spine
    ("atlas-800t-a3", 5, None),  # two dies per package (SIO)
    ("ascend-950pr-8", 5, 3.0),  # fat-tree spine: a leaf per node
    ("dgx-h100", 6, None),
    ("cloudmatrix-384", 4, None),
    ("pcie-l40s", 3, None),
])
def test_groups_on_later_nodes_price_as_collective_time(name, nodes, oversubscription):
    """The pricer prices a group moved down to node 0 (``_based``): the same floats as
    ``collective_time`` of the group where it is, for groups of every shape."""
    system = load_system(name, nodes=nodes)
    if oversubscription:
        system = replace(system, oversubscription=oversubscription)
    dpn = system.devices_per_node
    pricer = CollectivePricer(system)
    shapes = [tuple(range(dpn)), (0, 1), (0, 2 * dpn), tuple(range(0, 2 * dpn, 2)),
              tuple(range(2 * dpn)), (1, dpn + 1, 2 * dpn + 1), (0, 1, dpn + 3)]
    for shape in shapes:
        for first in range(0, (nodes - 2) * dpn, dpn):
            group = tuple(first + d for d in shape)
            for kind in KINDS:
                g = group[:2] if kind == "send-recv" else group
                for size in (64.0, 1.5e6, 3e7):
                    assert pricer.time(kind, g, size) == collective_time(system, kind, g, size)
