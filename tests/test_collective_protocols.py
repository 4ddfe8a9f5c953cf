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
        # algbw = nvls_efficiency x 450 GB/s x n / (n + 1), less 23 us of latency
        algbw = 0.686 * 450e9 * n / (n + 1)
        assert res.algorithm_bandwidth == pytest.approx(algbw, rel=1e-3)
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
