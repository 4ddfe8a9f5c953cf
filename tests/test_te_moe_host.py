"""Host time of Megatron-Core MoE layers with TransformerEngine's grouped experts
(``sim.training.te_moe_host``) and the host running ahead of the device across a unit's
runs (``sim.cost.pricing``).

Hand-computed values: 10 us per op (framework 'eager'); per local expert 1.94 ms / 32 =
60.625 us per GroupedLinear forward, 13.7 us per backward GEMM; 1.72 ms for the router
and preprocess; FP8 current scaling 3 kernels and MXFP8 1 kernel per expert cast.
"""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim import ops
from xpusim.sim.cost.pricing import Pricing
from xpusim.sim.ir import Chain, OpKind, Role, Segment
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.lowprec import cast_transpose_op
from xpusim.sim.training.simulate import lower_step, price_step, step_pricing
from xpusim.sim.training.te_moe_host import (
    op_extra_host_s,
    segment_extra_host_s,
    te_host_scale,
)

US = 1e-6
HOST = 10 * US
EXPERT = Role("experts", expert=True)


def _grouped(name: str, experts: int, dtype: str = "bf16"):
    return ops.gemm(name, 256, 768, 2048, dtype, experts, role=EXPERT)


def test_grouped_gemm_forward_costs_each_local_expert():
    up = _grouped("experts_up", 16)
    # 16 x 60.625 us, less the one op it is already charged as
    assert op_extra_host_s(up, "fwd", HOST, {}) == pytest.approx((16 * 60.625 - 10) * US)
    assert op_extra_host_s(up, "recompute", HOST, {}) == pytest.approx(960.0 * US)
    # backward: one C++ GEMM call per local expert, 13.7 us
    dgrad = _grouped("experts_up_dgrad", 16)
    assert op_extra_host_s(dgrad, "bwd", HOST, {}) == pytest.approx((16 * 13.7 - 10) * US)


def test_dense_gemm_and_plain_ops_cost_nothing_extra():
    dense = ops.gemm("mlp_up", 256, 768, 2048, "bf16", role=Role("mlp"))
    act = ops.elementwise("experts_act", 1e6, "bf16", 1.0, role=EXPERT)
    assert op_extra_host_s(dense, "fwd", HOST, {}) == 0.0
    assert op_extra_host_s(act, "fwd", HOST, {}) == 0.0


@pytest.mark.parametrize("fmt, expect_us", [
    ("fp8", 16 * 3 * 10 - 10),    # amax + scale + cast per expert: 470 us
    ("mxfp8", 16 * 1 * 10 - 10),  # one cast per expert: 150 us
    ("bf16", 0),                  # no quantisation
])
def test_expert_cast_is_per_expert(fmt, expect_us):
    cast = cast_transpose_op("experts_up", 4096 * 2048, fmt, role=EXPERT)
    gemms = {"experts_up": (16.0, fmt)}
    assert op_extra_host_s(cast, "fwd", HOST, gemms) == pytest.approx(expect_us * US)


def test_router_and_preprocess_once_per_forward():
    topk = ops.elementwise("topk", 4096 * 128, "fp32", 5.0, kind=OpKind.ROUTING,
                           role=Role("router"))
    # 1.72 ms, less the router GEMM's and the top-k's own ops
    assert op_extra_host_s(topk, "fwd", HOST, {}) == pytest.approx(1700.0 * US)
    assert op_extra_host_s(topk, "bwd", HOST, {}) == 0.0


def test_segment_sum_and_frameworks():
    run = (cast_transpose_op("experts_up", 4096 * 2048, "mxfp8", role=EXPERT),
           _grouped("experts_up", 16, "mxfp8"),
           ops.elementwise("experts_act", 1e6, "bf16", 1.0, role=EXPERT),
           cast_transpose_op("experts_down", 4096 * 768, "mxfp8", role=EXPERT),
           _grouped("experts_down", 16, "mxfp8"))
    # 2 x 150 (casts) + 2 x 960 (GEMMs) = 2,220 us
    assert segment_extra_host_s(run, "fwd", "eager") == pytest.approx(2220.0 * US)
    assert segment_extra_host_s(run, "fwd", "cuda-graphs") == 0.0
    assert segment_extra_host_s(run, "fwd", "torchtitan-eager") == 0.0


def test_host_scale_by_cpu():
    # reference Xeon 8570 (4.0 GHz x 1.19) over the DGX H100's Xeon 8480 (3.8 x 1.19)
    assert te_host_scale(load_system("dgx-h100", nodes=1)) == pytest.approx(4.0 / 3.8)
    assert te_host_scale(load_system("dgx-b200", nodes=1)) == 1.0  # its CPU is the reference
    # GB200 / GB300: the superchip's Grace, 2.8 GHz x 1.19 against the 8570's 4.0 x 1.19
    assert te_host_scale(load_system("gb200-nvl72", nodes=1)) == pytest.approx(4.0 / 2.8)
    assert te_host_scale(load_system("gb300-nvl72", nodes=1)) == pytest.approx(4.0 / 2.8)
    # DGX B300: Xeon 6 6776P, 3.9 GHz x 1.19
    assert te_host_scale(load_system("dgx-b300", nodes=1)) == pytest.approx(4.0 / 3.9)
    assert te_host_scale(load_system("aws-p5", nodes=1)) == 1.0  # no host entry
    assert te_host_scale(load_system("atlas-800t-a2", nodes=1)) == 0.0  # no TE


def _pricing(times: dict, scale: float = 1.0) -> Pricing:
    return Pricing(lambda op: times[op.name], lambda c: 0.0, host_op_s=HOST, host_scale=scale)


def _op(name: str):
    return ops.elementwise(name, 1.0, "bf16", 0.0)


def test_host_runs_ahead_across_runs():
    times = {"a": 100 * US, "b": 20 * US, "c": 20 * US}
    first = Segment("s1", (_op("a"),), "fwd")                          # lead 100 - 10 = 90
    second = Segment("s2", (_op("b"),), "fwd", host_extra_s=100 * US, after=first)
    third = Segment("s3", (_op("c"),), "fwd", host_extra_s=100 * US, after=second)
    p = _pricing(times)
    # s3 first: the chain is priced oldest first
    assert p.segment_time(third) == pytest.approx(110 * US)   # lead 0: 10 + 100 issued
    assert p.segment_time(second) == pytest.approx(20 * US)   # 110 - 20 - 90 = 0 exposed
    assert p.segment_time(first) == pytest.approx(100 * US)


def test_sync_drops_the_lead_and_scale_applies():
    times = {"a": 100 * US, "b": 20 * US}
    first = Segment("s1", (_op("a"),), "fwd", host_syncs=1)  # 100 + one host op
    second = Segment("s2", (_op("b"),), "fwd", host_extra_s=100 * US, after=first)
    p = _pricing(times)
    assert p.segment_time(first) == pytest.approx(110 * US)
    assert p.segment_time(second) == pytest.approx(110 * US)
    # twice as slow a host: 10 + 200 us issued
    q = _pricing(times, scale=2.0)
    assert q.segment_time(second) == pytest.approx(210 * US)


def _segments(step) -> list[Segment]:
    out: list[Segment] = []
    for t in step.ranks[0].graph.tasks:
        w = t.work
        parts = [p for p, _ in w.parts] if isinstance(w, Chain) else [w]
        out += [p for p in parts if isinstance(p, Segment)]
    return out


def test_lowering_marks_expert_runs():
    """Mixtral on 8 H100 with EP 8: one local expert, BF16: each forward expert run
    carries 2 x (60.625 - 10) us, each router run 1.7 ms."""
    system = load_system("dgx-h100", nodes=1)
    plan = ParallelPlan(tp=1, pp=1, dp=8, ep=8, mbs=1, gbs=16, seq=512, overlap_ep=False)
    step = lower_step(load_model("mixtral-8x7b"), system, plan)
    fwd = [s for s in _segments(step) if s.kind == "fwd" and s.host_extra_s > 0]
    experts = [s for s in fwd if any(o.name == "experts_up" for o in s.ops)]
    router = [s for s in fwd if any(o.kind == OpKind.ROUTING for o in s.ops)]
    assert experts and router
    assert all(s.host_extra_s == pytest.approx(101.25 * US) for s in experts)
    assert all(s.host_extra_s == pytest.approx(1700 * US) for s in router)
    dense = lower_step(load_model("gpt3-1.7b"), system,
                       ParallelPlan(tp=1, pp=1, dp=8, mbs=1, gbs=16, seq=512))
    assert all(s.host_extra_s == 0.0 for s in _segments(dense))


def test_fine_grained_moe_step_is_slower_with_the_host():
    """16 local experts of 64 tokens each: the host bounds the step, graphs lift it."""
    system = load_system("dgx-h100", nodes=1)
    plan = ParallelPlan(tp=1, pp=1, dp=8, ep=8, mbs=1, gbs=8, seq=512, overlap_ep=False)
    spec = load_model("qwen3-30b-a3b")
    step = lower_step(spec, system, plan)
    eager = price_step(step, system, step_pricing(step.plan, system, step.options))
    flat = price_step(step, system, Pricing.for_system(system, step.plan.attention_impl,
                                                       HOST, host_scale=0.0))
    assert eager.step_time_s > flat.step_time_s * 1.5
