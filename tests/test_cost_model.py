"""Roofline cost model: hand-computed values, physical bounds and monotonicity."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwprofiles import list_devices, load_device
from hwprofiles.spec import Device, Efficiency, MemoryLevel
from sim import ops
from sim.cost import CachedCostModel, RooflineModel
from sim.errors import InputError


def toy_device(**eff) -> Device:
    params = dict(matrix_max=0.8, matrix_half_flops=1e9, vector_max=0.5, vector_half_flops=1e6,
                  memory_max=0.9, memory_half_bytes=1e6, launch_overhead_s=1e-5,
                  core_block_m=128, core_block_n=128)
    params.update(eff)
    return Device(
        name="toy", vendor="test", arch="nvidia", description="toy",
        matrix_peak={"bf16": 100e12}, vector_peak={"bf16": 10e12}, marketing_peak={},
        cores=4, matrix_cores=4, vector_cores=4, clock_hz=1e9,
        hbm_capacity=16 * 2**30, hbm_bandwidth=1e12,
        memory=(MemoryLevel("hbm", 16 * 2**30, 1e12),), matrix_tile=(16, 16, 16),
        efficiency=Efficiency(**params),
    )


def test_gemm_hand_computed():
    dev = toy_device()
    # 512 x 512 x 1024: 4 x 4 = 16 blocks of 128x128 over 4 cores = 4 full waves.
    op = ops.gemm("g", 512, 512, 1024, "bf16")
    cost = RooflineModel(dev).time(op)
    flops = 2 * 512 * 512 * 1024
    assert cost.details["wave_efficiency"] == pytest.approx(1.0)
    assert cost.compute_s == pytest.approx((flops + 1e9) / (100e12 * 0.8))
    nbytes = 2 * (512 * 1024 + 1024 * 512 + 512 * 512)
    assert cost.memory_s == pytest.approx((nbytes + 1e6) / (1e12 * 0.9))
    assert cost.time_s == pytest.approx(max(cost.compute_s, cost.memory_s) + 1e-5)
    assert cost.bound == "compute"


def test_gemm_wave_quantisation_hand_computed():
    dev = toy_device(matrix_half_flops=0.0)
    # 5 blocks of 128x128 on 4 cores -> 2 waves, the second with one busy core.
    op = ops.gemm("g", 640, 128, 256, "bf16")
    cost = RooflineModel(dev).time(op)
    executed = 2 * 4 * (2 * 128 * 128 * 256)
    assert cost.details["executed_flops"] == pytest.approx(executed)
    assert cost.details["wave_efficiency"] == pytest.approx(5 / 8)
    assert cost.compute_s == pytest.approx(executed / (100e12 * 0.8))


def test_tile_padding_counts_wasted_work():
    dev = toy_device(matrix_half_flops=0.0)
    odd = RooflineModel(dev).time(ops.gemm("g", 17, 17, 17, "bf16"))
    even = RooflineModel(dev).time(ops.gemm("g", 32, 32, 32, "bf16"))
    assert odd.compute_s == pytest.approx(even.compute_s)


def test_vector_op_and_memory_bound():
    dev = toy_device()
    op = ops.elementwise("add", 1e8, "bf16", 1.0, inputs=2)
    cost = RooflineModel(dev).time(op)
    assert cost.compute_s == pytest.approx((1e8 + 1e6) / (10e12 * 0.5))
    assert cost.memory_s == pytest.approx((3 * 2e8 + 1e6) / (1e12 * 0.9))
    assert cost.bound == "memory"


def test_tiny_op_is_overhead_bound():
    cost = RooflineModel(toy_device()).time(ops.elementwise("e", 10, "bf16"))
    assert cost.bound == "overhead"


def test_negative_sizes_are_rejected():
    with pytest.raises(InputError, match="m must be >= 0"):
        ops.gemm("g", -1, 4, 4)


def test_cache_returns_same_cost():
    model = CachedCostModel(RooflineModel(toy_device()))
    a = model.time(ops.gemm("a", 64, 64, 64))
    b = model.time(ops.gemm("b", 64, 64, 64))
    assert a is b


dims = st.integers(1, 20000)


@pytest.mark.parametrize("name", list_devices())
def test_no_device_beats_its_physical_roofline(name):
    dev = load_device(name)
    model = RooflineModel(dev)
    for m, n, k in [(8192, 8192, 8192), (1, 4096, 4096), (77, 130, 5000), (16, 16, 16)]:
        op = ops.gemm("g", m, n, k, "bf16")
        cost = model.time(op)
        assert cost.time_s >= op.flops / dev.peak_for("matrix", "bf16")
        assert cost.time_s >= op.main_bytes / dev.hbm_bandwidth


@settings(max_examples=200, deadline=None)
@given(dims, dims, dims, st.sampled_from(["m", "n", "k"]), st.integers(1, 5000))
def test_gemm_time_grows_with_work(m, n, k, axis, extra):
    model = RooflineModel(load_device("ascend-910b2"))
    base = model.time(ops.gemm("g", m, n, k)).time_s
    grown = {"m": m, "n": n, "k": k}
    grown[axis] += extra
    assert model.time(ops.gemm("g", **grown)).time_s >= base * (1 - 1e-12)


@settings(max_examples=100, deadline=None)
@given(st.floats(1, 1e12), st.floats(1, 1e12))
def test_more_memory_bandwidth_never_slows_an_op(numel, scale):
    dev = toy_device()
    faster = Device(**{**dev.__dict__, "hbm_bandwidth": dev.hbm_bandwidth * (1 + scale / 1e12)})
    op = ops.elementwise("e", numel, "bf16")
    assert RooflineModel(faster).time(op).time_s <= RooflineModel(dev).time(op).time_s


def test_achieved_fraction_of_large_gemm_matches_profile_efficiency():
    dev = load_device("ascend-910b2")
    op = ops.gemm("g", 8192, 8192, 8192, "bf16")
    cost = RooflineModel(dev).time(op)
    achieved = op.flops / cost.time_s / dev.peak_for("matrix", "bf16")
    # eff = max * w/(w+half) * wave_eff, with 2048 blocks on 24 cores (86 waves)
    expected = dev.efficiency.matrix_max * op.flops / (op.flops + dev.efficiency.matrix_half_flops)
    expected *= 2048 / (86 * 24)
    assert achieved == pytest.approx(expected, rel=2e-3)
    assert not math.isnan(achieved)
