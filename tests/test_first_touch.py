"""Reuse-aware memory tiers of a CPU kernel graph (sim/cost/l2_reuse.py, sim/workloads/reuse.py):
hand-computed prices, the builders' distances, the fit's restatement, and off elsewhere."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from xpusim.calibrate.fit import FitParams, build_table, case_times, fit
from xpusim.calibrate.suites import SUITES
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel
from xpusim.sim.ir import MAIN_MEMORY
from xpusim.sim.workloads.attention import describe_fast_attention
from xpusim.sim.workloads.reuse import Reuse, repeated_call

KIB, MIB = 1024.0, 1024.0**2
CPU = load_device("cpu-host")
BW, MEM_MAX, HALF = 40e9, 0.5, 1000.0  # GB/s of the profile; chosen efficiency and half bytes
CACHE_SPEEDUP, L2_SPEEDUP = 2.0, 3.0


def calibrated(device=CPU, l2_bytes: float = MIB):
    """``device`` with a cache tier (32 MiB at 2x) and an L2 tier (``l2_bytes`` at 3x that)."""
    eff = replace(device.efficiency, memory_max=MEM_MAX, memory_half_bytes=HALF,
                  cache_bytes=32 * MIB, cache_speedup=CACHE_SPEEDUP, l2_bytes=l2_bytes,
                  l2_speedup=L2_SPEEDUP)
    return replace(device, efficiency=eff)


def copy_op(distance: float):
    """A 128 KiB copy (256 KiB of traffic) whose whole traffic was touched ``distance`` ago."""
    op = ops.memcpy("c", 128 * KIB)
    return replace(op, reuse=((op.bytes[MAIN_MEMORY], distance),))


def test_profile_lists_a_one_mib_l2() -> None:
    level = CPU.level("l2")
    assert level is not None and level.scope == "per_core" and level.capacity_bytes == MIB


def test_operand_within_l2_moves_at_the_l2_rate() -> None:
    # 256 KiB touched 256 KiB ago (the op just before produced it): 256 KiB / (40 GB/s x
    # 0.5 x 2 x 3) = 2.18 us, no half bytes (a stream already under way in L2).
    t = RooflineModel(calibrated()).memory_time(copy_op(256 * KIB))
    assert t == pytest.approx(256 * KIB / (BW * MEM_MAX * CACHE_SPEEDUP * L2_SPEEDUP))


def test_a_4_mib_sweep_between_leaves_the_cache_tier() -> None:
    # The same op with a 4 MiB sweep in between (distance 4.25 MiB > the 1 MiB L2, within
    # the 32 MiB tier): (256 KiB + 1000) / (40 GB/s x 0.5 x 2) = 6.60 us.
    t = RooflineModel(calibrated()).memory_time(copy_op(4 * MIB + 256 * KIB))
    assert t == pytest.approx((256 * KIB + HALF) / (BW * MEM_MAX * CACHE_SPEEDUP))
    # Without stated reuse the op's size picks the same tier.
    plain = RooflineModel(calibrated()).memory_time(ops.memcpy("c", 128 * KIB))
    assert t == pytest.approx(plain)


def test_first_touch_comes_from_main_memory() -> None:
    # Not touched before in the call (infinite distance): (256 KiB + 1000) / (40 GB/s x 0.5).
    t = RooflineModel(calibrated()).memory_time(copy_op(math.inf))
    assert t == pytest.approx((256 * KIB + HALF) / (BW * MEM_MAX))


def test_split_op_sums_its_tiers() -> None:
    # 96 KiB in L2, 160 KiB first touched: 96 KiB at the L2 rate + (160 KiB + half) at main.
    op = replace(ops.memcpy("c", 128 * KIB), reuse=((96 * KIB, 300 * KIB), (160 * KIB, math.inf)))
    t = RooflineModel(calibrated()).memory_time(op)
    expected = (96 * KIB / (BW * MEM_MAX * CACHE_SPEEDUP * L2_SPEEDUP)
                + (160 * KIB + HALF) / (BW * MEM_MAX))
    assert t == pytest.approx(expected)


@pytest.mark.parametrize("name", ["h100-sxm5-80gb", "ascend-910b3"])
def test_off_on_gpu_and_npu_profiles(name: str) -> None:
    dev = load_device(name)
    tiered = calibrated(dev)
    for distance in (256 * KIB, math.inf):
        op = copy_op(distance)
        assert RooflineModel(tiered).time(op) == RooflineModel(tiered).time(replace(op, reuse=()))
        assert RooflineModel(dev).time(op) == RooflineModel(dev).time(replace(op, reuse=()))


def test_off_on_a_cpu_overlay_without_the_tier() -> None:
    dev = calibrated(l2_bytes=0.0)
    for distance in (256 * KIB, math.inf):
        op = copy_op(distance)
        assert RooflineModel(dev).time(op) == RooflineModel(dev).time(replace(op, reuse=()))


def test_tracker_distances() -> None:
    r = Reuse()
    a = r.touch(ops.elementwise("a", 1000, "fp32", 1.0, 0, 1), {"x": 4000})  # writes x
    b = r.touch(ops.elementwise("b", 1000, "fp32", 1.0, 1, 1), {"x": 4000, "y": 4000})
    c = r.touch(ops.elementwise("c", 1000, "fp32", 1.0, 2, 1), {"x": 4000, "y": 4000, "z": 4000})
    assert a.reuse == ((4000.0, math.inf),)  # a first touch
    assert b.reuse == ((4000.0, 8000.0), (4000.0, math.inf))  # x: 0 bytes between + own 8000
    # x and y last touched by b, which ended where c starts: distance = c's own 12000.
    assert c.reuse == ((4000.0, 12000.0), (4000.0, 12000.0), (4000.0, math.inf))
    r.touch(ops.memcpy("sweep", 4 * MIB), {})  # 8 MiB of traffic on other data
    d = r.touch(ops.elementwise("d", 1000, "fp32", 1.0, 1, 0), {"x": 4000})
    assert d.reuse == ((4000.0, 8 * MIB + 4000.0),)


def test_repeated_call_distance_is_the_call() -> None:
    built = repeated_call([ops.memcpy("c", 1000.0), ops.memcpy("d", 500.0)])
    assert [op.reuse for op in built] == [((2000.0, 3000.0),), ((1000.0, 3000.0),)]
    micro = SUITES["add"].graph({"numel": 4096}, "fp32").ops()[0]
    assert micro.reuse == ((3 * 4096 * 4.0, 3 * 4096 * 4.0),)


def test_fast_attention_states_every_byte() -> None:
    g = describe_fast_attention(1, 1, 64, 64)  # one query block, one key block, one tile
    by_name = {op.name: op for op in g.ops()}
    for op in g.ops():
        assert sum(b for b, _ in op.reuse) == pytest.approx(op.bytes[MAIN_MEMORY])
    # rowmax reads s, written by the QK^T GEMM just before: distance = its own traffic.
    rowmax = by_name["q0.k0.rowmax"]
    assert (64 * 64 * 4.0, rowmax.bytes[MAIN_MEMORY]) in rowmax.reuse
    # QK^T reads the scaled Q block (written by q0.scale, the init fills between) and,
    # not touched before in the call, the kernel's K tile and its own fresh output s.
    qk = by_name["q0.k0.qk0"]
    q_bytes = 64 * 64 * 4.0
    between = sum(by_name[f"q0.{n}"].bytes[MAIN_MEMORY] for n in ("init_max", "init_sum", "init_o"))
    assert qk.reuse == ((q_bytes, between + qk.bytes[MAIN_MEMORY]), (2 * q_bytes, math.inf))


def test_fit_restates_the_tiers() -> None:
    graphs = [describe_fast_attention(1, 2, 256, 64, causal=c) for c in (False, True)]
    graphs += [SUITES["memcpy"].graph({"bytes": b}, "fp32") for b in (16384.0, 4 * MIB)]
    p = FitParams(0.4, 3e6, 0.3, 1.0, 0.6, 1.0, 3e-6, 2.0, 0.3, l2_speedup=2.5)
    table = build_table(graphs, CPU)
    model = RooflineModel(p.to_device(CPU))
    priced = [sum(model.time(op).time_s for op in g.ops()) for g in graphs]
    assert case_times(table, p) == pytest.approx(priced, rel=1e-9)
    assert p.to_device(CPU).efficiency.l2_bytes == MIB


def test_gpu_fit_holds_the_l2_rate() -> None:
    gpu = load_device("h100-sxm5-80gb")
    graphs = [[ops.memcpy("c", n)] for n in (1e4, 1e5, 1e6, 1e7, 1e8)]
    graphs += [[ops.gemm("g", m, 1024, 1024, "bf16")] for m in (64, 256, 1024, 4096)]
    table = build_table(graphs, gpu)
    assert not table.l2_bytes.any()
    start = FitParams.from_device(gpu)
    truth = FitParams(0.6, 1e9, 0.5, 1e7, 0.8, 1e5, 5e-6)
    result = fit(table, case_times(table, truth), start, fit_kinds=False)
    assert result.params.l2_speedup == start.l2_speedup == 1.0
    assert "l2_speedup" not in result.at_bound
    assert result.params.to_device(gpu).efficiency.l2_bytes == 0.0
