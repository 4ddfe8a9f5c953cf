"""The expert-parallel study: dedup analysis, hand-computed traffic, skew, capacity, CLI."""

from __future__ import annotations

import json
import math

import pytest
from test_network_fixtures import mesh, switch
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.network.ep import (
    EPConfig,
    expert_probabilities,
    predicted_dedup_ratio,
    simulate_ep,
)


def _cfg(**kw):
    base = dict(hidden=7680, top_k=8, experts=256, ep=32, tokens_per_device=8192)
    base.update(kw)
    return EPConfig(**base)


@pytest.mark.parametrize(
    "experts,top_k,nodes", [(256, 8, 4), (256, 8, 2), (64, 2, 4), (128, 6, 8), (256, 1, 4)]
)
def test_hierarchical_saves_inter_node_bytes_by_predicted_factor(experts, top_k, nodes):
    system = mesh(nodes)
    ep = 8 * nodes
    flat = simulate_ep(_cfg(experts=experts, top_k=top_k, ep=ep, dispatch="flat"), system)
    hier = simulate_ep(_cfg(experts=experts, top_k=top_k, ep=ep, dispatch="hierarchical"), system)
    predicted = predicted_dedup_ratio(experts, top_k, nodes)
    assert flat.inter_node_bytes / hier.inter_node_bytes == pytest.approx(predicted, rel=1e-9)
    assert hier.dedup["simulated_flat_over_this"] == pytest.approx(predicted, rel=1e-9)


def test_pangu_dedup_factor_closed_form():
    # E=256, k=8, N=4: flat 8 * 3/4 = 6 copies; hierarchical 3 * (1 - C(192,8)/C(256,8)).
    p_node = 1 - math.comb(192, 8) / math.comb(256, 8)
    assert predicted_dedup_ratio(256, 8, 4) == pytest.approx(6 / (3 * p_node))
    assert predicted_dedup_ratio(256, 8, 4) == pytest.approx(2.2135, abs=1e-3)


def test_flat_uniform_traffic_hand_computed():
    system = mesh(4)
    cfg = _cfg(dispatch="flat")
    res = simulate_ep(cfg, system)
    # each of 32 devices sends T*k copies spread evenly over 32 devices; 24 of them remote
    tb = 7680 * 2
    per_pair = 8192 * 8 / 32 * tb
    assert res.inter_node_bytes == pytest.approx(32 * 24 * per_pair)
    assert res.intra_node_bytes == pytest.approx(32 * 7 * per_pair)
    # the busiest link is each device's 200G NIC: 24 * per_pair bytes
    nic = 25e9 * system.collective_efficiency.inter_node
    latency = 31 * (system.nic.latency + system.collective_efficiency.step_overhead_s)
    assert res.dispatch_time_s == pytest.approx(24 * per_pair / nic + latency)
    assert res.combine_time_s == pytest.approx(res.dispatch_time_s)


def test_deepep_pipelines_the_two_stages():
    system = switch(4)
    hier = simulate_ep(_cfg(dispatch="hierarchical"), system)
    deep = simulate_ep(_cfg(dispatch="deepep"), system)
    assert deep.inter_node_bytes == pytest.approx(hier.inter_node_bytes)
    assert deep.dispatch_time_s < hier.dispatch_time_s


def test_zipf_skew_makes_a_slowest_rank():
    system = mesh(4)
    uni = simulate_ep(_cfg(dispatch="flat"), system)
    skew = simulate_ep(_cfg(dispatch="flat", routing="zipf:1.2"), system)
    d = skew.as_dict()
    assert d["imbalance"] > 1.5
    assert skew.dispatch_time_s > uni.dispatch_time_s
    # same total copies: skew only moves them
    p = expert_probabilities("zipf:1.2", 256)
    assert p.sum() == pytest.approx(1.0)
    assert skew.slowest_rank_recv_bytes > uni.slowest_rank_recv_bytes


def test_capacity_factor_drops_hot_expert_tokens():
    system = mesh(4)
    dropless = simulate_ep(_cfg(routing="zipf:1.2"), system)
    capped = simulate_ep(_cfg(routing="zipf:1.2", capacity_factor=1.25), system)
    assert capped.dropped_fraction > 0
    assert dropless.dropped_fraction == 0
    assert capped.dispatch_time_s < dropless.dispatch_time_s
    # uniform routing never exceeds a capacity factor >= 1
    assert simulate_ep(_cfg(capacity_factor=1.0), system).dropped_fraction == pytest.approx(0)


def test_overlap_hides_communication():
    system = mesh(4)
    base = simulate_ep(_cfg(), system)
    total = base.dispatch_time_s + base.combine_time_s
    half = simulate_ep(_cfg(overlap_compute_s=total / 2), system)
    assert half.hidden_share == pytest.approx(0.5)
    assert half.exposed_s == pytest.approx(total / 2)
    full = simulate_ep(_cfg(overlap_compute_s=10 * total), system)
    assert full.hidden_share == 1.0 and full.exposed_s == 0.0


def test_histogram_routing(tmp_path):
    hist = tmp_path / "h.txt"
    hist.write_text(" ".join(["1"] * 255 + ["256"]))
    res = simulate_ep(_cfg(routing=f"hist:{hist}"), mesh(4))
    assert res.as_dict()["imbalance"] > 1.0
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3")
    with pytest.raises(InputError, match="one per expert"):
        simulate_ep(_cfg(routing=f"hist:{bad}"), mesh(4))


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"ep": 24}, "must divide"),
        ({"ep": 64}, "pass --nodes 8"),
        ({"dispatch": "magic"}, "--dispatch"),
        ({"routing": "zipf:x"}, "zipf:S"),
        ({"capacity_factor": 0.0}, "capacity-factor"),
    ],
)
def test_bad_input(kw, match):
    with pytest.raises(InputError, match=match):
        simulate_ep(_cfg(**kw), mesh(4))


def _run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_pangu_flat_vs_hierarchical(capsys):
    common = [
        "ep",
        "--model",
        "pangu-ultra-moe",
        "--system",
        "atlas-800t-a2",
        "--nodes",
        "4",
        "--ep",
        "32",
        "--tokens-per-device",
        "8192",
        "--json",
    ]
    flat = _run_json(capsys, [*common, "--dispatch", "flat"])
    hier = _run_json(capsys, [*common, "--dispatch", "hierarchical"])
    for out in (flat, hier):
        for key in (
            "dispatch_time_s",
            "combine_time_s",
            "inter_node_bytes",
            "intra_node_bytes",
            "slowest_rank",
            "bottleneck",
            "hidden_share",
        ):
            assert key in out
    ratio = flat["inter_node_bytes"] / hier["inter_node_bytes"]
    assert ratio == pytest.approx(hier["dedup"]["predicted_flat_over_hierarchical"], rel=1e-9)
    assert hier["dedup"]["simulated_flat_over_this"] == pytest.approx(ratio)
    assert hier["dispatch_time_s"] < flat["dispatch_time_s"]


def test_cli_text_report_states_the_dedup(capsys):
    assert (
        main(
            [
                "ep",
                "--model",
                "pangu-ultra-moe",
                "--nodes",
                "4",
                "--ep",
                "32",
                "--dispatch",
                "hierarchical",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "predicted flat/hierarchical = 2.213, simulated 2.213" in out


def test_cli_sweep_writes_plot(tmp_path, capsys):
    plot = tmp_path / "ep.png"
    out = _run_json(
        capsys,
        [
            "ep",
            "--hidden",
            "4096",
            "--top-k",
            "8",
            "--experts",
            "64",
            "--sweep",
            "ep=8,16,32",
            "--dispatch",
            "flat,hierarchical",
            "--plot",
            str(plot),
            "--json",
        ],
    )
    assert plot.exists() and plot.stat().st_size > 0
    assert [r["ep"] for r in out["sweep"]] == [8, 8, 16, 16, 32, 32]


def test_cli_errors_exit_2(capsys):
    assert main(["ep", "--top-k", "8"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["ep", "--model", "pangu-ultra-moe", "--ep", "24"]) == 2


# -- DeepEP modes (hand-computed) ---------------------------------------------------------
def test_low_latency_is_one_rdma_step_per_copy_by_hand():
    """DeepEP low-latency on one H800 node, pure RDMA: every (token, expert) copy is a
    message NIC to NIC; 256 experts over 8 GPUs, top-8 uniform: 128 x 8 x 32/256 = 128
    copies to each peer, 7 peers through the GPU's own 400G NIC at 0.9. A dispatch
    message is 16 + 7168 + 56 x 4 = 7408 B (header, FP8 payload, scales); the combine
    sends the 7392 B token back without the header."""
    from xpusim.hwprofiles import load_system
    from xpusim.sim.network.ep import EPConfig, simulate_ep

    system = load_system("hgx-h800")
    cfg = EPConfig(7168, 8, 256, 8, 128, dtype_bytes=1.0, dispatch="low-latency")
    r = simulate_ep(cfg, system)
    per_peer = 128 * 1 * 7408
    nic = 400e9 / 8 * 0.9
    want = 7 * per_peer / nic + 1 * (1e-6 + 2e-6)  # one step: NIC + overhead
    assert r.dispatch_time_s == pytest.approx(want, rel=1e-12)
    back = 128 * 1 * 7392
    # then the reduce pass after the grid barrier: read the 128 x 8 copies of the rank's
    # own tokens, write 128 tokens, on H800's memory roofline (3.35 TB/s x 0.9, half 4.39 MB)
    reduce = (128 * 8 * 7392 + 128 * 7168 + 4393533.44) / (3.35e12 * 0.9)
    assert r.local_pass_s == pytest.approx((0.0, reduce))
    assert r.combine_time_s == pytest.approx(7 * back / nic + 3e-6 + reduce, rel=1e-12)
    assert r.inter_node_bytes == pytest.approx(8 * 7 * per_peer)
    assert r.intra_node_bytes == 0.0
    assert r.deepep_bytes_per_rank == pytest.approx(8 * per_peer)  # own copies counted
    assert r.deepep_combine_bytes_per_rank == pytest.approx(8 * back)


def test_deepep_on_supernode_is_direct_and_shares_the_ub_port_by_hand():
    """DeepEP-Ascend on CloudMatrix384, EP32 = 2 servers of 16 dies: one row per
    (token, expert) straight to the expert's die (cam_moe_dispatch_normal.h); the die's
    UB port carries its 14 in-server (non-package) peers and its 16 cross-server peers;
    P-1 = 31 steps, each the 2-level UB latency 5.5 us + HCCL step overhead 10 us; then
    the staging pass that the pull waits for (ep_ascend.py)."""
    from xpusim.hwprofiles import load_system
    from xpusim.sim.network.ep import EPConfig, simulate_ep, system_for_ep

    system, _ = system_for_ep(load_system("cloudmatrix-384"), 32, None)
    cfg = EPConfig(7168, 8, 256, 32, 4096, dtype_bytes=1.0, dispatch="deepep")
    r = simulate_ep(cfg, system)
    rows_per_die = 4096 * 8 * 8 / 256  # 8 experts per die, 8/256 each: 1024 rows
    per_peer = rows_per_die * (7168 + 4)  # INT8 token + one float scale (DeepEP-Ascend)
    transfer = 30 * per_peer / (196e9 * 0.7) + 31 * (5.5e-6 + 10e-6)
    # 4096 x 8 copies on the AIVs: min(1.6 TB/s x 0.9, 24 AI cores x 32 B x 1.8 GHz = 1.3824 TB/s)
    stage = (32768 * (14336 + 7172) + 2 * 2**20) / 1.3824e12
    assert r.dispatch_time_s == pytest.approx(transfer + stage, rel=1e-9)
    assert r.deepep_bytes_per_rank == pytest.approx(32 * per_peer)  # self included


def test_ascend_normal_kernels_stage_and_reduce_by_hand():
    """CloudMatrix384 EP8, 4096 tokens, top-8 of 256: a die stages 4096 x 8 copies
    (read 14336-B BF16 token, write the 7172-B INT8 row) before the pull, and after its
    sends reduces 32768 returned rows into 4096 tokens, at the die's AI-core HBM rate
    (24 cores x 32 B/cycle x 1.8 GHz = 1.3824 TB/s, under 1.6 TB/s x 0.9) with a 2-MiB half
    size. Wire and numerator count one row per (token, expert)."""
    from xpusim.hwprofiles import load_system
    from xpusim.sim.network.ep import EPConfig, simulate_ep

    system = load_system("cloudmatrix-384")
    hbm, half = 1.3824e12, 2 * 2**20
    r = simulate_ep(EPConfig(7168, 8, 256, 8, 4096, dtype_bytes=1.0, dispatch="deepep"), system)
    assert r.local_pass_s[0] == pytest.approx((32768 * (14336 + 7172) + half) / hbm)
    assert r.deepep_bytes_per_rank == pytest.approx(32768 * 7172)
    r = simulate_ep(EPConfig(7168, 8, 256, 8, 4096, dtype_bytes=2.0, dispatch="deepep"), system)
    assert r.local_pass_s[1] == pytest.approx(((32768 + 4096) * 14336 + half) / hbm)
    assert r.combine_time_s > r.local_pass_s[1] > 0.3e-3  # 0.37 ms after the sends


def test_deepep_intranode_on_nvidia_has_no_local_pass():
    """DeepEP's own intranode kernel receives while it sends: nothing is added."""
    from xpusim.hwprofiles import load_system
    from xpusim.sim.network.ep import EPConfig, simulate_ep

    cfg = EPConfig(7168, 8, 256, 8, 4096, dtype_bytes=1.0, dispatch="deepep")
    assert simulate_ep(cfg, load_system("hgx-h800")).local_pass_s == (0.0, 0.0)


def test_deepep_internode_counts_rdma_tokens_with_own_node_by_hand():
    """DeepEP's num_rdma_token_sent: (token, node) pairs incl. the sender's node."""
    from xpusim.hwprofiles import load_system
    from xpusim.sim.network.ep import EPConfig, simulate_ep

    system = load_system("hgx-h800", nodes=2)
    cfg = EPConfig(7168, 8, 256, 16, 4096, dtype_bytes=1.0, dispatch="deepep")
    r = simulate_ep(cfg, system)
    p_node = 1 - math.comb(128, 8) / math.comb(256, 8)
    msg = 7168 * (1 + 4 / 128)  # test_internode.py: fp8_factor = (1 + 4 / 128) / 2 of BF16
    assert r.deepep_bytes_per_rank == pytest.approx(4096 * 2 * p_node * msg)
    assert r.inter_node_bytes == pytest.approx(16 * 4096 * p_node * msg)


@pytest.mark.parametrize(
    "dispatch,dtype_bytes,vendor,want",
    [
        ("flat", 1.0, "NVIDIA", (7168, 7168, 7168, 7168)),  # NCCL-style all-to-all: bare
        ("hierarchical", 2.0, "Huawei", (14336, 14336, 14336, 14336)),
        ("deepep", 1.0, "NVIDIA", (7392, 7392, 7392, 7392)),  # 7168 FP8 + 56 float scales
        ("deepep", 2.0, "NVIDIA", (14336, 14336, 14336, 14336)),  # BF16: no scales
        # + 16-byte dispatch header (internode_ll.cu); the combine goes back without it
        ("low-latency", 1.0, "NVIDIA", (7408, 7392, 7408, 7392)),
        ("low-latency", 2.0, "NVIDIA", (14352, 14336, 14352, 14336)),
        # CANN MoeDistributeDispatchV2: 7168 (32-aligned) + 32-B scale slot + 12-B triple
        # on the wire; sgl-kernel-npu's test counts DeepEP's 7408 B
        ("low-latency", 1.0, "Huawei", (7212, 7168, 7408, 7168)),
        ("low-latency", 2.0, "Huawei", (14380, 14336, 14380, 14336)),
        ("deepep", 1.0, "Huawei", (7172, 7172, 7172, 7172)),  # one float scale per token
    ],
)
def test_deepep_message_bytes_by_hand(dispatch, dtype_bytes, vendor, want):
    from xpusim.sim.network.ep import message_sizes

    cfg = EPConfig(7168, 8, 256, 8, 128, dtype_bytes=dtype_bytes, dispatch=dispatch)
    m = message_sizes(cfg, vendor)
    assert (m.dispatch, m.combine, m.dispatch_counted, m.combine_counted) == pytest.approx(want)


def test_ascend_low_latency_counts_deepep_bytes_but_sends_cann_ones():
    """CloudMatrix384, EP8 low-latency INT8: 7212-B messages cross the UB ports; the
    numerator counts 7408 B per copy, 128 x 8 copies a rank, its own included."""
    from xpusim.hwprofiles import load_system

    system = load_system("cloudmatrix-384")
    cfg = EPConfig(7168, 8, 256, 8, 128, dtype_bytes=1.0, dispatch="low-latency")
    r = simulate_ep(cfg, system)
    assert r.deepep_bytes_per_rank == pytest.approx(128 * 8 * 7408)
    assert r.deepep_combine_bytes_per_rank == pytest.approx(128 * 8 * 7168)
    # 8 dies x 7 peers x 128 copies of 7212 B on the server fabric and die-to-die links
    assert r.intra_node_bytes == pytest.approx(8 * 7 * 128 * 7212)
    # LocalWindowCopy after WaitDispatch: 1024 copies (own included) read from the window
    # (7212 B) and written out (7168 + 4-B scale + 12-B triple) at the AI cores' HBM rate,
    # 24 x 32 B/cycle x 1.8 GHz = 1.3824 TB/s (under 1.6 TB/s x 0.9), half 2 MiB
    copy = (1024 * (7212 + 7184) + 2 * 2**20) / 1.3824e12
    assert r.local_pass_s == pytest.approx((copy, 0.0))


def test_low_latency_bf16_combine_counts_bare_tokens():
    """The benchmark's combine numerator is hidden x 2 per copy (test_low_latency.py
    num_bf16_bytes); the dispatch one carries the 16-byte header."""
    from xpusim.hwprofiles import load_system

    system = load_system("hgx-h800")
    cfg = EPConfig(7168, 8, 256, 8, 128, dtype_bytes=2.0, dispatch="low-latency")
    r = simulate_ep(cfg, system)
    assert r.deepep_bytes_per_rank == pytest.approx(128 * 8 * 14352)
    assert r.deepep_combine_bytes_per_rank == pytest.approx(128 * 8 * 14336)
    doc = r.as_dict()
    assert doc["dispatch_message_bytes"] == 14352 and doc["combine_message_bytes"] == 14336
