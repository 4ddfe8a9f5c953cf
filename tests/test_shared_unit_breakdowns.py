"""The steady state's two runs share their ranks' unit breakdowns
(``simulate.rank_breakdown``'s ``units``, passed by ``steady.price_training``): their
lowerings share unit pieces, so each rank sums the same template objects in the same
order. Summing them afresh per run must give the same breakdowns, float for float."""

from xpusim.hwprofiles import load_system
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.simulate import price_step, rank_breakdown, step_pricing
from xpusim.sim.training.steady import lower_training


def _lowered(plan: ParallelPlan, system: str = "dgx-h100", nodes: int = 2):
    sysm = load_system(system, nodes=nodes)
    return sysm, lower_training(load_model("llama-3-8b"), sysm, plan)


def test_shared_unit_breakdowns_equal_fresh_ones():
    plan = ParallelPlan(tp=4, pp=4, vpp=2, mbs=1, gbs=64, seq=4096,
                        sequence_parallel=True, overlap_tp=True)
    sysm, lowered = _lowered(plan)
    assert lowered.counts is not None  # two runs: the second reads the first's sums
    first, second = lowered.steps
    assert [[id(t) for t in lr.templates] for lr in first.ranks] == \
        [[id(t) for t in lr.templates] for lr in second.ranks]
    pricing = step_pricing(first.plan, sysm, first.options)
    units: dict = {}
    for step in lowered.steps:
        for lr in step.ranks:
            shared = rank_breakdown(lr, pricing, units)
            fresh = rank_breakdown(lr, pricing)
            assert list(shared.items()) == list(fresh.items())
            shared["optimizer:elementwise"][0] += 1.0  # a copy: the kept sums stay
            assert list(rank_breakdown(lr, pricing, units).items()) == list(fresh.items())
    assert len(units) == len(first.ranks)


def test_priced_runs_with_and_without_shared_breakdowns():
    plan = ParallelPlan(tp=2, pp=2, mbs=1, gbs=32, seq=2048)
    sysm, lowered = _lowered(plan, nodes=1)
    pricing = step_pricing(lowered.steps[0].plan, sysm, lowered.steps[0].options)
    units: dict = {}
    for step in lowered.steps:
        a = price_step(step, sysm, pricing, units)
        b = price_step(step, sysm, pricing)
        assert a.step_time_s == b.step_time_s
        assert list(a.compute_by_kind_s.items()) == list(b.compute_by_kind_s.items())
        assert list(a.flops_by_phase.items()) == list(b.flops_by_phase.items())
