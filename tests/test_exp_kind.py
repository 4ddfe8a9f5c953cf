"""torch.exp as ATen runs it: its own op kind, an `exp` microbenchmark, a fitted speed.

Hand-computed values on cpu-host (hwprofiles/devices/cpu-host.toml): vector fp32 peak
0.536 TFLOP/s, vector_max 0.5, vector_half 0.48 MFLOP, launch 3 us, overlap 1.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.calibrate.exp_micro import exp_ops
from xpusim.calibrate.suites import SUITES, split_shapes
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel
from xpusim.sim.ir import OpKind
from xpusim.sim.workloads.attention import EXP_FLOPS, describe_fast_attention

CPU = load_device("cpu-host")


def _with_exp_speed(speed: float):
    return replace(CPU, efficiency=replace(CPU.efficiency, kind_speed={"exp": speed}))


def test_exp_suite_prices_one_exp_kind_op():
    (op,) = exp_ops({"numel": 1e6}, "fp32")
    assert op.kind == OpKind.EXP
    assert op.flops == 20e6  # EXP_FLOPS = 20 per element
    assert dict(op.bytes) == {"hbm": 8e6}  # one fp32 read + one write per element
    cost = RooflineModel(CPU).time(op)
    # (20e6 + 0.48e6) / (0.536e12 * 0.5) = 76.418 us
    assert cost.compute_s == pytest.approx(2.048e7 / 2.68e11, rel=1e-12)
    assert cost.overhead_s == pytest.approx(3e-6)


def test_fitted_exp_speed_divides_both_terms():
    (op,) = exp_ops({"numel": 1e6}, "fp32")
    base = RooflineModel(CPU).time(op)
    slow = RooflineModel(_with_exp_speed(0.5)).time(op)
    assert slow.compute_s == pytest.approx(2 * 2.048e7 / 2.68e11, rel=1e-12)  # 152.84 us
    assert slow.memory_s == pytest.approx(2 * base.memory_s, rel=1e-12)
    assert slow.time_s - 3e-6 == pytest.approx(2 * (base.time_s - 3e-6), rel=1e-12)


@pytest.mark.parametrize("device", ["cpu-host", "h100-sxm5-80gb", "ascend-910b2"])
def test_uncalibrated_exp_costs_what_an_elementwise_op_costs(device):
    dev = load_device(device)
    exp = ops.elementwise("e", 3e5, "fp32", EXP_FLOPS, 1, 1, OpKind.EXP)
    ew = ops.elementwise("e", 3e5, "fp32", EXP_FLOPS, 1, 1)
    assert RooflineModel(dev).time(exp).time_s == RooflineModel(dev).time(ew).time_s


def test_fast_attention_torch_exps_are_exp_kind():
    # batch 1, 2 heads, seq 128, one 128 x 128 block (outer 128, inner 64): 32768 scores
    g = describe_fast_attention(1, 2, 128, 64, outer_block=128, inner_block=64)
    exps = {op.name: op for op in g.ops() if op.name.endswith("exp")}
    assert {op.kind for op in exps.values()} == {OpKind.EXP}
    (p,) = [op for n, op in exps.items() if n.endswith(".exp")]
    (alpha,) = [op for n, op in exps.items() if n.endswith(".alpha_exp")]
    assert p.flops == 20 * 2 * 128 * 128  # 655360
    assert alpha.flops == 20 * 2 * 128  # 5120: one per row statistic
    assert [op.name for op in g.ops() if op.kind == OpKind.EXP] == list(exps)  # only these two


def test_exp_suite_registered_with_enough_fit_shapes():
    suite = SUITES["exp"]
    assert suite.kind == "micro" and suite.full == SUITES["add"].full  # the add/silu sizes
    assert [s["numel"] for s in suite.quick] == [4096, 32768, 262144, 4194304]
    # the fit gives a kind its own speed from >= 3 fit cases (calibrate/fit.py)
    assert split_shapes("exp", suite.quick, 20260).count("fit") == 3
    assert split_shapes("exp", suite.full, 20260).count("fit") == 4
