"""NCCL's double binary tree between nodes (sim/network/trees.py), checked by hand
against the illustration in NVIDIA/nccl src/graph/trees.cc."""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.network import cost_collective
from xpusim.sim.network.trees import btree, dtree_max_sends

MIB = 1 << 20


def test_btree_matches_nccls_illustration():
    # 0---8; 8 -> 4, 12; 4 -> 2, 6; 12 -> 10, 13 (14 ranks: 14 is out of bounds).
    assert btree(14, 0) == (-1, -1, 8)
    assert btree(14, 8) == (0, 4, 12)
    assert btree(14, 12) == (8, 10, 13)
    assert btree(14, 13) == (12, -1, -1)
    assert btree(14, 1) == (2, -1, -1)
    # Four nodes: 0 -> 2 -> {1, 3}.
    assert [btree(4, r) for r in range(4)] == [(-1, -1, 2), (2, -1, -1), (0, 1, 3), (2, -1, -1)]


def test_busiest_node_sends_2s_from_four_nodes_on():
    # Half-buffers sent by the busiest node over both trees: N = 2: 1 + 1 (S, as a ring);
    # N = 3: 2 + 1; N >= 4: an inner node with two children (3) that is a leaf in the
    # mirror tree (1) = 4 half-buffers = 2S.
    assert [dtree_max_sends(n) for n in (1, 2, 3, 4, 5, 8, 16, 1024)] == [0, 2, 3, 4, 4, 4, 4, 4]


def test_four_node_tree_loads_each_nic_with_2s_over_k():
    # 4 x 8 B200, tree Simple: each rail carries 4 x (S/2) / 8 = S/4 each way; the NIC
    # (400 Gb/s x 0.9 = 45 GB/s) is the busiest link, so transfer = S/4 / 45 GB/s / 0.92
    # (NCCL's tree fraction; at 1 GiB the medium-size tree correction no longer applies).
    p6 = replace(load_system("aws-p6-b200"), nodes=4)
    s = 1024 * MIB
    res = cost_collective(p6, "all-reduce", range(32), s, algorithm="tree", protocol="Simple")
    transfer = sum(p["transfer_s"] for p in res.phases)
    assert transfer == pytest.approx(s / 4 / 45e9 / 0.92, rel=1e-9)
    # Two nodes: S/8 per rail, as before.
    two = replace(load_system("aws-p6-b200"), nodes=2)
    res = cost_collective(two, "all-reduce", range(16), s, algorithm="tree", protocol="Simple")
    transfer = sum(p["transfer_s"] for p in res.phases)
    assert transfer == pytest.approx(s / 8 / 45e9 / 0.92, rel=1e-9)
