"""`--recompute auto` picks the cheapest candidate policy that fits memory
(sim/training/recompute_choice.py, docs/training.md "Choosing the recompute")."""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import BROAD_SELECTIVE, DEFAULT_SELECTIVE, ParallelPlan, validate_plan
from xpusim.sim.training.recompute_choice import candidates, choose_recompute, recompute_seconds
from xpusim.sim.training.simulate import rank_plans, resolve_attention

GIB = 2**30
# GPT-3 1.3B (24 layers, h 2048, FFN 8192) on 8 H100s, DP 8, 8 x 2048 tokens per micro-batch.
SPEC = load_model("gpt3-1.3b")
PLAN = ParallelPlan(tp=1, dp=8, mbs=8, gbs=64, seq=2048, zero=1)


def _system(capacity_gib: float):
    system = load_system("dgx-h100", nodes=1)
    return replace(system, device=replace(system.device, hbm_capacity=capacity_gib * GIB))


def _choice(capacity_gib: float) -> tuple[str, tuple[str, ...]]:
    plan, _ = choose_recompute(SPEC, _system(capacity_gib), PLAN)
    return plan.recompute, plan.recompute_modules


def test_norm_act_recompute_priced_by_hand():
    """Per layer norm,act re-runs two LayerNorms and the GELU on 16,384 tokens, all
    HBM-bound: a LayerNorm reads and writes 16384 x 2048 x 2 B (134,217,728 B), the GELU
    16384 x 8192 x 2 B twice (536,870,912 B); H100 3.35 TB/s x 0.9, 4,393,533 B half
    bytes, 5 us launch. 24 layers: 6.875 ms."""
    system = _system(80)
    base = resolve_attention(validate_plan(SPEC, PLAN, 8), system)
    _, rps = rank_plans(SPEC, system, base)
    bw, half, launch = 3.35e12 * 0.9, 4393533.44, 5e-6
    norm = (134217728 + half) / bw + launch  # 50.97 us
    gelu = (536870912 + half) / bw + launch  # 184.52 us
    plan = replace(base, recompute="selective", recompute_modules=("norm", "act"))
    assert recompute_seconds(rps, plan, system) == pytest.approx(24 * (2 * norm + gelu), rel=1e-6)
    assert recompute_seconds(rps, replace(base, recompute="none"), system) == 0.0


def test_candidates_cost_ordered_as_their_work():
    system = _system(80)
    base = resolve_attention(validate_plan(SPEC, PLAN, 8), system)
    _, rps = rank_plans(SPEC, system, base)
    cost = {(c.recompute, c.recompute_modules): recompute_seconds(rps, c, system)
            for c in candidates(base)}  # fmt: skip
    assert (cost[("selective", ("norm", "act"))]
            < cost[("selective", BROAD_SELECTIVE)] < cost[("full", DEFAULT_SELECTIVE)])  # fmt: skip
    # FlashAttention's core is cheap to re-run: Megatron's core-attention set costs least.
    assert cost[("selective", DEFAULT_SELECTIVE)] < cost[("selective", ("norm", "act"))]


def test_none_does_not_fit_but_norm_act_does():
    """Worst stage: 39.43 GiB without recompute (1 GiB of activations per layer: 32 B per
    token and hidden unit), 29.98 GiB with norm,act (20 B), 23.68 GiB with
    norm,attn,act, 12.58 GiB with full. At 32 GiB `auto` takes norm,act, where the old
    ladder (none, default selective, full) took the heavier norm,attn,act."""
    assert _choice(80) == ("none", DEFAULT_SELECTIVE)
    assert _choice(32) == ("selective", ("norm", "act"))
    assert _choice(25) == ("selective", BROAD_SELECTIVE)
    assert _choice(16) == ("full", DEFAULT_SELECTIVE)


def test_more_memory_never_picks_a_heavier_policy():
    system = _system(80)
    base = resolve_attention(validate_plan(SPEC, PLAN, 8), system)
    _, rps = rank_plans(SPEC, system, base)
    costs = []
    for gib in range(14, 44, 2):
        plan, mems = choose_recompute(SPEC, _system(gib), PLAN)
        assert not any(m.oom for m in mems)
        costs.append(recompute_seconds(rps, replace(plan, attention_impl=base.attention_impl), system))
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1] == 0.0


def test_named_modules_are_the_only_selective_candidate():
    plan = replace(PLAN, recompute_modules=("act",))
    assert [(c.recompute, c.recompute_modules) for c in candidates(plan)] == [
        ("none", ("act",)), ("selective", ("act",)), ("full", ("act",))
    ]
