"""MXFP8 terms TransformerEngine 2.x / Megatron-Core add over per-tensor FP8 (issue 16):
the per-GEMM scale swizzle and the bf16 parameter all-gather (sim/training/lowprec.py)."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles.loader import load_device
from xpusim.sim import ops
from xpusim.sim.cost.roofline import RooflineModel
from xpusim.sim.training.backward import backward_op
from xpusim.sim.training.layers import low_precision_gemms
from xpusim.sim.training.lowprec import (
    is_scale_swizzle,
    param_gather_bytes,
    scale_swizzle_ops,
)

import xpusim


def test_swizzle_ops_hand_computed() -> None:
    # fc1 of Llama-3-8B at 16384 tokens: C[16384, 28672] = X[16384, 4096] W[4096, 28672].
    a, b = scale_swizzle_ops("fc1", 16384, 28672, 4096, 1, "mxfp8")
    assert (a.name, b.name) == ("fc1_swizzle_a", "fc1_swizzle_b")
    # one E8M0 byte per 32 elements, read once and written once
    assert a.main_bytes == 2 * 16384 * 4096 / 32 == 4_194_304
    assert b.main_bytes == 2 * 4096 * 28672 / 32 == 7_340_032
    assert a.flops == 0 and is_scale_swizzle(a) and is_scale_swizzle(b)
    assert scale_swizzle_ops("fc1", 16384, 28672, 4096, 1, "fp8") == []  # per-tensor scale


def test_swizzle_priced_on_b200_hand_computed() -> None:
    # 2048 x 4096 activation: 262,144 scales, 524,288 bytes moved; B200 roofline
    # (bytes + 10 MiB half) / (8 TB/s x 0.8744, b200's stream fraction) + 5 us launch = 6.574 us.
    op = scale_swizzle_ops("fc1", 2048, 28672, 4096, 1, "mxfp8")[0]
    cost = RooflineModel(load_device("b200")).time(op)
    assert cost.time_s == pytest.approx((524_288 + 10 * 2**20) / (8e12 * 0.8744) + 5e-6)
    assert cost.time_s == pytest.approx(6.574e-6, rel=1e-3)


def test_forward_and_backward_swizzles() -> None:
    raw = [ops.gemm("q", 4096, 8192, 1024, "bf16")]
    fwd = low_precision_gemms(raw, "mxfp8", swizzle=True)
    assert [o.name for o in fwd] == ["q_quant", "q_swizzle_a", "q_swizzle_b", "q"]
    gemm = fwd[-1]
    assert gemm.role.swizzled_scales
    bwd = backward_op(gemm)
    assert [o.name for o in bwd] == [
        "q_dgrad_quant", "q_dgrad_swizzle_a", "q_dgrad_swizzle_b", "q_dgrad",
        "q_wgrad_swizzle_a", "q_wgrad_swizzle_b", "q_wgrad"]
    sizes = [o.main_bytes for o in bwd if is_scale_swizzle(o)]
    # dgrad reads dC (4096 x 8192) and W (8192 x 1024); wgrad X (1024 x 4096) and dC
    assert sizes == [2 * 4096 * 8192 / 32, 2 * 8192 * 1024 / 32,
                     2 * 1024 * 4096 / 32, 2 * 4096 * 8192 / 32]
    assert backward_op(fwd[1]) == [] and backward_op(fwd[2]) == []
    # No swizzle off NVIDIA, nor for per-tensor FP8: the GEMM's backward has none either.
    for fmt, swz in (("mxfp8", False), ("fp8", True)):
        out = low_precision_gemms(raw, fmt, swizzle=swz)
        assert [o.name for o in out] == ["q_quant", "q"] and not out[-1].role.swizzled_scales
        assert not any(is_scale_swizzle(o) for o in backward_op(out[-1]))


def test_swizzle_in_the_step_breakdown_on_nvidia_only() -> None:
    kw = dict(model="llama-3-8b", tp=1, pp=1, dp=8, mbs=1, gbs=8, seq=2048)
    b200 = xpusim.train(system="dgx-b200", dtype="mxfp8", **kw).simulation.compute_by_kind_s
    # 32 layers x 4 linears x 2 operands forward, each ~6.5-7 us on B200
    assert 256 * 6.5e-6 < b200["fwd:scale_swizzle"] < 256 * 7.5e-6
    assert b200["bwd:scale_swizzle"] > 1.9 * b200["fwd:scale_swizzle"]  # dgrad + wgrad
    fp8 = xpusim.train(system="dgx-b200", dtype="fp8", **kw).simulation.compute_by_kind_s
    ascend = xpusim.train(system="ascend-950pr-8", dtype="mxfp8", **kw).simulation
    assert not any("swizzle" in k for k in (*fp8, *ascend.compute_by_kind_s))


def test_param_gather_bytes() -> None:
    # Megatron-Core's shared param/grad buffer gathers MXFP8 params in bf16;
    # per-tensor FP8 params (fp8_param_gather) in one byte; 16-bit runs in two.
    assert param_gather_bytes("mxfp8") == 2.0
    assert param_gather_bytes("fp8") == 1.0
    assert param_gather_bytes("bf16") == 2.0


@pytest.mark.parametrize(("dtype", "per_param"), [("mxfp8", 2.0), ("fp8", 1.0), ("bf16", 2.0)])
def test_lowered_param_all_gather_bytes(dtype: str, per_param: float) -> None:
    from xpusim.hwprofiles import load_system
    from xpusim.sim.ir import Collective
    from xpusim.sim.models.hf_config import load_model
    from xpusim.sim.parallel import ParallelPlan
    from xpusim.sim.training.simulate import lower_step

    plan = ParallelPlan(tp=1, pp=1, dp=8, mbs=1, gbs=8, seq=1024, dtype=dtype)
    step = lower_step(load_model("llama-3-8b"), load_system("dgx-b200", nodes=1), plan)
    rank = step.ranks[0]
    gathers = [t.work for t in rank.graph.tasks
               if isinstance(getattr(t, "work", None), Collective) and "param" in t.work.name]
    # One gather per DDP bucket (sim/training/dp_buckets.py): together the chunk's params.
    assert len(gathers) > 1
    total = sum(g.bytes for g in gathers)
    assert total == pytest.approx(per_param * rank.rank_plan.chunks[0].dense_params)
