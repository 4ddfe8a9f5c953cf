"""PCIe servers without NVLink: NCCL's transport per GPU pair (sim/network/pcie.py).

Hand-computed values: PCIe 4.0 x16 = 31.5 GB/s one way; SHM receive = 31.5 x 0.461 =
14.5215 GB/s; a P2P flow across sockets = 31.5 x 0.75 x 0.851 = 20.105 GB/s.
"""

from __future__ import annotations

import dataclasses

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.network import cost_collective
from xpusim.sim.network.pcie import path_type, uses_p2p
from xpusim.sim.network.topology import Topology

MIB = 1024**2
SHM_RX = 31.5e9 * 0.461
XSOCK = 31.5e9 * 0.75 * 0.851


def test_path_types_of_the_l40s_tree():
    tree = load_system("pcie-l40s").pcie_tree
    assert tree is not None
    assert path_type(tree, 0, 1, 8) == "PIX"  # same switch
    assert path_type(tree, 1, 2, 8) == "PHB"  # other switch, same socket
    assert path_type(tree, 3, 4, 8) == "SYS"  # across the socket link
    # NCCL_P2P_LEVEL = PXB: P2P inside a switch only, SHM further apart.
    assert uses_p2p(tree, 0, 1, 8)
    assert not uses_p2p(tree, 1, 2, 8)
    assert not uses_p2p(tree, 7, 0, 8)


def test_geforce_without_p2p_uses_shm_even_at_level_sys():
    tree = load_system("pcie-rtx4090").pcie_tree
    assert tree is not None and tree.p2p_level == "SYS"
    assert path_type(tree, 0, 1, 8) == "PHB"  # devices_per_switch = 1: no switch
    assert not any(uses_p2p(tree, a, b, 8) for a in range(8) for b in range(8) if a != b)


def test_paths_and_capacities():
    topo = Topology(load_system("pcie-l40s"))
    assert topo.path(0, 1) == (("up", 0), ("down", 1))
    assert topo.path(1, 2) == (("up", 1), ("down", 2), ("shm_rx", 2))
    assert topo.capacity(("shm_rx", 2)) == pytest.approx(SHM_RX, rel=1e-12)
    p2p = Topology(load_system("pcie-rtx4090-p2p"))
    assert p2p.path(1, 2) == (("up", 1), ("down", 2))  # same socket: nothing extra
    assert p2p.path(3, 4) == (("up", 3), ("down", 4), ("xsock", 3, 4))
    assert p2p.capacity(("xsock", 3, 4)) == pytest.approx(XSOCK, rel=1e-12)


def test_no_tree_keeps_the_non_blocking_switch():
    system = dataclasses.replace(load_system("pcie-l40s"), pcie_tree=None)
    assert Topology(system).path(3, 4) == (("up", 3), ("down", 4))


def _ring_transfer(name: str, nbytes: float, ranks: int = 8) -> float:
    r = cost_collective(
        load_system(name),
        "all-reduce",
        list(range(ranks)),
        nbytes,
        algorithm="ring",
        protocol="Simple",
    )
    return r.as_dict()["phases"][0]["transfer_s"]


def test_ring_all_reduce_is_bound_by_the_slowest_transport():
    s = 128 * MIB
    ring_bytes = 2 * 7 / 8 * s  # what every ring edge carries
    # L40S: four SHM edges between switches -> the SHM receive sets the pace.
    assert _ring_transfer("pcie-l40s", s) == pytest.approx(ring_bytes / SHM_RX, rel=1e-9)
    # RTX 4090 with P2P: two flows cross the socket link at 0.851 of the P2P rate.
    assert _ring_transfer("pcie-rtx4090-p2p", s) == pytest.approx(ring_bytes / XSOCK, rel=1e-9)
    # Two L40S under one switch: P2P, the port at 31.5 x 0.75 (ring bytes 2 x 1/2 x S).
    assert _ring_transfer("pcie-l40s", s, ranks=2) == pytest.approx(s / (31.5e9 * 0.75), rel=1e-9)


def test_shm_receive_is_shared_by_every_shm_flow_into_a_device():
    # All-to-all inside one socket of the L40S server (devices 0-3): device 2 receives
    # S/4 from each of 0, 1 (SHM, other switch) and 3 (P2P, same switch): 2 x S/4 on
    # its SHM receive, 3 x S/4 on its port.
    s = 64 * MIB
    r = cost_collective(load_system("pcie-l40s"), "all-to-all", [0, 1, 2, 3], s)
    shm = 2 * s / 4 / SHM_RX
    port = 3 * s / 4 / (31.5e9 * 0.75)
    assert r.as_dict()["phases"][0]["transfer_s"] == pytest.approx(max(shm, port), rel=1e-9)
