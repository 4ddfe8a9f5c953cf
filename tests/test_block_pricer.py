"""``block_pricer.block_times`` (a block of sizes priced at once) against
``CollectivePricer.time`` one size at a time: the same float (``==``) at every size, on
NCCL systems of one node and two, every kind it covers, with the read-mode copy (A100
all-gather), NVLS (H100) and trees' medium-size correction; None where it does not cover
the request."""

from __future__ import annotations

import numpy as np
import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.network.block_pricer import block_times
from xpusim.sim.network.pricer import CollectivePricer, comm_time_fn

# (first size, step): a serving run's TP all-reduce buffers (B x hidden x 2 bytes), tiny
# and odd steps across the protocol thresholds, large buffers.
SERIES = [(8192.0, 8192.0), (16384.0, 16384.0), (1.0, 3.0), (20480.0, 20480.0), (5e5, 7e5)]
KINDS = ["all-reduce", "all-gather", "reduce-scatter", "broadcast"]


@pytest.mark.parametrize("name, nodes, group", [
    ("dgx-h100", 1, tuple(range(8))),
    ("dgx-h100", 1, (0, 1)),
    ("dgx-a100", 1, (0, 2, 4, 6)),
    ("pcie-l40s", 1, tuple(range(4))),
    ("dgx-h100", 2, (0, 1, 2, 3, 8, 9, 10, 11)),  # rings per rail, two-level trees, NVLS tree
    ("dgx-h100", 2, (0, 8)),
])
def test_block_equals_per_size(name, nodes, group):
    system = load_system(name, nodes=nodes)
    for kind in KINDS:
        for base, step in SERIES:
            for k in (0, 3, 15):  # blocks of 256 batch sizes, as batched_step's
                bs = np.arange(k * 256 + 1, (k + 1) * 256 + 1, dtype=np.float64)
                sizes = base + (bs - 1) * step
                block = block_times(CollectivePricer(system), kind, group, sizes)
                assert block is not None
                pricer = CollectivePricer(system)
                assert block.tolist() == [pricer.time(kind, group, s) for s in sizes.tolist()]


def test_uncovered_requests():
    sizes = np.array([1024.0, 2048.0])
    h100 = CollectivePricer(load_system("dgx-h100"))
    assert block_times(h100, "all-to-all", tuple(range(8)), sizes) is None
    assert block_times(h100, "send-recv", (0, 1), sizes) is None
    assert block_times(h100, "all-reduce", tuple(range(8)), sizes, "ring") is None
    assert block_times(h100, "all-reduce", tuple(range(8)), np.array([0.0, 8.0])) is None
    # 16 ranks on 2 nodes: 8 rings of 16 flows, priced by ``vectorized`` (not the loop).
    two = CollectivePricer(load_system("dgx-h100", nodes=2))
    assert block_times(two, "all-reduce", tuple(range(16)), sizes) is None
    hccl = CollectivePricer(load_system("atlas-800t-a2"))
    assert block_times(hccl, "all-reduce", tuple(range(8)), sizes) is None


def test_comm_time_fn_exposes_its_pricer():
    comm = comm_time_fn(load_system("dgx-h100"))
    assert isinstance(comm.pricer, CollectivePricer)
