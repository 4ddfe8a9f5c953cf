"""Send/recv two ways (issue 14): NCCL's p2p channels, and direct copy-engine copies.

Hand-computed from the rules in sim/data/nccl_tuning.toml [p2p] and
sim/network/copy.py."""

from __future__ import annotations

import json
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_system
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.network import cost_collective
from xpusim.sim.network.copy import copy_efficiency
from xpusim.sim.network.protocols import p2p_bandwidth, p2p_channels, p2p_parts

import xpusim

MiB = 2**20


@pytest.mark.parametrize(
    "ranks, nbytes, want",
    [
        # dgx-a100: 24 coll channels -> p2pnChannels 32; 12 NVLinks -> 24 -> perPeer 32.
        # 8 ranks: nChannelsMin 32->16->8->4 (4 x 8 = 32), nChannelsMax 32->16 (16 x 8 <= 128).
        (8, 1 * MiB, 4),  # min(4, 1 MiB / 64 KiB = 16)
        (8, 128 * MiB, 8),  # 4 x 32 MiB > 16 MiB -> 8 x 16 MiB
        (8, 256 * MiB, 16),  # 64 -> 32 -> 16 MiB per part
        (8, 1024 * MiB, 16),  # capped at nChannelsMax 16
        (8, 32 * 1024, 1),  # 32 KiB / 64 KiB -> one channel
        # 2 ranks: nChannelsMin 16, nChannelsMax 32.
        (2, 128 * MiB, 16),
        (2, 4096 * MiB, 32),
    ],
)
def test_p2p_channels_on_dgx_a100(ranks, nbytes, want):
    assert p2p_channels(load_system("dgx-a100"), ranks, nbytes) == want


def test_p2p_bandwidth_is_channels_times_half_a_cta():
    # Ampere perChMaxTreeBws (one node) 24 GB/s per channel, half each way: 12 GB/s.
    s = load_system("dgx-a100")
    assert p2p_bandwidth(s, 8, 128 * MiB) == pytest.approx(8 * 12e9)
    assert p2p_bandwidth(s, 8, 1024 * MiB) == pytest.approx(16 * 12e9)


def test_nccl_sendrecv_is_channel_bound_then_link_bound():
    s = load_system("dgx-a100")
    group = tuple(range(8))
    mid = cost_collective(s, "send-recv", group, 128 * MiB)
    # 128 MiB over 96 GB/s plus NCCL's p2p latency (8.4 base + 3.4 per NVLink step).
    assert mid.time_s == pytest.approx(128 * MiB / 96e9 + 11.8e-6, rel=1e-9)
    # 2 ranks, 4 GiB: 32 channels x 12 = 384 GB/s > the port's 240: link bound.
    big = cost_collective(s, "send-recv", (0, 1), 4096 * MiB)
    assert big.algorithm_bandwidth == pytest.approx(4096 * MiB / (4096 * MiB / 240e9 + 11.8e-6))


def test_copy_efficiency_from_the_payload_sizes():
    # A100: 128 B at 0.80 -> 32 B overhead per packet -> 256 / 288 = 8/9.
    assert copy_efficiency(load_system("dgx-a100")) == pytest.approx(8 / 9)
    # H200: 0.824 -> 27.34 B overhead -> 256 / 283.34.
    h = 128 * (1 / 0.824 - 1)
    assert copy_efficiency(load_system("hgx-h200")) == pytest.approx(256 / (256 + h))
    # HCCS publishes no DMA overhead: the line rate.
    assert copy_efficiency(load_system("atlas-800t-a2")) == 1.0


def test_memcpy_is_one_dma_stream_at_the_copy_rate():
    s = load_system("dgx-a100")
    res = cost_collective(s, "send-recv", (0, 1), 4096 * MiB, api="memcpy")
    # 300 GB/s x 8/9, plus one hop (1 us), no step overhead.
    assert res.time_s == pytest.approx(4096 * MiB / (300e9 * 8 / 9) + 1e-6)
    assert (res.algorithm, res.protocol) == ("memcpy", "copy")
    hccs = cost_collective(load_system("atlas-800t-a2"), "send-recv", (0, 1), 2**30, api="memcpy")
    assert hccs.time_s == pytest.approx(2**30 / 28e9 + 0.5e-6)


def test_memcpy_beats_nccl_sendrecv_at_large_sizes():
    s = load_system("dgx-h100")
    lib = cost_collective(s, "send-recv", (0, 1), 2**30)
    ce = cost_collective(s, "send-recv", (0, 1), 2**30, api="memcpy")
    assert ce.time_s < lib.time_s


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(kind="all-reduce", api="memcpy"), "send-recv only"),
        (dict(kind="send-recv", api="memcpy", ranks=16), "inside one node"),
        (dict(kind="send-recv", api="memcpy", protocol="LL"), "no algorithm or protocol"),
        (dict(kind="send-recv", api="dma"), "--api 'dma'"),
    ],
)
def test_memcpy_bad_input(kwargs, words):
    with pytest.raises(InputError, match=words):
        xpusim.collective(**kwargs)


def test_api_flag_equals_keyword(capsys):
    cmd = "collective send-recv --system hgx-h200 --ranks 2 --bytes 512MiB --api memcpy --json"
    assert main(shlex.split(cmd)) == 0
    want = json.loads(capsys.readouterr().out)
    got = xpusim.collective(
        kind="send-recv", system="hgx-h200", ranks=2, bytes="512MiB", api="memcpy"
    )
    assert got.as_dict() == want


def test_library_is_the_default():
    a = xpusim.collective(kind="send-recv", system="dgx-a100", ranks=8, bytes="128MiB")
    b = xpusim.collective(
        kind="send-recv", system="dgx-a100", ranks=8, bytes="128MiB", api="library"
    )
    assert a.as_dict() == b.as_dict() and a.algorithm == "direct"


def test_a_p2p_part_is_aligned_so_one_more_byte_is_a_tiny_part():
    """calcP2pChunkSize aligns the part to minSize (64 KiB over NVLink): 64 KiB + 1 byte is a
    64 KiB part and a 1-byte part, so it takes as long as 64 KiB (it was priced as two
    halves on two channels, 16% faster than 64 KiB)."""
    s = load_system("dgx-a100")
    assert p2p_parts(s, 2, 64 * 1024) == (1, 64 * 1024)
    assert p2p_parts(s, 2, 64 * 1024 + 1) == (2, 64 * 1024)
    at = cost_collective(s, "send-recv", (0, 1), 64 * 1024).time_s
    assert cost_collective(s, "send-recv", (0, 1), 64 * 1024 + 1).time_s >= at
    # Past maxSize (32 x 512 KiB) per part NCCL doubles the channels: a real step down.
    assert p2p_parts(s, 8, 64 * MiB) == (4, 16 * MiB)
    assert p2p_parts(s, 8, 64 * MiB + 1) == (8, 8 * MiB + 64 * 1024)


@settings(max_examples=60, deadline=None)
@given(system=st.sampled_from(["dgx-a100", "dgx-h100", "gcp-a3-mega", "pcie-l40s"]),
       ranks=st.sampled_from([2, 4, 8]), size=st.integers(1, 16 * MiB),
       extra=st.integers(1, 16 * MiB))
def test_one_node_send_recv_time_grows_with_bytes_below_max_part(system, ranks, size, extra):
    """Up to one maxSize part per channel NCCL never adds channels as bytes grow, so a
    larger send never finishes sooner."""
    s = load_system(system)
    group = tuple(range(min(ranks, s.devices_per_node)))
    small = cost_collective(s, "send-recv", group, size).time_s
    big = cost_collective(s, "send-recv", group, min(size + extra, 16 * MiB)).time_s
    assert big >= small * (1 - 1e-12)
