"""One-profile GEMM tactics (TensorRT-LLM 0.5 engines without the GEMM plugin): the tile
chosen at the profile's opt token count and run at the actual M; hand-computed values.

sim/cost/roofline.py ``tactic_tile`` / ``fixed_tactic_cost``, sim/inference/gemm_tactic.py,
docs/inference_notes.md "TensorRT-LLM 0.5: one optimisation profile".
"""

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel
from xpusim.sim.cost.roofline import tactic_tile
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.gemm_tactic import FixedTacticModel, with_gemm_tactic, with_tactic_m

# H100 SXM FP8: peak 1979 TFLOP/s x matrix_max_fp8 0.709 over 12 TB/s of L2, 1-byte operands
H100_FP8_PER_ELEMENT = 1979e12 * 0.709 / 12000e9  # 116.93 FLOP per operand element
A100_FP16_PER_ELEMENT = 312e12 * 0.9 / 7219e9 * 2  # 77.79


def test_tile_chosen_at_64_tokens_hand_computed():
    """70B TP4 down projection (N 8192, K 7168) on H100 FP8 at M = 64, every tile costed
    over its whole tile (2-CTA multicast: min + max / 2 operand rows per k), per SM per k:
    128x256 / 256x128 one wave of 65,536; 128x128 32,768; 128x64 and 64x128 16,384 (MMA
    over feed 128 x 116.9 = 14,967); 64x64: 128 blocks in one wave, feed-bound at
    96 x 116.9 = 11,225 < 16,384: the 64x64 tile."""
    dev = load_device("h100-sxm5-80gb")
    assert tactic_tile(64, 8192, 7168, 1, dev, H100_FP8_PER_ELEMENT, True) == (64, 64)


def test_a100_tile_at_64_tokens_hand_computed():
    """7B QKV (N 12288, K 4096) on A100 FP16 at M = 64, 108 SMs, no multicast: 64x128 is
    96 blocks, one wave of max(16,384, 192 x 77.8 = 14,937); 128x128 and 128x64 cost
    32,768 per SM per k; 64x64 two waves of 128 x 77.8 = 9,958 (19,916): the 64x128 tile.
    The tile chosen for M = 64 with rows counted as min(bm, M) would tie 128x128."""
    dev = load_device("a100-sxm4-80gb")
    assert tactic_tile(64, 12288, 4096, 1, dev, A100_FP16_PER_ELEMENT, False) == (64, 128)


def test_small_tile_at_large_m_is_feed_bound_hand_computed():
    """The 64x64 tile at M = 2048: 32 x 128 = 4,096 blocks, 32 waves of 132 SMs, each
    block feed-bound at 96 x 116.93 FLOP per k; the best tile for M = 2048 (128x256:
    512 blocks, 4 waves of 65,536) costs 32 x 11,225 / (4 x 65,536) = 1.370x less."""
    dev = load_device("h100-sxm5-80gb")
    op = ops.gemm("down", 2048, 8192, 7168, "fp8")
    fixed = with_tactic_m(op, 64)
    model = RooflineModel(dev)
    cost = model.time(fixed)
    feed = 32 * 132 * H100_FP8_PER_ELEMENT * 96 * 7168
    assert cost.details["executed_flops"] == pytest.approx(32 * 132 * 2 * 64 * 64 * 7168)
    assert cost.details["feed_bound_flops"] == pytest.approx(feed)
    best = model.time(op)
    assert best.details["executed_flops"] == pytest.approx(4 * 132 * 2 * 128 * 256 * 7168)
    rate = 1979e12 * 0.709
    half = dev.efficiency.matrix_half_flops
    assert cost.compute_s == pytest.approx((feed + half) / rate)
    assert cost.compute_s / best.compute_s == pytest.approx(
        (feed + half) / (4 * 132 * 65536 * 7168 + half))
    # 4,224 block slots x 11,225 FLOP x 7,168 k = 339.9 GFLOP at 1,403 TFLOP/s: 242 us
    # (+ the 1.6 us fill), against 177.9 us for the 128x256 tile (248.0 GFLOP)
    assert cost.compute_s == pytest.approx(243.3e-6, rel=1e-3)
    assert best.compute_s == pytest.approx(177.9e-6, rel=1e-3)


def test_at_the_opt_shape_the_tile_is_the_one_timed():
    """At M = opt the fixed tile is the full-tile choice; a 64-row GEMM on 64x64 tiles of
    N 8192 is one wave of 128 blocks, each at the feed bound."""
    dev = load_device("h100-sxm5-80gb")
    cost = RooflineModel(dev).time(with_tactic_m(ops.gemm("g", 64, 8192, 7168, "fp8"), 64))
    assert cost.details["feed_bound_flops"] == pytest.approx(
        132 * H100_FP8_PER_ELEMENT * 96 * 7168)


def test_only_generic_gemms_are_marked():
    gemm = ops.gemm("g", 128, 4096, 4096, "fp16")
    assert with_tactic_m(gemm, 64).shape.tactic_m == 64.0
    named = ops.gemm("g", 128, 4096, 4096, "fp8", impl="deepgemm")
    assert with_tactic_m(named, 64) is named
    already = replace(gemm, shape=replace(gemm.shape, tactic_m=8.0))
    assert with_tactic_m(already, 64).shape.tactic_m == 8.0


def test_engine_field_gates_the_wrapper():
    dev = load_device("a100-sxm4-80gb")
    inner = RooflineModel(dev)
    assert with_gemm_tactic(inner, 0) is inner
    assert isinstance(with_gemm_tactic(inner, 64), FixedTacticModel)
    assert load_engine("trtllm-0.5").gemm_tactic_tokens == 64
    for other in ("trtllm-0.6.1", "trtllm-0.10", "trtllm-1.0", "vllm-0.6"):
        assert load_engine(other).gemm_tactic_tokens == 0
