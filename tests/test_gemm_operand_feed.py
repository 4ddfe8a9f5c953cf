"""GEMM operand-feed bound (sim/cost/roofline.py ``block_work``): hand-computed values.

A CTA tile loads (bm + bn) x k operand elements from L2 and cannot run its MMAs faster than
the SM's share of L2 bandwidth delivers them; on Hopper a 2-CTA cluster multicasts the larger
operand tile (each SM then loads min + max / 2 rows of operands per k).
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel
from xpusim.sim.cost.roofline import block_work, gemm_quantisation


def test_small_hopper_gemm_is_feed_bound_hand_computed():
    """64 x 64 x 1024 BF16 on an H100 SXM: one 64x64 block whatever the tile, feed-bound."""
    dev = load_device("h100-sxm5-80gb")
    cost = RooflineModel(dev).time(ops.gemm("g", 64, 64, 1024, "bf16"))
    rate = 989e12 * 0.8  # bf16 peak x matrix_max
    per_byte = rate / 12000e9  # FLOPs the SM runs while its L2 share delivers one byte
    mma = 2 * 64 * 64 * 1024  # 8.39 MFLOP
    feed = per_byte * 2 * (64 + 64 / 2) * 1024  # 96 rows of 2-byte operands per k: 12.96 M
    assert feed > mma
    work = 132 * feed  # one wave: every SM counts the block
    assert cost.details["executed_flops"] == pytest.approx(132 * mma)
    assert cost.details["feed_bound_flops"] == pytest.approx(work)
    assert cost.compute_s == pytest.approx((work + 1.58e9) / rate)
    assert cost.compute_s == pytest.approx(4.1598e-6, rel=1e-4)


def test_ampere_has_no_multicast_hand_computed():
    """A100: no thread-block clusters, each CTA loads both of its operand tiles."""
    dev = load_device("a100-sxm4-80gb")
    cost = RooflineModel(dev).time(ops.gemm("g", 64, 64, 1024, "bf16"))
    rate = dev.peak_for("matrix", "bf16") * dev.efficiency.matrix_max
    assert rate == pytest.approx(312e12 * 0.8307)
    feed = rate / 7219e9 * 2 * (64 + 64) * 1024  # 9.41 M > 8.39 M of MMA work
    assert feed > 2 * 64 * 64 * 1024
    assert cost.details["feed_bound_flops"] == pytest.approx(108 * feed)


def test_wide_tiles_of_large_gemms_are_not_feed_bound():
    """8192^3 BF16 on H100: 128x256 tiles load 128 + 256 / 2 = 256 rows x 131.9 FLOP per k,
    under their 65,536 FLOP of MMA; 64x64 tiles (125 waves, the least MMA work without the
    bound) load 96 rows x 131.9 = 12,659 > 8,192 and lose to 128x256 (16 waves)."""
    dev = load_device("h100-sxm5-80gb")
    per_element = 989e12 * 0.8 / 12000e9 * 2
    assert block_work(8192, 8192, 8192, 1, 128, 256, 132, per_element, True) == pytest.approx(
        block_work(8192, 8192, 8192, 1, 128, 256, 132))
    executed, _ = gemm_quantisation(8192, 8192, 8192, 1, dev)
    assert executed == pytest.approx(125 * 132 * 2 * 64 * 64 * 8192)
    cost = RooflineModel(dev).time(ops.gemm("g", 8192, 8192, 8192, "bf16"))
    assert cost.details["executed_flops"] == pytest.approx(16 * 132 * 2 * 128 * 256 * 8192)
    assert "feed_bound_flops" not in cost.details


def test_feed_bound_picks_a_wider_tile_hand_computed():
    """1024 x 9216 x 14336 FP8 on H100: 128x64 blocks would waste least MMA work (9 waves of
    1152 blocks), but with multicast each loads 64 + 64 = 128 rows x 117.0 FLOP/B = 14,975
    FLOP per k against 16,384 of MMA: not bound; without the bound the choice is the same."""
    dev = load_device("h100-sxm5-80gb")
    per_byte = 1979e12 * 0.709 / 12000e9
    assert block_work(1024, 9216, 14336, 1, 128, 64, 132, per_byte, True) == pytest.approx(
        block_work(1024, 9216, 14336, 1, 128, 64, 132))
    # without multicast (an Ampere-like feed) 192 rows x 117 = 22,462 > 16,384: bound
    assert block_work(1024, 9216, 14336, 1, 128, 64, 132, per_byte, False) == pytest.approx(
        9 * 132 * per_byte * 192 * 14336)
    cost = RooflineModel(dev).time(ops.gemm("g", 1024, 9216, 14336, "fp8"))
    assert cost.details["executed_flops"] == pytest.approx(9 * 132 * 2 * 128 * 64 * 14336)


def test_devices_without_l2_bandwidth_are_unchanged():
    dev = load_device("ascend-910b2")
    cost = RooflineModel(dev).time(ops.gemm("g", 64, 64, 1024, "bf16"))
    executed, _ = gemm_quantisation(64, 64, 1024, 1, dev)
    assert cost.details["executed_flops"] == pytest.approx(executed)
    assert "feed_bound_flops" not in cost.details


dims = st.integers(1, 3000)


@settings(max_examples=150, deadline=None)
@given(dims, dims, dims, st.integers(1, 4), st.sampled_from(["m", "n", "k", "batch"]),
       st.integers(1, 3000), st.sampled_from(["h100-sxm5-80gb", "a100-sxm4-80gb"]),
       st.sampled_from(["bf16", "fp8", "fp32"]))
def test_feed_bound_gemm_time_grows_with_work(m, n, k, batch, axis, extra, device, dtype):
    model = RooflineModel(load_device(device))
    base = model.time(ops.gemm("a", m, n, k, dtype, batch=batch)).time_s
    grown = {"m": m, "n": n, "k": k, "batch": batch}
    grown[axis] += extra if axis != "batch" else 1
    bigger = model.time(ops.gemm("b", grown["m"], grown["n"], grown["k"], dtype,
                                 batch=grown["batch"])).time_s
    assert bigger >= base * (1 - 1e-12)
