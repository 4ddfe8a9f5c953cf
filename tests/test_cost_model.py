"""Roofline cost model: hand-computed values, physical bounds and monotonicity."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import list_devices, load_device
from xpusim.hwprofiles.spec import Device, Efficiency, MemoryLevel
from xpusim.sim import ops
from xpusim.sim.cost import CachedCostModel, RooflineModel
from xpusim.sim.errors import InputError


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
    # The output tile is stored after its main loop: max(compute, operand reads) + write.
    store = 2 * 512 * 512 / (1e12 * 0.9)
    assert cost.details["epilogue_s"] == pytest.approx(store)
    assert cost.time_s == pytest.approx(max(cost.compute_s, cost.memory_s - store) + store + 1e-5)
    assert cost.bound == "compute"


def test_stream_time_is_the_memory_curve_of_a_plain_copy():
    """``stream_time_s`` (the EP study's local passes) is the roofline's main-memory curve:
    (bytes + half) / (HBM x memory_max), the memory time of a copy of the same bytes."""
    from xpusim.sim.cost.roofline import stream_time_s

    dev = toy_device()
    assert stream_time_s(dev, 8e6) == pytest.approx((8e6 + 1e6) / (1e12 * 0.9))
    copy = ops.memcpy("c", 4e6)  # reads 4 MB, writes 4 MB
    assert RooflineModel(dev).time(copy).memory_s == pytest.approx(stream_time_s(dev, 8e6))


def test_gemm_epilogue_not_overlapped_hand_computed():
    """Output-heavy GEMM (attention scores, k = 64): the write follows the MMAs."""
    dev = toy_device(matrix_half_flops=0.0, memory_half_bytes=0.0)
    op = ops.gemm("qk", 4096, 4096, 64, "bf16", batch=8)
    cost = RooflineModel(dev).time(op)
    compute = 8 * 2 * 4096 * 4096 * 64 / (100e12 * 0.8)  # whole 128x128 waves: 1024 blocks / 4
    reads = 8 * 2 * (4096 * 64 * 2) / (1e12 * 0.9)
    store = 8 * 2 * 4096 * 4096 / (1e12 * 0.9)
    assert cost.time_s == pytest.approx(max(compute, reads) + store + 1e-5)
    # a GEMV (decode) is bound by its weight reads: the 2-byte output changes nothing visible
    gemv = RooflineModel(dev).time(ops.gemm("w", 1, 8192, 8192, "bf16"))
    assert gemv.time_s == pytest.approx(gemv.memory_s + 1e-5)


def test_gemm_epilogue_overlapped_leaves_the_last_wave():
    """Two accumulator stages (Blackwell): tile i's stores run under tile i+1's MMAs, so
    only the last wave's tiles (one 128x128 tile per core here) are written after them."""
    from dataclasses import replace

    from xpusim.hwprofiles.spec import KernelTraits

    dev = toy_device(matrix_half_flops=0.0, memory_half_bytes=0.0)
    dev = replace(dev, kernels=KernelTraits(epilogue_overlap=True))
    op = ops.gemm("qk", 4096, 4096, 64, "bf16", batch=8)
    cost = RooflineModel(dev).time(op)
    compute = 8 * 2 * 4096 * 4096 * 64 / (100e12 * 0.8)
    nbytes = 8 * 2 * (2 * 4096 * 64 + 4096 * 4096)
    tail = 4 * 128 * 128 * 2 / (1e12 * 0.9)  # 4 cores x one 128x128 bf16 tile
    assert cost.details["epilogue_s"] == pytest.approx(tail)
    reads = nbytes / (1e12 * 0.9) - tail
    assert cost.time_s == pytest.approx(max(compute, nbytes / (1e12 * 0.9), reads + tail) + 1e-5)
    # without the trait the whole output follows the MMAs (the NVIDIA default)
    serial = RooflineModel(toy_device(matrix_half_flops=0.0, memory_half_bytes=0.0)).time(op)
    assert serial.time_s > cost.time_s
    assert load_device("b200").kernels.epilogue_overlap
    assert not load_device("h100-sxm5-80gb").kernels.epilogue_overlap


def test_fp8_gemm_epilogue_writes_16_bits():
    dev = toy_device(matrix_half_flops=0.0, memory_half_bytes=0.0)
    dev = Device(**{**dev.__dict__, "matrix_peak": {"bf16": 100e12, "fp8": 200e12}})
    cost = RooflineModel(dev).time(ops.gemm("g", 4096, 4096, 512, "fp8"))
    assert cost.details["epilogue_s"] == pytest.approx(4096 * 4096 * 2 / (1e12 * 0.9))


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


def test_block_shape_choice_hand_computed():
    # 640 x 128 x 256 on 4 cores. 128x128 blocks: 5 blocks -> 2 waves -> 8 block slots
    # of 2*128*128*256 FLOPs. 64x128 blocks: 10 blocks -> 3 waves -> 12 slots of
    # 2*64*128*256 = 6 slots of the 128x128 size: the library picks 64x128.
    dev = toy_device(matrix_half_flops=0.0, core_blocks=((128, 128), (64, 128)))
    cost = RooflineModel(dev).time(ops.gemm("g", 640, 128, 256, "bf16"))
    executed = 3 * 4 * (2 * 64 * 128 * 256)
    assert cost.details["executed_flops"] == pytest.approx(executed)
    assert cost.details["wave_efficiency"] == pytest.approx(10 / 12)


def test_block_shape_ties_go_to_the_first_listed():
    # 512 x 512: 16 blocks of 128x128 (4 waves) or 64 of 64x64 (16 waves): same work;
    # either order gives the same executed FLOPs, the choice is the first listed.
    op = ops.gemm("g", 512, 512, 1024, "bf16")
    a = toy_device(core_blocks=((128, 128), (64, 64)))
    b = toy_device(core_blocks=((64, 64), (128, 128)))
    ta, tb = RooflineModel(a).time(op), RooflineModel(b).time(op)
    assert ta.details["executed_flops"] == tb.details["executed_flops"] == 2 * 512 * 512 * 1024


def test_default_block_list_is_the_single_core_block():
    eff = Efficiency(core_block_m=64, core_block_n=256)
    assert eff.block_shapes == ((64, 256),)
    # Ascend and the CPU profile keep the one block they had (their calibration stays valid).
    for name in ("ascend-910b2", "cpu-host"):
        e = load_device(name).efficiency
        assert e.block_shapes == ((e.core_block_m, e.core_block_n),)


def test_nvidia_profiles_list_several_block_shapes():
    for name in list_devices():
        dev = load_device(name)
        if dev.arch == "nvidia":
            shapes = dev.efficiency.block_shapes
            assert len(shapes) > 1, name
            assert shapes[0] == (dev.efficiency.core_block_m, dev.efficiency.core_block_n), name


def test_bad_core_blocks_are_rejected(tmp_path):
    from xpusim.hwprofiles.loader import ROOT
    from xpusim.sim.errors import ProfileError

    text = (ROOT / "devices" / "a800-sxm4-80gb.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("core_blocks = [[128, 128]", "core_blocks = [[0, 128]"))
    with pytest.raises(ProfileError, match="core_blocks"):
        load_device(str(bad))


@settings(max_examples=200, deadline=None)
@given(dims, dims, dims, st.integers(1, 8), st.sampled_from(["m", "n", "k", "batch"]),
       st.integers(1, 5000))
def test_gemm_time_with_block_choice_grows_with_work(m, n, k, batch, axis, extra):
    # The minimum over block shapes of non-decreasing functions is non-decreasing.
    model = RooflineModel(load_device("h100-sxm5-80gb"))
    base = model.time(ops.gemm("g", m, n, k, batch=batch)).time_s
    grown = {"m": m, "n": n, "k": k, "batch": batch}
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
