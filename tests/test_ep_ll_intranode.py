"""Low-latency EP: same-node copies NIC to NIC (``nic``) or over the server fabric
(``fabric``), hand-computed on HGX H800 (docs/ep.md, "Same-node low-latency copies")."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_network_fixtures import switch
from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import Link
from xpusim.sim.api.ep import ep
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.network.ep import EPConfig, simulate_ep, system_for_ep

# HGX H800 (hwprofiles): 400G NIC per GPU at inter-node efficiency 0.9, NVSwitch port
# 200 GB/s per direction at intra-node efficiency 0.824; NIC and NVLink hop latency 1 us
# each, 2 us step overhead.
NIC = 400e9 / 8 * 0.9
PORT = 200e9 * 0.824
STEP = 1e-6 + 2e-6
# DeepSeek-V3 decode: 128 tokens, hidden 7168, top-8 of 256 experts, FP8 dispatch. A
# dispatch message is 16 + 7168 + 56 x 4 = 7408 B; the combine's 7392 B.
MSG, BACK = 7408, 7392


def _ll(ep_size: int, path: str, dtype_bytes: float = 1.0) -> EPConfig:
    return EPConfig(7168, 8, 256, ep_size, 128, dtype_bytes=dtype_bytes,
                    dispatch="low-latency", ll_intranode=path)


def _h800(ep_size: int):
    return system_for_ep(load_system("hgx-h800"), ep_size, None)[0]


def test_two_nodes_nic_vs_fabric_by_hand():
    """EP16 on 2 nodes: 16 experts per GPU, so 128 x 8 x 16/256 = 64 copies to
    each of 15 peers (7 in the node, 8 across). ``nic``: all 15 leave through the GPU's
    NIC. ``fabric``: the 8 cross-node ones take the NIC while the 7 same-node ones take
    the NVSwitch port at the same time; the NIC is the slower (8 x 64 x 7408 B / 45 GB/s
    = 84 us against 7 x 64 x 7408 B / 164.8 GB/s = 20 us). One step, NIC latency, either
    way (a copy leaves the node)."""
    system = _h800(16)
    per_peer = 64 * MSG
    nic = simulate_ep(_ll(16, "nic"), system)
    fab = simulate_ep(_ll(16, "fabric"), system)
    assert nic.dispatch_time_s == pytest.approx(15 * per_peer / NIC + STEP, rel=1e-12)
    assert fab.dispatch_time_s == pytest.approx(8 * per_peer / NIC + STEP, rel=1e-12)
    assert 7 * per_peer / PORT < 8 * per_peer / NIC  # why the NIC sets the fabric step
    # Bytes: NIC-to-NIC puts every copy on the NICs; fabric only the cross-node ones.
    assert nic.inter_node_bytes == pytest.approx(16 * 15 * per_peer)
    assert nic.intra_node_bytes == 0.0
    assert fab.inter_node_bytes == pytest.approx(16 * 8 * per_peer)
    assert fab.intra_node_bytes == pytest.approx(16 * 7 * per_peer)
    # The combine sends the copies back the same way, then the same local reduce.
    assert fab.local_pass_s == nic.local_pass_s
    back = 64 * BACK
    want = 8 * back / NIC + STEP + fab.local_pass_s[1]
    assert fab.combine_time_s == pytest.approx(want, rel=1e-12)
    # The benchmark's byte count is the same: a logical count of every copy.
    assert fab.deepep_bytes_per_rank == nic.deepep_bytes_per_rank
    assert fab.as_dict()["ll_intranode"] == "fabric"


def test_one_node_fabric_is_the_nvswitch_port_by_hand():
    """EP8 in one node: every copy is a store over NVLink, 128 x 8 x 32/256 = 128 copies
    to each of 7 peers through the port at 164.8 GB/s, NVLink hop latency; nothing on
    the NICs."""
    r = simulate_ep(_ll(8, "fabric"), _h800(8))
    assert r.dispatch_time_s == pytest.approx(7 * 128 * MSG / PORT + STEP, rel=1e-12)
    assert r.inter_node_bytes == 0.0
    assert r.intra_node_bytes == pytest.approx(8 * 7 * 128 * MSG)


@pytest.mark.parametrize("nodes", [1, 2])
def test_more_fabric_bandwidth_never_slows_fabric_copies(nodes):
    times = []
    for bw in (25e9, 50e9, 100e9, 200e9, 450e9, 900e9):
        system = replace(switch(nodes), intra_link=Link(bw, 1e-6))
        r = simulate_ep(_ll(8 * nodes, "fabric", 2.0), system)
        times.append(r.dispatch_time_s + r.combine_time_s)
    assert all(b <= a for a, b in zip(times, times[1:], strict=False))
    assert times[0] > times[-1]  # a slow fabric does bind


def test_nic_path_ignores_the_fabric():
    """NIC to NIC, the server fabric's bandwidth plays no part."""
    slow = simulate_ep(_ll(16, "nic"), replace(switch(2), intra_link=Link(25e9, 1e-6)))
    fast = simulate_ep(_ll(16, "nic"), replace(switch(2), intra_link=Link(900e9, 1e-6)))
    assert slow.dispatch_time_s == fast.dispatch_time_s


def test_supernode_carries_every_copy_on_ub_either_way():
    system, _ = system_for_ep(load_system("cloudmatrix-384"), 32, None)
    a = simulate_ep(_ll(32, "nic"), system)
    b = simulate_ep(_ll(32, "fabric"), system)
    assert (a.dispatch_time_s, a.combine_time_s) == (b.dispatch_time_s, b.combine_time_s)


def test_default_is_nic():
    assert EPConfig(7168, 8, 256, 8, 128).ll_intranode == "nic"
    r = ep(system="hgx-h800", ep=16, nodes=2, tokens_per_device=128, hidden=7168,
           top_k=8, experts=256, dtype="fp8", dispatch="low-latency")
    assert r.dispatch_time_s == simulate_ep(_ll(16, "nic"), _h800(16)).dispatch_time_s


def test_cli_flag(capsys):
    args = ["ep", "--system", "hgx-h800", "--ep", "16", "--nodes", "2",
            "--tokens-per-device", "128", "--hidden", "7168", "--top-k", "8",
            "--experts", "256", "--dtype", "fp8", "--dispatch", "low-latency"]
    assert main([*args, "--ll-intranode", "fabric", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ll_intranode"] == "fabric"
    want = simulate_ep(_ll(16, "fabric"), _h800(16)).dispatch_time_s
    assert doc["dispatch_time_s"] == pytest.approx(want, rel=1e-12)


def test_bad_value_refused(capsys):
    with pytest.raises(InputError, match="--ll-intranode nvlink: choose one of nic, fabric"):
        simulate_ep(replace(_ll(8, "nic"), ll_intranode="nvlink"), _h800(8))
    args = ["ep", "--system", "hgx-h800", "--hidden", "7168", "--top-k", "8",
            "--experts", "256", "--dispatch", "low-latency", "--ll-intranode", "nvlink"]
    assert main(args) == 2
    assert "choose one of nic, fabric" in capsys.readouterr().err
