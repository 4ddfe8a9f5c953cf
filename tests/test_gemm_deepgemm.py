"""DeepGEMM's FP8 GEMMs priced from the kernel's structure (sim/cost/gemm_impl.py):
block choice, persistent waves, promotion and operand feed; hand-computed values."""

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.api.op import op
from xpusim.sim.cost import RooflineModel
from xpusim.sim.cost.gemm_impl import (
    best_config,
    deepgemm_config,
    deepgemm_work,
    promotion_flops_per_element,
    smem_bytes,
)
from xpusim.sim.cost.gemm_pipeline import pipelined_time
from xpusim.sim.errors import InputError
from xpusim.sim.ir import GemmShape

H800 = "h800-sxm5-80gb"


def test_small_m_picks_block_n_16_one_full_wave():
    """M = 64: BLOCK_M 64; N = 2112 / 16 = 132 blocks fill the 132 SMs exactly (one wave, last
    wave 132), which no wider BLOCK_N beats; 128 % 16 == 0 allows 8 stages:
    2048 + 8 x (8192 + 256 + 2048) + 56 x 4 + 8 x 16 = 86,368 bytes <= 232,448."""
    assert smem_bytes(8, 7168, 64, 16) == 86368
    assert best_config(64, 2112, 7168, 1, 132) == (64, 16, 8, 1)
    cfg = deepgemm_config(GemmShape(64, 2112, 7168, impl="deepgemm"), 132)
    assert (cfg.blocks, cfg.waves, cfg.math_warpgroups) == (132, 1, 1)


def test_large_m_block_n_stages_and_multicast():
    """4096 x 7168 x 2048: BLOCK_N 128 gives 32 x 56 = 1792 blocks, 14 waves (120 gives 60
    N-blocks, 15 waves); 6 stages need 32,768 + 6 x 33,280 + 64 + 96 = 232,608 bytes > 232,448,
    so 5; M >= 1024 and 7168 % 256 == 0 with one group: A multicast over 2 CTAs."""
    assert smem_bytes(6, 2048, 128, 128) == 232608
    assert best_config(4096, 7168, 2048, 1, 132) == (128, 128, 5, 2)
    cfg = deepgemm_config(GemmShape(4096, 7168, 2048, impl="deepgemm"), 132)
    assert (cfg.blocks, cfg.waves, cfg.math_warpgroups) == (1792, 14, 2)


def test_masked_groups_config_and_blocks():
    """Masked, 4 groups of 256 rows, N 4096: only BLOCK_N 128 reaches 2 waves (2 x 32 x 4 =
    256 blocks, last wave 124); no multicast with several groups. One group of 1024 rows:
    multicast (M >= 1024, 4096 % 256 == 0)."""
    four = deepgemm_config(GemmShape(256, 4096, 7168, 4, impl="deepgemm-masked"), 132)
    assert (four.block_m, four.block_n, four.num_stages, four.multicast) == (128, 128, 5, 1)
    assert (four.blocks, four.waves) == (256, 2)
    one = deepgemm_config(GemmShape(1024, 4096, 7168, 1, impl="deepgemm-masked"), 132)
    assert (one.block_n, one.multicast, one.blocks) == (128, 2, 256)


def test_contiguous_concatenates_groups_and_pads_rows():
    """Contiguous, 4 groups of 8192 rows: get_best_configs(32768, ...) with BLOCK_M 128; 8192
    blocks of 128 x 128 (63 waves; BLOCK_N < 128 needs 33+ N-blocks, 68+ waves); one config
    group, so A multicast applies. Three groups of 100 rows pad to 3 x 128 = 384 rows: BLOCK_N
    96 gives 3 x 43 = 129 blocks in one wave (104: 120 blocks, a less full wave)."""
    cfg = deepgemm_config(GemmShape(8192, 4096, 7168, 4, impl="deepgemm-contiguous"), 132)
    assert (cfg.block_m, cfg.block_n, cfg.multicast, cfg.blocks, cfg.waves) == (
        128, 128, 2, 8192, 63)
    padded = deepgemm_config(GemmShape(100, 4096, 7168, 3, impl="deepgemm-contiguous"), 132)
    assert (padded.block_n, padded.blocks, padded.waves) == (96, 129, 1)


def test_one_math_warpgroup_serialises_promotion():
    """Without an operand-feed bound, a BLOCK_M 64 K block costs its WGMMAs plus the promotion
    of 64 x BLOCK_N accumulators on the FP32 lanes: 1979 x 0.709 / (67 / 2) = 41.88 tensor
    FLOPs per FFMA. 64 x 7168 x 16384: BLOCK_N 56, 128 blocks, one wave, 128 K blocks."""
    dev = load_device(H800)
    per = promotion_flops_per_element(dev, "fp8")
    assert per == pytest.approx(1979 * 0.709 / (67.0 / 2))
    shape = GemmShape(64, 7168, 16384, impl="deepgemm")
    work, executed = deepgemm_work(shape, dev, "fp8", 0.0)
    mma = 2 * 64 * 56 * 128
    assert executed == pytest.approx(132 * 128 * mma)
    assert work == pytest.approx(132 * 128 * (mma + per * 64 * 56))
    assert work / executed == pytest.approx(1.1636, rel=1e-4)


def test_time_of_one_shape_hand_computed():
    """128 x 4096 x 7168 FP8 on H800: BLOCK 128 x 32 (128 blocks, one wave, 8 stages); per K
    block each CTA loads (128 + 32) x 128 FP8 bytes, 116.93 FLOPs each at the SM's 12 TB/s L2
    share (2.39 M) against 1.05 M of WGMMA: feed-bound. compute = (132 x 56 x 2.39 M + 1.58 G)
    / (1979 T x 0.709) = 13.74 us; output store 1,048,576 B / 3.015 TB/s = 0.35 us after it;
    HBM 31.3 MB (11.85 us with the memory half) overlaps. The loads (11.5 us of reads) and the
    op's own WGMMAs (7.52 GFLOP + the half, 6.49 us) through the kernel's 8 stages lose ~1%
    (gemm_pipeline): 11.6 us, under the feed bound, so nothing changes. 14.09 us (measured,
    DeepGEMM README: 533 TFLOP/s = 14.10 us)."""
    dev = load_device(H800)
    cost = RooflineModel(dev).time(ops.gemm("g", 128, 4096, 7168, "fp8", impl="deepgemm"))
    rate = 1979e12 * 0.709
    per_element = rate / 12000e9
    feed = per_element * (128 + 32) * 128
    assert feed > 2 * 128 * 32 * 128
    work = 132 * 56 * feed
    assert cost.details["feed_bound_flops"] == pytest.approx(work)
    compute = (work + 1.58e9) / rate
    store = 128 * 4096 * 2 / (3350e9 * 0.9)
    assert cost.compute_s == pytest.approx(compute)
    device_s = cost.time_s - cost.overhead_s  # --timing kernel: no host launch overhead
    mma = (2 * 128 * 4096 * 7168 + 1.58e9) / rate
    reads = cost.memory_s - store
    assert cost.details["pipeline_stages"] == 8
    assert pipelined_time(mma, reads, 8) < compute
    assert device_s == pytest.approx(compute + store)
    assert device_s == pytest.approx(14.09e-6, rel=1e-3)


def test_default_path_ignores_the_field():
    """A GEMM naming no implementation prices as before (the generic tile search)."""
    dev = load_device(H800)
    plain = RooflineModel(dev).time(ops.gemm("g", 4096, 7168, 2048, "fp8"))
    named = RooflineModel(dev).time(ops.gemm("g", 4096, 7168, 2048, "fp8", impl=""))
    assert plain == named
    deep = RooflineModel(dev).time(ops.gemm("g", 128, 4096, 7168, "fp8", impl="deepgemm"))
    generic = RooflineModel(dev).time(ops.gemm("g", 128, 4096, 7168, "fp8"))
    assert deep.time_s > generic.time_s  # BLOCK_N 32 re-reads A from L2 for every block


def test_api_checks_and_names_the_impl():
    r = op(kind="gemm", device=H800, m=64, n=2112, k=7168, dtype="fp8", impl="deepgemm",
           timing="kernel")
    assert r.op.shape.impl == "deepgemm"
    assert r.as_dict()["shape"]["impl"] == "deepgemm"
    with pytest.raises(InputError, match="FP8"):
        op(kind="gemm", device=H800, m=64, n=64, k=128, impl="deepgemm")
    with pytest.raises(InputError, match="deepgemm-contiguous or deepgemm-masked"):
        op(kind="gemm", device=H800, m=64, n=64, k=128, dtype="fp8", batch=2, impl="deepgemm")
    with pytest.raises(InputError, match="choose one of"):
        op(kind="gemm", device=H800, m=64, n=64, k=128, dtype="fp8", impl="cutlass")
