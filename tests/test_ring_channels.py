"""NCCL-style ring channels spread over the NICs (sim.network.algorithms._ring_orders).

Hand check: a ring all-gather of S bytes (output) over 64 ranks on 8 DGX A100 nodes.
NCCL runs one ring per channel, each entering and leaving a node on a different rail,
so each NIC sends (n-1)/n x S / k, not (n-1)/n x S (the single device-order ring).
"""

from __future__ import annotations

from xpusim.hwprofiles import load_system
from xpusim.sim.ir import CollectiveKind
from xpusim.sim.network.algorithms import _ring_orders, build
from xpusim.sim.network.topology import Topology


def test_ring_orders_rotate_per_rail() -> None:
    topo = Topology(load_system("dgx-a100", nodes=2))
    rings = _ring_orders(topo, list(range(16)))
    assert len(rings) == 8
    assert rings[0] == list(range(16))
    assert rings[1] == [1, 2, 3, 4, 5, 6, 7, 0, 9, 10, 11, 12, 13, 14, 15, 8]
    # ring j crosses nodes from local device j-1 to local device j: one rail each
    crossings = {(r[7] % 8, r[8] % 8) for r in rings}
    assert crossings == {((j - 1) % 8, j) for j in range(8)}


def test_single_node_and_one_per_node_keep_one_ring() -> None:
    topo = Topology(load_system("dgx-a100", nodes=4))
    assert _ring_orders(topo, list(range(8))) == [list(range(8))]
    rail = [0, 8, 16, 24]
    assert _ring_orders(topo, rail) == [rail]


def test_inter_node_bytes_per_nic_by_hand() -> None:
    topo = Topology(load_system("dgx-a100", nodes=8))
    s = 64e9
    (phase,) = build(CollectiveKind.ALL_GATHER, "ring", topo, tuple(range(64)), s)
    out: dict[int, float] = {}
    for src, dst, b in phase.flows:
        if topo.node_of(src) != topo.node_of(dst):
            out[src] = out.get(src, 0.0) + b
    # 8 senders per node, one per rail, each (63/64) x 64e9 / 8 = 7.875e9 bytes
    assert len(out) == 64
    for b in out.values():
        assert abs(b - 63 / 64 * s / 8) < 1.0
    assert phase.rounds == 63
