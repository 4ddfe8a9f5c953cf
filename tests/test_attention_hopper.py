"""Hopper kernel facts (sim/cost/attention_hopper.py): the Colfax CUTLASS FMHA (FA2's
algorithm on wgmma), the Triton tutorial's tiles and shared-memory wgmma operands on sm_90, FA3's
BF16 output of an FP8 forward."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim.cost.attention_impl import AttnShape, attention_cost, block_terms, tiles
from xpusim.sim.errors import InputError

A100 = load_device("a100-sxm4-80gb")
H100 = load_device("h100-sxm5-80gb")


def test_colfax_is_fa2_on_wgmma():
    """Per block: MMA at the wgmma rate (as flash3) plus the whole softmax (as flash2): none
    of FA3's softmax/GEMM overlap."""
    shape = AttnShape(8, 16, 2048, 2048, 128, dtype="bf16")
    col = block_terms(H100, "colfax", shape, "fwd", 128, 128)
    fa3 = block_terms(H100, "flash3", shape, "fwd", 128, 128)
    fa2 = block_terms(H100, "flash2", shape, "fwd", 128, 128)
    assert col.mma_s == pytest.approx(fa3.mma_s)
    assert col.mma_s == pytest.approx(fa2.mma_s * H100.kernels.warp_mma_fraction)
    assert col.block_s == pytest.approx(col.mma_s + col.softmax_s)
    assert fa3.block_s < col.block_s < fa2.block_s
    assert tiles("colfax", H100, 128, "fwd") == (64, 64)


def test_colfax_tile_and_port_hand_computed():
    """src/fmha's default 64 x 64 tile (the build pytorch/benchmark's install.py compiles, no
    tile flags). Block MMA 2 x 64 x 64 x 256 FLOP / (989e12 / 132 x 0.8) = 349.9 ns, 174.9 ns
    per GEMM. QK^T (SS): Q 64 x 128 plus K 64 x 128 for the one 64-row group, 32,768 B at
    128 B/clk x 1.83 GHz = 139.9 ns; PV (RS): V 64 x 128 x 2 B = 16,384 B = 69.9 ns. 32 FLOP/B
    needs the port for 100% of the MMA peak, so at matrix_max 0.8 neither binds: nothing added.
    With a four times faster MMA (43.7 ns per GEMM) both bind: 96.2 + 26.2 = 122.4 ns."""
    from xpusim.sim.cost.attention_hopper import wgmma_port_s

    rate = 128 * 1.83e9
    shape = AttnShape(4, 16, 4096, 4096, 128, dtype="bf16")
    col = block_terms(H100, "colfax", shape, "fwd", 64, 64)
    assert col.mma_s == pytest.approx(2 * 64 * 64 * 256 / (989e12 / 132 * 0.8))
    assert col.mma_s == pytest.approx(349.9e-9, rel=1e-3)
    assert col.reduce_s == 0.0
    assert wgmma_port_s((64, 64), 128, 128, "bf16", col.mma_s, rate) == 0.0
    fast = col.mma_s / 4
    got = wgmma_port_s((64, 64), 128, 128, "bf16", fast, rate)
    assert got == pytest.approx(32768 / rate - fast / 2 + 16384 / rate - fast / 2)
    assert got == pytest.approx(122.4e-9, rel=1e-2)


def test_colfax_needs_hopper():
    with pytest.raises(InputError, match="colfax"):
        attention_cost(A100, AttnShape(1, 8, 1024, 1024, 128, dtype="bf16"), "colfax")


def test_triton_tiles_on_hopper():
    """The tutorial's pre-autotune H100 launch: 16-bit 128 x 64 at d <= 64, 128 x 32 above; FP8
    64 x 128 (128 x 128 causal or at d = 256). Ampere keeps the old tile."""
    assert tiles("triton", H100, 64, "fwd") == (128, 64)
    assert tiles("triton", H100, 128, "fwd") == (128, 32)
    assert tiles("triton", H100, 128, "fwd", "fp8") == (64, 128)
    assert tiles("triton", H100, 64, "fwd", "fp8", causal=True) == (128, 128)
    assert tiles("triton", H100, 256, "fwd", "fp8") == (128, 128)
    assert tiles("triton", A100, 64, "fwd") == (128, 128)


def test_wgmma_port_hand_computed_triton():
    """QK^T of a 128 x 32 block at d = 128 (SS wgmma): q 128 x 128 plus K 32 x 128 for each of
    the two 64-row groups, (16,384 + 8,192) x 2 B = 49,152 B at 128 B/clk x 1.83 GHz = 209.8 ns,
    against half the block's MMA time: 2 x 128 x 32 x 256 FLOP / (989e12 / 132 x 0.8) / 2 =
    174.9 ns, so 34.9 ns extra. PV (RS, V 2 x 32 x 128 x 2 B = 69.9 ns) stays under its 174.9."""
    from xpusim.sim.cost.attention_hopper import wgmma_port_s

    rate = 128 * 1.83e9
    mma = 2 * 128 * 32 * 256 / (989e12 / 132 * 0.8)
    assert mma == pytest.approx(349.9e-9, rel=1e-3)
    got = wgmma_port_s((128, 32), 128, 128, "bf16", mma, rate)
    assert got == pytest.approx(49152 / rate - mma / 2)
    assert got == pytest.approx(34.9e-9, rel=1e-2)
    # d = 64 at BLOCK_N 64: 32,768 B = 139.9 ns under the 174.9 ns QK^T share: nothing.
    assert wgmma_port_s((128, 64), 64, 64, "bf16", mma, rate) == 0.0
    # The block prices it (H100's profile: 1.83 GHz, matrix_max 0.8): Ampere and flash3 do not.
    shape = AttnShape(4, 16, 4096, 4096, 128, dtype="bf16")
    tri = block_terms(H100, "triton", shape, "fwd", 128, 32)
    assert tri.mma_s == pytest.approx(mma)
    assert tri.reduce_s == pytest.approx(got)
    assert block_terms(H100, "flash3", shape, "fwd", 128, 32).reduce_s == 0.0
    assert block_terms(A100, "triton", shape, "fwd", 128, 32).reduce_s == 0.0


def test_fa3_fp8_writes_bf16_output():
    """FA3's FP8 forward stores O in BF16 (hopper/flash_api.cpp): HBM bytes are Q, K, V at
    1 B and O at 2 B per element; cuDNN's FP8 SDPA writes O in FP8."""
    shape = AttnShape(4, 16, 4096, 4096, 128, dtype="fp8")
    elems = 4 * 16 * 4096 * 128
    fa3 = attention_cost(H100, shape, "flash3")
    cudnn = attention_cost(H100, shape, "cudnn")
    assert fa3.details["hbm_bytes"] == pytest.approx(3 * elems + 2 * elems)
    assert cudnn.details["hbm_bytes"] == pytest.approx(4 * elems)
    bf16 = attention_cost(H100, AttnShape(4, 16, 4096, 4096, 128, dtype="bf16"), "flash3")
    assert bf16.details["hbm_bytes"] == pytest.approx(8 * elems)


def test_fa3_first_block_pays_the_missing_intra_warpgroup_overlap():
    """Each FA3 work tile's first key block hides only the ping-pong share (0.23) of
    min(MMA, softmax), not the steady state's 0.63: the difference is paid once per tile."""
    from xpusim.sim.cost.attention_hopper import first_block_extra_s
    from xpusim.sim.cost.attention_impl import OVERLAP

    assert first_block_extra_s("flash2", 0.0, 1.0, 0.5) == 0.0
    assert first_block_extra_s("flash3", OVERLAP["flash3"], 1.0, 0.5) == pytest.approx(
        (OVERLAP["flash3"] - 0.23) * 0.5)
    # One tile of 128 queries over 176 keys (one block): the price holds the extra once.
    shape = AttnShape(1, 1, 128, 176, 128, dtype="bf16")
    full = block_terms(H100, "flash3", shape, "fwd", 128, 176)
    cost = attention_cost(H100, shape, "flash3")
    extra = first_block_extra_s("flash3", OVERLAP["flash3"], full.mma_s, full.softmax_s)
    io = 128 * 256 * 2 / (H100.hbm_bandwidth * H100.efficiency.memory_max / H100.matrix_cores)
    assert cost.details["pipeline_s"] == pytest.approx(full.block_s + io + extra)
