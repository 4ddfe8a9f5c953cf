"""First-touch bytes of a CPU kernel graph (sim/cost/first_touch.py, sim/workloads/data_flow.py):
a hand-computed price, the builder's statement, the fit's restatement, and off elsewhere."""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.calibrate.fit import FitParams, build_table, case_times
from xpusim.calibrate.fit_result import FitResult
from xpusim.calibrate.overlay import overlay_doc, write_overlay
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel
from xpusim.sim.ir import MAIN_MEMORY
from xpusim.sim.workloads.attention import describe_fast_attention
from xpusim.sim.workloads.data_flow import DataFlow

KIB, MIB = 1024.0, 1024.0**2
CPU = load_device("cpu-host")
BW, MEM_MAX, HALF = 40e9, 0.5, 1000.0  # GB/s of the profile; chosen efficiency and half bytes
CACHE_SPEEDUP = 2.0


def calibrated(device=CPU, first_touch: bool = True):
    """``device`` with a cache tier (32 MiB at 2x) and, by default, the first-touch rule."""
    eff = replace(device.efficiency, memory_max=MEM_MAX, memory_half_bytes=HALF,
                  cache_bytes=32 * MIB, cache_speedup=CACHE_SPEEDUP, first_touch=first_touch)
    return replace(device, efficiency=eff)


def copy_op(first: float):
    """A 128 KiB copy (256 KiB of traffic), ``first`` bytes of it touched first in the call."""
    return replace(ops.memcpy("c", 128 * KIB), first_touch_bytes=first)


def test_profile_bandwidth() -> None:
    assert CPU.hbm_bandwidth == BW


def test_first_touch_comes_from_main_memory() -> None:
    # All 256 KiB touched first: (256 KiB + 1000) / (40 GB/s x 0.5) = 13.16 us, not the
    # cache tier's (256 KiB + 1000) / (40 GB/s x 0.5 x 2) = 6.58 us.
    model = RooflineModel(calibrated())
    assert model.memory_time(copy_op(256 * KIB)) == pytest.approx((256 * KIB + HALF) / (BW * MEM_MAX))
    assert model.memory_time(copy_op(0.0)) == pytest.approx(
        (256 * KIB + HALF) / (BW * MEM_MAX * CACHE_SPEEDUP))


def test_split_op_sums_its_tiers() -> None:
    # 160 KiB first touched (main memory), 96 KiB hot (the cache tier, 2x):
    # (160 KiB + 96 KiB / 2 + 1000) / (40 GB/s x 0.5) = 10.70 us.
    t = RooflineModel(calibrated()).memory_time(copy_op(160 * KIB))
    assert t == pytest.approx((160 * KIB + 96 * KIB / CACHE_SPEEDUP + HALF) / (BW * MEM_MAX))


@pytest.mark.parametrize("name", ["h100-sxm5-80gb", "ascend-910b3"])
def test_off_on_gpu_and_npu_profiles(name: str) -> None:
    dev = load_device(name)
    for d in (dev, calibrated(dev)):
        op = copy_op(256 * KIB)
        assert RooflineModel(d).time(op) == RooflineModel(d).time(replace(op, first_touch_bytes=0.0))


def test_off_on_a_cpu_overlay_without_the_field() -> None:
    assert not load_device("cpu-host-calibrated").efficiency.first_touch
    dev = calibrated(first_touch=False)
    op = copy_op(256 * KIB)
    assert RooflineModel(dev).time(op) == RooflineModel(dev).time(replace(op, first_touch_bytes=0.0))


def test_tracker_first_touches() -> None:
    flow = DataFlow()
    a = flow.touch(ops.elementwise("a", 1000, "fp32", 1.0, 0, 1), {"x": 4000})  # writes x
    b = flow.touch(ops.elementwise("b", 1000, "fp32", 1.0, 1, 1), {"x": 4000, "y": 4000})
    c = flow.touch(ops.elementwise("c", 1000, "fp32", 1.0, 2, 1), {"x": 4000, "y": 4000})
    assert a.first_touch_bytes == 4000.0  # x written for the first time
    assert b.first_touch_bytes == 4000.0  # reads x (touched), writes y (first)
    assert c.first_touch_bytes == 4000.0  # x, y touched; 4000 bytes unnamed (an input)


def test_fast_attention_states_its_first_touches() -> None:
    g = describe_fast_attention(1, 1, 64, 64)  # one query block, one key block, one tile
    by_name = {op.name: op for op in g.ops()}
    blk = 64 * 64 * 4.0
    # QK^T reads the scaled Q block (touched by q0.scale); the kernel's K tile and its own
    # fresh output s are first touches.
    assert by_name["q0.k0.qk0"].first_touch_bytes == pytest.approx(2 * blk)
    # rowmax reads s, written by the QK^T GEMM, and writes its fresh row maxima.
    assert by_name["q0.k0.rowmax"].first_touch_bytes == pytest.approx(64 * 4.0)
    assert by_name["q0.store"].first_touch_bytes == pytest.approx(blk)  # the output slice
    assert all(0 <= op.first_touch_bytes <= op.bytes[MAIN_MEMORY] for op in g.ops())


def test_fit_restates_first_touches() -> None:
    graphs = [describe_fast_attention(1, 2, 256, 64, causal=c) for c in (False, True)]
    p = FitParams(0.4, 3e6, 0.3, 1.0, 0.6, 1.0, 3e-6, 2.0, 0.3)
    table = build_table(graphs, CPU)
    assert table.cold_bytes.sum() > 0
    dev = p.to_device(CPU)
    assert dev.efficiency.first_touch
    model = RooflineModel(dev)
    priced = [sum(model.time(op).time_s for op in g.ops()) for g in graphs]
    assert case_times(table, p) == pytest.approx(priced, rel=1e-9)
    gpu = load_device("h100-sxm5-80gb")
    assert not p.to_device(gpu).efficiency.first_touch


def test_overlay_records_the_rule(tmp_path) -> None:
    p = FitParams(0.4, 3e6, 0.3, 1.0, 0.6, 1.0, 3e-6, 2.0, 0.3)
    result = FitResult(p, p, 0.1, 0.05, 0.04, 0.09, 2, (), (), True, "ok")
    doc = overlay_doc(CPU, result, {"device_name": "test", "date": "2026-01-01"})
    assert doc["efficiency"]["first_touch"] is True
    loaded = load_device("cpu-host", calibration=write_overlay(tmp_path / "c.toml", doc))
    assert loaded.efficiency.first_touch
