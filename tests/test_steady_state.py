"""Extending the simulated steady state gives the exact step (issue 18): fast and exact
agree within 0.5% on step time and exactly on memory, over dense and MoE plans, 1F1B and
interleaved schedules, with and without overlaps, uneven splits and skewed routing."""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.simulate import TrainingOptions, simulate_exact
from xpusim.sim.training.steady import simulate_training, steady_counts

GRID = [
    ("gpt3-1.7b", "dgx-a100", 4, dict(tp=2, pp=4, mbs=1, gbs=128, seq=1024)),
    ("gpt3-1.7b", "dgx-a100", 4, dict(tp=2, pp=4, mbs=1, gbs=128, seq=1024, recompute="full",
                                      overlap_dp=False)),
    ("llama-3-8b", "dgx-a100", 4, dict(tp=2, pp=4, vpp=2, mbs=1, gbs=128, seq=1024)),
    ("llama-3-8b", "dgx-h100", 2, dict(tp=1, pp=8, vpp=2, mbs=1, gbs=256, seq=1024,
                                       layer_split="3,2,2,2,2,2,2,2,2,2,2,2,2,2,2,1")),
    ("mixtral-8x7b", "dgx-h100", 4, dict(tp=2, pp=4, ep=4, mbs=1, gbs=128, seq=1024)),
    # Merged F/B needs the interleaved schedule when pp > 1 (ParallelPlan.fb_mergeable).
    ("mixtral-8x7b", "dgx-h100", 4, dict(tp=2, pp=4, vpp=2, ep=4, mbs=1, gbs=128, seq=1024,
                                         moe_routing="zipf:0.5", overlap_ep=True)),
    ("gpt3-1.7b", "dgx-a100", 1, dict(tp=1, pp=2, mbs=2, gbs=64, seq=512)),
    ("gpt3-1.7b", "dgx-a100", 1, dict(tp=2, pp=1, mbs=1, gbs=64, seq=512)),
    ("llama-3-8b", "dgx-a100", 1, dict(tp=8, pp=1, mbs=1, gbs=32, seq=1024, zero=3)),
]


def _plan(kw: dict) -> ParallelPlan:
    kw = dict(kw)
    split = kw.pop("layer_split", None)
    if split:
        kw["layer_split"] = tuple(int(x) for x in split.split(","))
    return ParallelPlan(**kw)


@pytest.mark.parametrize("model,system,nodes,kw", GRID)
def test_fast_step_equals_exact(model, system, nodes, kw):
    spec = load_model(model)
    sysm = replace(load_system(system), nodes=nodes)
    plan = _plan(kw)
    exact = simulate_exact(spec, sysm, plan)
    fast = simulate_training(spec, sysm, plan)
    assert fast.step_time_s == pytest.approx(exact.step_time_s, rel=5e-3)
    assert fast.bubble_fraction == pytest.approx(exact.bubble_fraction, rel=5e-3, abs=1e-6)
    assert fast.exposed_comm_s == pytest.approx(exact.exposed_comm_s, rel=5e-3, abs=1e-6)
    assert [m.total for m in fast.memory] == [m.total for m in exact.memory]
    assert fast.tokens_per_step == exact.tokens_per_step
    assert fast.as_dict()["microbatches"] == exact.as_dict()["microbatches"]


def test_fast_path_simulates_fewer_tasks():
    spec = load_model("gpt3-1.7b")
    sysm = replace(load_system("dgx-a100"), nodes=1)
    plan = ParallelPlan(tp=2, pp=4, mbs=1, gbs=256, seq=512)
    exact = simulate_exact(spec, sysm, plan)
    fast = simulate_training(spec, sysm, plan)
    assert fast.tasks < exact.tasks / 2
    assert fast.sim is None  # no records kept unless asked for


def test_exact_option_keeps_records():
    spec = load_model("gpt3-1.7b")
    sysm = replace(load_system("dgx-a100"), nodes=1)
    plan = ParallelPlan(tp=2, pp=4, mbs=1, gbs=256, seq=512)
    result = simulate_training(spec, sysm, plan, TrainingOptions(exact=True))
    assert result.sim is not None and result.sim.records


def test_steady_counts_are_past_the_warmup_and_multiples_of_pp():
    m1, m2 = steady_counts(ParallelPlan(pp=8, vpp=4))
    assert m1 >= 2 * 8 - 1 and m2 > m1 and m1 % 8 == 0 and m2 % 8 == 0
    m1, m2 = steady_counts(ParallelPlan(pp=8))
    assert m1 >= 8 - 1 and m2 > m1
