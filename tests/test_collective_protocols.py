"""NCCL's tuning model (sim/network/protocols.py): protocols, latencies, NVLS, multi-node.

Expected values are computed by hand from sim/data/nccl_tuning.toml and the profiles.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.errors import InputError
from xpusim.sim.network import cost_collective

MIB = 1 << 20
GIB = 1 << 30


def _sys(name: str, nodes: int = 1):
    return replace(load_system(name), nodes=nodes)


def test_small_all_reduce_runs_ll_with_nccl_latency():
    # 8 x A100, 1 MiB: ring LL. Latency = baseLat 6.6 + 14 steps x hwLat(NVLink, ring, LL) 0.6
    # = 15.0 us; bandwidth = min(0.5 x 240, llMaxBw 87.7) GB/s bus.
    res = cost_collective(_sys("dgx-a100"), "all-reduce", range(8), MIB)
    assert (res.algorithm, res.protocol) == ("ring", "LL")
    expected = 15.0e-6 + MIB * 1.75 / 87.7e9
    assert res.time_s == pytest.approx(expected, rel=1e-6)


def test_large_all_reduce_runs_simple_at_ncclss_link_rate():
    # 4 GiB ring Simple: 12 NVLinks x 20.0 GB/s = 240 GB/s bus; latency 8.4 + 14 x 3.4 us.
    res = cost_collective(_sys("dgx-a100"), "all-reduce", range(8), 4 * GIB)
    assert (res.algorithm, res.protocol) == ("ring", "Simple")
    expected = (8.4 + 14 * 3.4) * 1e-6 + 4 * GIB * 1.75 / 240e9
    assert res.time_s == pytest.approx(expected, rel=1e-6)


def test_protocol_can_be_forced_and_is_checked():
    sys_ = _sys("dgx-a100")
    ll = cost_collective(sys_, "all-reduce", range(8), GIB, algorithm="ring", protocol="LL")
    simple = cost_collective(sys_, "all-reduce", range(8), GIB, algorithm="ring")
    assert ll.protocol == "LL" and ll.time_s > simple.time_s
    with pytest.raises(InputError, match="protocol"):
        cost_collective(sys_, "all-reduce", range(8), GIB, algorithm="ring", protocol="XL")
    # HCCL systems have one protocol.
    with pytest.raises(InputError, match="LL128"):
        cost_collective(_sys("atlas-800t-a2"), "all-reduce", range(8), GIB, protocol="LL128")


def test_nvls_is_hopper_only_and_grows_with_group_size():
    assert cost_collective(_sys("dgx-a100"), "all-reduce", range(8), GIB).algorithm == "ring"
    h = _sys("hgx-h200")
    bus = []
    for n in (5, 8):
        res = cost_collective(h, "all-reduce", range(n), 8 * GIB)
        assert res.algorithm == "nvls"
        bus.append(res.bus_bandwidth)
        # time = 8 GiB / (nvls_efficiency x 450 GB/s x n / (n + 1)) + 23 us latency + the
        # chunk pipeline's fill: one loop of 16 channels x n heads x 128 KiB at that rate
        # (8 GiB keeps 128 KiB chunks, whose handshakes the rate already holds;
        # nccl_tuning.toml [nvls])
        algbw = 0.686 * 450e9 * n / (n + 1)
        loop = 16 * n * 131072
        expected = 8 * GIB / algbw + 23e-6 + loop / algbw
        assert res.time_s == pytest.approx(expected, rel=1e-6)
    assert bus[0] < bus[1]
    with pytest.raises(InputError, match="nvls"):
        cost_collective(_sys("dgx-a100"), "all-reduce", range(8), GIB, algorithm="nvls")


def test_two_nodes_do_not_get_the_single_node_curve():
    one = cost_collective(_sys("dgx-a100"), "all-reduce", range(8), 64 * MIB)
    two = cost_collective(_sys("dgx-a100", 2), "all-reduce", range(16), 64 * MIB)
    assert two.bus_bandwidth < one.bus_bandwidth
    assert two.link_bytes.get("inter_node", 0) > 0


@pytest.mark.parametrize("backend", ["analytical", "flow"])
def test_nvls_and_tree_phases_agree_between_backends(backend):
    for name, nodes, alg in (("hgx-h200", 1, "nvls"), ("dgx-h100", 2, "nvls_tree"),
                             ("dgx-a100", 2, "tree")):
        s = _sys(name, nodes)
        a = cost_collective(s, "all-reduce", range(8 * nodes), GIB, algorithm=alg)
        f = cost_collective(s, "all-reduce", range(8 * nodes), GIB, algorithm=alg,
                            backend=backend)
        assert f.time_s == pytest.approx(a.time_s, rel=0.05)


def test_every_kind_gets_a_protocol_on_nccl():
    s = _sys("dgx-h100", 2)
    for kind in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "broadcast",
                 "send-recv"):
        for size in (4096, 64 * MIB):
            res = cost_collective(s, kind, range(16), size)
            assert res.protocol in ("LL", "LL128", "Simple")
            assert res.time_s > 0


def test_profile_protocols_restrict_the_choice():
    # gcp-a3-mega runs Google's TCPXO environment: NCCL_PROTO=Simple, NCCL_NVLS_ENABLE=0.
    sysm = _sys("gcp-a3-mega", nodes=2)
    assert sysm.collective_library.protocols == ("Simple",)
    for nbytes in (64 * 1024, MIB, 64 * MIB, GIB):
        res = cost_collective(sysm, "all-reduce", range(16), nbytes)
        assert res.protocol == "Simple"
        assert res.algorithm in ("ring", "tree")  # no NVLS tree
    with pytest.raises(InputError, match="protocol LL128"):
        cost_collective(sysm, "all-reduce", range(16), MIB, algorithm="tree", protocol="LL128")
    # Small send/recv would run LL; with LL disabled it runs Simple.
    assert cost_collective(sysm, "send-recv", range(2), 1024).protocol == "Simple"


def test_tree_latency_pays_the_network_plugin_latency():
    # 2 x 8 H100 over TCPXO (plugin latency L = 50 us), tree Simple:
    # 2 x ((8 - 1) x hwLat(NVLink, tree, Simple) 28 + log2(2) x (hwLat(NET) 28 + 2 x L))
    # = 2 x (196 + 128) = 648 us (tuning.cc: the flush doubles L for Simple).
    sysm = _sys("gcp-a3-mega", nodes=2)
    res = cost_collective(sysm, "all-reduce", range(16), 64 * MIB, algorithm="tree")
    latency = sum(p["latency_s"] for p in res.phases)
    assert latency == pytest.approx(648e-6, rel=1e-9)
    # aws-ofi-nccl reports 35 us on P6; LL128 tree, 4 nodes: 14 + 2 x (7 x 1.25 + 2 x (8.5 + 35)).
    p6 = _sys("aws-p6-b200", nodes=4)
    res = cost_collective(p6, "all-reduce", range(32), 64 * MIB, algorithm="tree", protocol="LL128")
    latency = sum(p["latency_s"] for p in res.phases)
    assert latency == pytest.approx((14 + 2 * (7 * 1.25 + 2 * (8.5 + 35))) * 1e-6, rel=1e-9)


def test_ampere_ring_all_gather_pays_the_p2p_read_local_copy():
    # 2 x A800, 8 GB all-gather, ring Simple. NCCL reads over NVLink on SM80, so step 0
    # is a local copy of the rank's own 4 GB chunk (read + write at 2039 GB/s HBM) in
    # series with the 4 GB NVLink read at 8 links x 20.0 GB/s = 160 GB/s.
    from xpusim.sim.ir import CollectiveKind
    from xpusim.sim.network import protocols as proto

    system = _sys("hgx-a800")
    res = cost_collective(system, "all-gather", range(2), 8e9)
    assert (res.algorithm, res.protocol) == ("ring", "Simple")
    lat = proto.latency_s(system, CollectiveKind.ALL_GATHER, "ring", "Simple", 2, 1, 1)
    expected = 4e9 / 160e9 + 2 * 4e9 / 2039e9 + lat
    assert res.time_s == pytest.approx(expected, rel=1e-9)
    # 8 ranks: the copy is 1/8 of the buffer, the reads 7/8.
    res8 = cost_collective(system, "all-gather", range(8), 8e9)
    lat8 = proto.latency_s(system, CollectiveKind.ALL_GATHER, "ring", "Simple", 8, 1, 7)
    assert res8.time_s == pytest.approx(7e9 / 160e9 + 2e9 / 2039e9 + lat8, rel=1e-9)


def test_read_mode_copy_only_where_nccl_reads():
    from xpusim.sim.ir import CollectiveKind as K
    from xpusim.sim.network.protocols import read_mode_copy_s

    a800, h100 = _sys("hgx-a800"), _sys("dgx-h100")
    assert read_mode_copy_s(a800, K.ALL_GATHER, "ring", "Simple", 8e9, 8, 1) > 0
    # Hopper writes; reduce-scatter/all-reduce reduce as reads arrive; LL/LL128 write;
    # rings across nodes are not modelled with it.
    assert read_mode_copy_s(h100, K.ALL_GATHER, "ring", "Simple", 8e9, 8, 1) == 0
    assert read_mode_copy_s(a800, K.REDUCE_SCATTER, "ring", "Simple", 8e9, 8, 1) == 0
    assert read_mode_copy_s(a800, K.ALL_REDUCE, "ring", "Simple", 8e9, 8, 1) == 0
    assert read_mode_copy_s(a800, K.ALL_GATHER, "ring", "LL128", 8e9, 8, 1) == 0
    assert read_mode_copy_s(a800, K.ALL_GATHER, "ring", "Simple", 8e9, 16, 2) == 0
