"""FlashAttention-3's FP8 forward (sim/cost/attention_hopper.py): no intra-warpgroup
pipelining (FA3 paper s3.2: Algorithm 2 is the FP16 consumer path; hopper ``mma_fp8`` waits
on every WGMMA), so each FP8 key block hides only the ping-pong share, 0.23."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim.cost.attention_hopper import first_block_extra_s, steady_overlap
from xpusim.sim.cost.attention_impl import OVERLAP, AttnShape, attention_cost, block_terms

H100 = load_device("h100-sxm5-80gb")


def test_steady_overlap_is_ping_pong_only_for_fa3_fp8():
    assert steady_overlap("flash3", "fp8", OVERLAP["flash3"]) == 0.23
    assert steady_overlap("flash3", "bf16", OVERLAP["flash3"]) == 0.63
    assert steady_overlap("flash3", "fp16", 0.63) == 0.63
    assert steady_overlap("cudnn", "fp8", 0.0) == 0.0  # cuDNN: not FA3's mainloop
    assert steady_overlap("triton", "fp8", 0.0) == 0.0


def test_fa3_fp8_block_hand_computed():
    """128 x 256 block, d = 128 on H100 SXM5 (FP8 1979 TFLOP/s x matrix_max 0.709 over 132
    SMs; exp 16/clk/SM at 1.83 GHz):
    MMA = 2*128*256*(128+128) / (1979e12 / 132 * 0.709) = 1.5783 us,
    exp = 128*256 / (16 * 1.83e9) = 1.1191 us,
    block = 1.5783 + 1.1191 - 0.23 * 1.1191 = 2.4401 us (it was 1.9924 us with 0.63)."""
    shape = AttnShape(4, 16, 4224, 4224, 128, dtype="fp8")
    b = block_terms(H100, "flash3", shape, "fwd", 128, 256)
    assert b.mma_s == pytest.approx(1.5783e-6, rel=1e-4)
    assert b.softmax_s == pytest.approx(1.1191e-6, rel=1e-4)
    assert b.block_s == pytest.approx(2.4401e-6, rel=1e-4)
    # 16-bit inputs keep the 0.63 of the ablation: 2.7990 + 1.1191 - 0.63 * 1.1191 = 3.2131 us
    bf16 = block_terms(H100, "flash3", AttnShape(4, 16, 4224, 4224, 128, dtype="bf16"), "fwd",
                       128, 256)
    assert bf16.block_s == pytest.approx(3.2131e-6, rel=1e-4)


def test_fa3_fp8_first_block_pays_nothing_extra():
    """Every FP8 block already lacks the intra-warpgroup overlap, so a work tile of one
    128 x 256 block costs that block plus its Q (1 B) and BF16 O (2 B) rows at the SM's
    share of HBM: 2.4401 us + 128*128*3 B / (3.35e12 * memory_max / 132)."""
    assert first_block_extra_s("flash3", OVERLAP["flash3"], 1.0, 0.5, "fp8") == 0.0
    assert first_block_extra_s("flash3", OVERLAP["flash3"], 1.0, 0.5, "bf16") == pytest.approx(
        0.4 * 0.5)
    shape = AttnShape(1, 1, 128, 256, 128, dtype="fp8")
    cost = attention_cost(H100, shape, "flash3")
    io = 128 * 128 * 3 / (H100.hbm_bandwidth * H100.efficiency.memory_max / H100.matrix_cores)
    assert cost.details["pipeline_s"] == pytest.approx(2.4401e-6 + io, rel=1e-4)
