"""Pricing is separate from lowering (issue 12, item 5).

A training step is lowered once to unpriced graphs; pricing them on another system of
the same shape (a hardware what-if: HBM bandwidth, matrix peak, efficiencies, link
bandwidths) must give exactly what lowering and pricing from scratch on that system
gives, and the lowered IR carries no durations.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import System
from xpusim.sim.cost.pricing import Pricing
from xpusim.sim.errors import InputError
from xpusim.sim.ir import Chain, Collective, Delay, Op, Segment
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.simulate import TrainingOptions, lower_step, price_step
from xpusim.sim.training.steady import lower_training, price_training, simulate_training


def _faster_device(system: System) -> System:
    """More HBM bandwidth, a higher bf16 matrix peak, better GEMM efficiency."""
    dev = system.device
    peak = {**dev.matrix_peak, "bf16": dev.matrix_peak["bf16"] * 1.3}
    eff = replace(dev.efficiency, matrix_max=min(1.0, dev.efficiency.matrix_max * 1.05),
                  memory_max=min(1.0, dev.efficiency.memory_max * 1.1))
    return replace(system, device=replace(dev, hbm_bandwidth=dev.hbm_bandwidth * 1.5,
                                          matrix_peak=peak, efficiency=eff))


def _faster_network(system: System) -> System:
    return replace(system, nic=replace(system.nic, bandwidth=system.nic.bandwidth * 2),
                   intra_link=replace(system.intra_link, bandwidth=system.intra_link.bandwidth * 2))


def _same(a: dict, b: dict) -> None:
    a, b = dict(a), dict(b)
    a.pop("wall_s")
    b.pop("wall_s")
    assert a == b


CASES = [
    ("mixtral-8x7b", "dgx-h100", 4,
     ParallelPlan(tp=2, pp=4, ep=4, mbs=1, gbs=64, seq=2048, sequence_parallel=True,
                  recompute="selective", moe_routing="zipf:1.0")),
    ("gpt3-1.7b", "dgx-a100", 2,
     ParallelPlan(tp=2, pp=2, vpp=2, mbs=2, gbs=128, seq=2048, sequence_parallel=True,
                  dtype="fp16", zero=3, framework="eager")),
]


@pytest.mark.parametrize("model,system_name,nodes,plan", CASES)
def test_reprice_equals_lowering_from_scratch(model, system_name, nodes, plan):
    spec = load_model(model)
    base = load_system(system_name, nodes=nodes)
    lowered = lower_training(spec, base, plan)
    assert len(lowered.steps) == 2  # the steady-state path: two lowered runs
    times = set()
    for system in (base, _faster_device(base), _faster_network(base)):
        repriced = price_training(lowered, system)
        scratch = simulate_training(spec, system, plan)
        assert repriced.step_time_s == scratch.step_time_s
        _same(repriced.as_dict(), scratch.as_dict())
        times.add(repriced.step_time_s)
    assert len(times) == 3  # each what-if moves the step


def test_reprice_exact_step_keeps_records():
    spec = load_model("gpt3-1.7b")
    base = load_system("dgx-a100", nodes=1)
    plan = ParallelPlan(tp=2, pp=2, dp=2, mbs=1, gbs=8, seq=1024)
    options = TrainingOptions(exact=True)
    step = lower_step(spec, base, plan, options)
    other = _faster_device(base)
    repriced = price_step(step, other)
    scratch = price_step(lower_step(spec, other, plan, options), other)
    assert repriced.sim is not None and scratch.sim is not None
    assert repriced.sim.records == scratch.sim.records
    assert repriced.step_time_s == scratch.step_time_s


def _works(step) -> list:
    """The work of a lowered step's tasks, chains (runs of compute pieces, sim.ir.Chain)
    opened into their segments and collectives."""
    return [w for g in step.graphs for t in g.tasks
            for w in ([p for p, _ in t.work.parts] if isinstance(t.work, Chain) else [t.work])]


def test_lowered_graphs_hold_no_durations():
    """The lowering emits work, never time: no Delay, and every segment's ops unpriced."""
    spec = load_model("mixtral-8x7b")
    step = lower_step(spec, load_system("dgx-h100", nodes=4),
                      ParallelPlan(tp=2, pp=4, ep=4, mbs=1, gbs=64, seq=2048))
    works = _works(step)
    kinds = {type(w) for w in works}
    assert Delay not in kinds
    assert kinds <= {Segment, Collective, Op}
    segments = {id(w): w for w in works if isinstance(w, Segment)}
    # Units share their segment objects: far fewer distinct segments than tasks.
    tasks = sum(1 for w in works if isinstance(w, Segment))
    assert len(segments) * 4 < tasks


def test_segment_pricing_is_sum_of_ops_at_least_host():
    spec = load_model("gpt3-1.7b")
    step = lower_step(spec, load_system("dgx-a100", nodes=1),
                      ParallelPlan(tp=2, pp=2, dp=2, mbs=1, gbs=8, seq=1024))
    seg = next(w for w in _works(step) if isinstance(w, Segment))
    pricing = Pricing(lambda op: 1e-6, lambda c: 0.0, host_op_s=3e-6)
    assert pricing.segment_time(seg) == pytest.approx(3e-6 * len(seg.ops))
    fast_host = Pricing(lambda op: 1e-6, lambda c: 0.0, host_op_s=1e-7)
    assert fast_host.segment_time(seg) == pytest.approx(1e-6 * len(seg.ops))


def test_reprice_refuses_another_shape():
    spec = load_model("gpt3-1.7b")
    plan = ParallelPlan(tp=2, pp=2, mbs=1, gbs=8, seq=1024)
    step = lower_step(spec, load_system("dgx-a100", nodes=1), plan)
    with pytest.raises(InputError, match="lower it again"):
        price_step(step, load_system("dgx-a100", nodes=2))
    # A device whose default attention differs: the saved activations would differ.
    with pytest.raises(InputError):
        price_step(step, load_system("atlas-800t-a2", nodes=1))
