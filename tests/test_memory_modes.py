"""The two memory modes agree: the analytical mode (explore's plan filter) against the full
per-stage mode (``estimate_memory``, what the simulation reports), over a sweep of dense
and MoE plans on three systems, and the study filter against the simulation's verdict.

Under uniform routing the two are identical stage by stage (same floats); under routing
skew the analytical mode interpolates MoE layers between the stage's coolest and hottest
load, which is exact up to rounding (checked to 1e-12 here)."""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import replace

import pytest
from studies_tiny import TINY_STUDY
from xpusim.hwprofiles import load_system
from xpusim.sim.errors import InputError
from xpusim.sim.models import load_model
from xpusim.sim.models.spec import MoESpec
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.studies.analytical import static_memory_lower_bound
from xpusim.sim.studies.plans import choose_plans, enumerate_plans, plan_memory
from xpusim.sim.studies.space import candidates_in_budget, to_spec
from xpusim.sim.studies.study_file import parse_study
from xpusim.sim.training import estimate_memory
from xpusim.sim.training.memory import analytical_memory, peak_stage


def _plans(base: ParallelPlan, **axes) -> list[ParallelPlan]:
    keys = list(axes)
    return [replace(base, **dict(zip(keys, vals, strict=True)))
            for vals in itertools.product(*(axes[k] for k in keys))]


def _sweep():
    """(model spec, system, plans) cases: dense and MoE, every kind of stage layout."""
    llama = load_model("llama-3-70b")
    h100 = load_system("dgx-h100", nodes=8)  # 64 x 80 GB
    llama_plans = _plans(
        ParallelPlan(gbs=128, seq=4096, sequence_parallel=True),
        tp=(4, 8), pp=(1, 4), zero=(1, 3), recompute=("none", "selective", "full"), mbs=(1, 2),
    ) + [
        ParallelPlan(tp=8, pp=4, vpp=5, gbs=128, seq=4096, sequence_parallel=True),
        ParallelPlan(tp=8, pp=2, cp=2, gbs=64, seq=8192, sequence_parallel=True, dtype="fp8"),
        ParallelPlan(tp=8, pp=4, gbs=64, layer_split=(19, 21, 21, 19), zero=2),
    ]
    gpt3 = load_model("gpt3-175b")
    a100 = load_system("dgx-a100", nodes=16)  # the 2021 recipe: dropout, unfused attention
    gpt3_plans = _plans(
        ParallelPlan(tp=8, gbs=128, seq=2048, dtype="fp16", dropout=0.1, zero=0,
                     attention_impl="standard", grad_accum_fusion=False),
        pp=(8, 16), recompute=("none", "selective", "full"), sequence_parallel=(False, True),
    )
    mixtral = load_model("mixtral-8x7b")
    h100_2 = load_system("dgx-h100", nodes=2)
    mixtral_plans = _plans(
        ParallelPlan(gbs=64, seq=4096, sequence_parallel=True, recompute="selective"),
        tp=(1, 2), pp=(1, 2), ep=(2, 4, 8), tp_extend_ep=(True, False),
        moe_routing=("uniform", "zipf:1.2"),
    )
    pangu = load_model("pangu-ultra-moe")
    a2 = load_system("atlas-800t-a2", nodes=128)  # 1,024 x 64 GB
    pangu_plans = _plans(
        ParallelPlan(tp=8, pp=16, vpp=2, mbs=1, gbs=1536, seq=4096, sequence_parallel=True),
        ep=(2, 4), recompute=("none", "selective", "full"), moe_routing=("uniform", "zipf:1.2"),
    ) + [
        ParallelPlan(tp=4, pp=8, ep=8, mbs=2, gbs=1536, seq=4096, sequence_parallel=True,
                     recompute="full", hierarchical_ep=False, overlap_ep=False),
        ParallelPlan(tp=8, pp=16, ep=4, gbs=1536, seq=4096, sequence_parallel=True,
                     recompute="full", layer_split=(3,) + (4,) * 14 + (3,)),
    ]
    # A small MoE with every other layer dense after two dense ones, two MTP modules and
    # a tied head, cut unevenly (a stage holding only the embedding).
    small = replace(
        mixtral, name="small-moe", layers=10, hidden=1024, heads=8, kv_heads=8, head_dim=128,
        ffn=4096, vocab=32000, tie_embeddings=True, mtp_layers=2,
        moe=MoESpec(num_experts=16, top_k=2, expert_ffn=512, shared_experts=1, shared_ffn=512,
                    first_dense_layers=2, layer_freq=2),
    )
    a2_2 = load_system("atlas-800t-a2", nodes=2)
    a2_2 = replace(a2_2, device=replace(a2_2.device, hbm_capacity=6 * 2**30))  # 6 GiB
    small_plans = _plans(
        ParallelPlan(pp=4, ep=2, gbs=16, seq=4096, layer_split=(0, 4, 4, 4)),
        tp=(1, 2), recompute=("none", "full"), moe_routing=("uniform", "zipf:1.0"),
    ) + [ParallelPlan(pp=2, vpp=2, ep=4, gbs=32, seq=4096, mbs=2, pad_layers=0, cp=2)]
    return [
        ("llama-3-70b", llama, h100, llama_plans),
        ("gpt3-175b", gpt3, a100, gpt3_plans),
        ("mixtral-8x7b", mixtral, h100_2, mixtral_plans),
        ("pangu-ultra-moe", pangu, a2, pangu_plans),
        ("small-moe", small, a2_2, small_plans),
    ]


SWEEP = _sweep()


@pytest.mark.parametrize("name,spec,system,plans", SWEEP, ids=[c[0] for c in SWEEP])
def test_analytical_mode_agrees_with_full_mode(name, spec, system, plans):
    verdicts = []
    for plan in plans:
        try:
            full = estimate_memory(spec, system, plan)
        except InputError:
            continue
        fast = analytical_memory(spec, system, plan)
        assert len(fast) == len(full) == plan.pp
        if plan.moe_routing == "uniform":
            assert fast == full, plan  # every field of every stage, to the last bit
        for a, f in zip(fast, full, strict=True):
            assert a.total == pytest.approx(f.total, rel=1e-12), plan
            assert (a.weights, a.gradients, a.optimizer, a.comm_buffers, a.in_flight) == (
                f.weights, f.gradients, f.optimizer, f.comm_buffers, f.in_flight)
            assert a.per_layer_activations == pytest.approx(f.per_layer_activations, rel=1e-12)
        verdicts.append(peak_stage(full).oom)
        assert peak_stage(fast).oom == verdicts[-1], plan
    assert len(verdicts) >= 0.75 * len(plans)  # the sweep is mostly valid plans ...
    assert any(verdicts) and not all(verdicts), name  # ... on both sides of the capacity


def _tiny(**plans) -> dict:
    data = tomllib.loads(TINY_STUDY)
    data["plans"].update(plans)
    return data


@pytest.mark.parametrize("zero", [1, 3])
def test_explore_filter_agrees_with_the_simulation(zero):
    # HBM sized so that the tiny study's plans fall on both sides of it.
    study = parse_study(_tiny(tp=[1, 2], pp=[1, 2], ep=[1, 2], mbs=[1, 4],
                              recompute=["none", "full"], zero=zero))
    base = load_system("atlas-800t-a2", nodes=1)
    system = replace(base, device=replace(base.device, hbm_capacity=2**30 + 48 * 2**20))
    verdicts = []
    for counted in candidates_in_budget(study)[0]:
        spec = to_spec(counted.candidate, study)
        for plan in enumerate_plans(spec, system, study):
            full = peak_stage(estimate_memory(spec, system, plan))
            kept = plan_memory(spec, system, plan)
            assert (kept is None) == full.oom, plan
            assert kept is None or kept == full.total
            verdicts.append(full.oom)
    assert any(verdicts) and not all(verdicts)


def test_chosen_plans_fit_in_the_simulation():
    data = tomllib.loads(TINY_STUDY)
    data["search"]["plans_per_model"] = 3
    data["search"]["moe_routing"] = "zipf:1.0"
    study = parse_study(data)
    system = load_system("atlas-800t-a2", nodes=1)
    from xpusim.sim.studies import analytical

    for counted in candidates_in_budget(study)[0]:
        spec = to_spec(counted.candidate, study)
        choice = choose_plans(spec, system, study, analytical.estimate(counted, study, system))
        assert choice.plans and choice.checked >= len(choice.plans)
        for plan, total in zip(choice.plans, choice.fitting_memory_bytes, strict=True):
            full = peak_stage(estimate_memory(spec, system, plan))
            assert not full.oom and total == pytest.approx(full.total, rel=1e-12)


@pytest.mark.parametrize("zero", [0, 1, 3])
def test_candidate_bound_is_below_every_plan(zero):
    """Stage 1's bound never drops a candidate that has a fitting plan: it is at most
    the static part (state + reserve) of the worst stage of every plan of the space."""
    study = parse_study(_tiny(tp=[1, 2], pp=[1, 2], ep=[1, 2], zero=zero,
                              **{"recompute": ["full"]}))
    system = load_system("atlas-800t-a2", nodes=1)
    for counted in candidates_in_budget(study)[0]:
        spec = to_spec(counted.candidate, study)
        bound = static_memory_lower_bound(spec, study, system.num_devices)
        for plan in enumerate_plans(spec, system, study):
            static = max(m.weights + m.gradients + m.optimizer + m.reserved
                         for m in estimate_memory(spec, system, plan))
            assert bound <= static, plan
