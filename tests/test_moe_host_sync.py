"""The MoE token dispatcher's host sync (``framework.moe_dispatch_syncs``) and the
host-bound segment rule it extends (``sim.cost.pricing``).

Megatron-Core's dispatchers wait on the host once per MoE layer forward (the split
sizes of the all-to-all, ``d2h_event.synchronize()``); after the wait the device idles
while the host issues the next op: one ``host_op_s`` on top of the segment's
``max(device, n * host_op_s)``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim import ops
from xpusim.sim.cost.pricing import Pricing
from xpusim.sim.ir import Chain, OpKind, Role, Segment
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.framework import moe_dispatch_syncs
from xpusim.sim.training.simulate import lower_step, price_step

US = 1e-6


def _small_moe_ops() -> tuple:
    """Router GEMM, top-k and permute of a small MoE layer (device 20 + 4 + 6 us)."""
    router = ops.gemm("router", 512, 8, 256, "bf16", role=Role("router"))
    topk = ops.elementwise("topk", 512 * 8, "fp32", 5.0, kind=OpKind.ROUTING,
                           role=Role("router"))
    permute = ops.elementwise("permute", 512 * 256, "bf16", 0.0, role=Role("experts"))
    return router, topk, permute


def _pricing(host_us: float) -> Pricing:
    times = {"router": 20 * US, "topk": 4 * US, "permute": 6 * US}
    return Pricing(lambda op: times[op.name], lambda c: 0.0, host_op_s=host_us * US)


@pytest.mark.parametrize("host_us, syncs, expect_us", [
    (4.0, 0, 30.0),   # device-bound: 20 + 4 + 6
    (4.0, 1, 34.0),   # + one host op after the sync
    (15.0, 0, 45.0),  # host-bound: 3 ops x 15
    (15.0, 1, 60.0),  # 45 + 15
    (0.0, 1, 30.0),   # CUDA graphs: no host cost, the sync adds nothing here
])
def test_small_moe_layer_host_bound_times(host_us, syncs, expect_us):
    seg = Segment("fwd.L0", _small_moe_ops(), "fwd", host_syncs=syncs)
    assert _pricing(host_us).segment_time(seg) == pytest.approx(expect_us * US)


def test_syncs_counted_per_routed_forward_only():
    seg_ops = _small_moe_ops()
    assert moe_dispatch_syncs(seg_ops, "fwd", "eager") == 1
    assert moe_dispatch_syncs(seg_ops, "recompute", "eager") == 1  # the router re-runs
    assert moe_dispatch_syncs(seg_ops, "bwd", "eager") == 0  # host splits reused
    assert moe_dispatch_syncs(seg_ops[:1] + seg_ops[2:], "fwd", "eager") == 0
    assert moe_dispatch_syncs(seg_ops, "fwd", "torchtitan-eager") == 0  # not read


def _segments(step) -> list[Segment]:
    out: list[Segment] = []
    for lr in step.ranks:
        for t in lr.graph.tasks:
            w = t.work
            parts = [p for p, _ in w.parts] if isinstance(w, Chain) else [w]
            out += [p for p in parts if isinstance(p, Segment)]
    return out


def test_lowering_puts_one_sync_per_moe_layer_forward():
    spec = load_model("mixtral-8x7b")
    system = load_system("dgx-h100", nodes=1)
    plan = ParallelPlan(tp=1, pp=1, dp=8, ep=8, mbs=1, gbs=16, seq=512, overlap_ep=False)
    step = lower_step(spec, system, plan)
    per_rank = sum(s.host_syncs for s in _segments(step)) / len(step.ranks)
    microbatches = plan.gbs // (plan.mbs * plan.dp)
    assert per_rank == spec.layers * microbatches
    dense = lower_step(load_model("gpt3-1.7b"), system,
                       ParallelPlan(tp=1, pp=1, dp=8, mbs=1, gbs=16, seq=512))
    assert sum(s.host_syncs for s in _segments(dense)) == 0


def test_more_host_time_per_op_never_makes_a_step_faster():
    spec = load_model("mixtral-8x7b")
    system = load_system("dgx-h100", nodes=1)
    plan = ParallelPlan(tp=1, pp=2, dp=4, ep=4, mbs=1, gbs=16, seq=256, overlap_ep=False)
    step = lower_step(spec, system, plan)
    times = []
    for host_us in (0.0, 5.0, 10.0, 40.0, 200.0):
        pricing = Pricing.for_system(system, step.plan.attention_impl, host_us * US)
        times.append(price_step(step, system, pricing).step_time_s)
    assert times == sorted(times)
    assert times[-1] > times[0]  # the host-bound end moves the step


def test_sync_adds_its_host_op_to_the_step():
    """The same step without the syncs (every segment's count zeroed) is faster by at
    least nothing and by at most one host op per sync on the slowest rank's path."""
    spec = load_model("mixtral-8x7b")
    system = load_system("dgx-h100", nodes=1)
    plan = ParallelPlan(tp=1, pp=1, dp=8, ep=8, mbs=1, gbs=16, seq=512, overlap_ep=False)
    step = lower_step(spec, system, plan)
    host = 10 * US
    with_sync = price_step(step, system, Pricing.for_system(
        system, step.plan.attention_impl, host)).step_time_s
    for lr in step.ranks:
        for t in lr.graph.tasks:
            if isinstance(t.work, Segment):
                t.work = replace(t.work, host_syncs=0)
            elif isinstance(t.work, Chain):
                t.work = replace(t.work, parts=tuple(
                    (replace(p, host_syncs=0) if isinstance(p, Segment) else p, lab)
                    for p, lab in t.work.parts))
    without = price_step(step, system, Pricing.for_system(
        system, step.plan.attention_impl, host)).step_time_s
    syncs = spec.layers * plan.gbs // (plan.mbs * plan.dp)
    assert without < with_sync <= without + syncs * host * (1 + 1e-9)
