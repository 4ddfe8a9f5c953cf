"""NVLS chunk pipeline (sim/network/nvls.py): NCCL's chunk rules and the added time.

Expected values are worked by hand from sim/data/nccl_tuning.toml [nvls]: 16 channels,
128 KiB chunks stepping down to 64/32/16 KiB below 64/8/2 x channels x heads x chunk
bytes, 0.61 us of handshake per chunk per head, one loop of pipeline fill.
"""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.network import cost_collective, nvls

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30


@pytest.mark.parametrize(
    ("nbytes", "chunk"),
    [(MIB, 16 * KIB), (8 * MIB - 1, 16 * KIB), (8 * MIB, 32 * KIB), (64 * MIB - 1, 32 * KIB),
     (64 * MIB, 64 * KIB), (GIB - 1, 64 * KIB), (GIB, 128 * KIB), (16 * GIB, 128 * KIB)],
)
def test_chunk_follows_nccl_rules_on_eight_gpus(nbytes, chunk):
    # 16 channels x 8 heads = 128 concurrent ops: 64 KiB below 64 x 128 x 128 KiB = 1 GiB,
    # 32 KiB below 8 x 128 x 64 KiB = 64 MiB, 16 KiB below 2 x 128 x 32 KiB = 8 MiB.
    assert nvls.chunk_bytes(nbytes, 8) == chunk


def test_chunk_thresholds_scale_with_heads():
    # 4 heads: 64 ops, so the 64 KiB step starts below 512 MiB.
    assert nvls.chunk_bytes(512 * MIB, 4) == 128 * KIB
    assert nvls.chunk_bytes(512 * MIB - 1, 4) == 64 * KIB


def test_largest_chunk_adds_only_the_fill():
    # 128 KiB chunks: the rate already holds their handshakes, so one loop of
    # 16 x 8 x 128 KiB = 16 MiB at the message's own rate is all that is added.
    transfer = 0.03
    added = nvls.pipeline_s(8 * GIB, 8, transfer)
    assert added == pytest.approx(16 * MIB * transfer / (8 * GIB), rel=1e-9)


def test_mid_size_pays_handshakes_and_fill():
    # 16 MiB, 32 KiB chunks: loop L = 16 x 8 x 32 KiB = 4 MiB, L_max = 16 MiB,
    # tau = 8 x 0.61 us; 1/B = transfer/S - tau/L_max.
    s, transfer = 16 * MIB, 60e-6
    tau = 8 * 0.61e-6
    per_byte = transfer / s - tau / (16 * MIB)
    expected = s * tau * (1 / (4 * MIB) - 1 / (16 * MIB)) + (4 * MIB * per_byte + tau)
    assert nvls.pipeline_s(s, 8, transfer) == pytest.approx(expected, rel=1e-9)


def test_relative_overhead_falls_with_size():
    sys_ = load_system("dgx-h100")
    ratios = []
    for size in (8 * MIB, 64 * MIB, GIB):
        res = cost_collective(sys_, "all-reduce", range(8), size, algorithm="nvls")
        transfer = res.phases[0]["transfer_s"]
        ratios.append(nvls.pipeline_s(size, 8, transfer) / transfer)
    assert ratios[0] > ratios[1] > ratios[2] > 0


def test_mid_size_all_reduce_on_h100_prices_the_pipeline():
    # 8 x H100, 16 MiB: the NVLS time is latency 23 us + transfer + the pipeline.
    res = cost_collective(load_system("dgx-h100"), "all-reduce", range(8), 16 * MIB,
                          algorithm="nvls")
    ph = res.phases[0]
    assert ph["latency_s"] == pytest.approx(23e-6 + nvls.pipeline_s(16 * MIB, 8, ph["transfer_s"]))
    assert res.time_s == pytest.approx(ph["transfer_s"] + ph["latency_s"])


def test_no_pipeline_term_off_nvls_or_across_nodes():
    assert nvls.pipeline_s(0, 8, 1e-3) == 0.0
    assert nvls.pipeline_s(MIB, 1, 1e-3) == 0.0
    ring = cost_collective(load_system("dgx-a100"), "all-reduce", range(8), 16 * MIB)
    assert ring.algorithm == "ring"
