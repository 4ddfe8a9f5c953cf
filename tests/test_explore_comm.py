"""The plan estimate's DP and CP terms (sim.studies.plan_comm), by hand on a tiny system."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import pytest
from studies_tiny import TINY_STUDY
from xpusim.hwprofiles import load_system
from xpusim.sim.ir import CollectiveKind
from xpusim.sim.network.api import cost_collective
from xpusim.sim.parallel import ParallelPlan, validate_plan
from xpusim.sim.studies.plan_comm import chunk_params, cp_comm_estimate, dp_comm_estimate
from xpusim.sim.studies.space import candidates_in_budget, to_spec
from xpusim.sim.studies.study_file import parse_study
from xpusim.sim.training import simulate_training

# L2-H512-gqa4/2-E8k2s0f256d1: 2 layers (the first dense), hidden 512, 4 heads of 64,
# 2 K/V heads, 8 experts of FFN 256, dense FFN 1024, vocab 1000, no MTP.
NAME = "L2-H512-gqa4/2-E8k2s0f256d1"


def tiny_spec():
    study = parse_study(tomllib.loads(TINY_STUDY))
    c = next(k for k in candidates_in_budget(study)[0] if k.candidate.name == NAME)
    return to_spec(c.candidate, study)


def time(system, kind, group, nbytes):
    return cost_collective(system, kind, group, nbytes).time_s


def test_cp_term_by_hand():
    spec = tiny_spec()
    system = load_system("atlas-800t-a2", nodes=1)
    plan = validate_plan(spec, ParallelPlan(cp=2, gbs=16, seq=8192), 8)  # dp 4
    # Per layer and micro-batch the K/V of the whole sequence: 8192 tokens x 2 K/V heads
    # x (64 + 64) x 2 B = 4 MiB, all-gathered over the CP group (ranks 0, 1: CP is next
    # to TP in tp-cp-ep-dp-pp) and reduce-scattered in the backward.
    kv = 8192 * 2 * 128 * 2
    ag = time(system, CollectiveKind.ALL_GATHER, (0, 1), kv)
    rs = time(system, CollectiveKind.REDUCE_SCATTER, (0, 1), kv)
    # A 2-rank ring moves half the buffer over one HCCS link at the intra-node efficiency
    # (the per-step latency is a few % of it).
    bw = system.intra_link.bandwidth * system.collective_efficiency.intra_node
    assert ag == pytest.approx(kv / 2 / bw, rel=0.1)
    microbatches, layers = 16 // 4, 2
    assert cp_comm_estimate(spec, system, plan) == pytest.approx(microbatches * layers * (ag + rs))
    # Recompute of the attention core gathers again; of the activations alone it does not.
    again = microbatches * layers * (2 * ag + rs)
    for rc, modules in (("full", ("core_attn",)), ("selective", ("core_attn",))):
        p = replace(plan, recompute=rc, recompute_modules=modules)
        assert cp_comm_estimate(spec, system, p) == pytest.approx(again)
    act = replace(plan, recompute="selective", recompute_modules=("act",))
    assert cp_comm_estimate(spec, system, act) == pytest.approx(microbatches * layers * (ag + rs))
    assert cp_comm_estimate(spec, system, replace(plan, cp=1)) == 0.0
    # The simulation puts the same collectives on the compute stream (one stage: its busy
    # CP time is the whole step's).
    for p in (plan, replace(plan, recompute="full")):
        sim = simulate_training(spec, system, p).as_dict()["breakdown_s"]["comm_cp"]
        assert cp_comm_estimate(spec, system, p) == pytest.approx(sim, rel=1e-9)


def test_dp_term_by_hand():
    spec = tiny_spec()
    system = load_system("atlas-800t-a2", nodes=1)
    plan = validate_plan(spec, ParallelPlan(ep=2, gbs=16, seq=512), 8)  # dp 8, ZeRO 1
    # Weights: 2 tables of 1000 x 512, per layer attention 3 x 512 x 256 (Q: 4 heads of
    # 64, K+V: 2 heads of 64 each, O), the dense layer's SwiGLU 3 x 512 x 1024 and the
    # router 512 x 8; the MoE layer's 8 experts of 3 x 512 x 256, over EP 2.
    dense = 2 * 512_000 + 2 * 3 * 512 * 256 + 3 * 512 * 1024 + 512 * 8
    assert dense == 3_387_392
    expert = 8 * 3 * 512 * 256 / 2
    assert chunk_params(spec, plan) == (dense, expert)
    # 6.5 M parameters: one bucket (Megatron's 40 M floor), so the whole chunk's traffic
    # shows: fp32 gradients reduce-scattered and bf16 parameters all-gathered, dense over
    # the 8 DP ranks, experts over the expert-DP group (cp x dp / ep = 4 ranks, stride ep).
    dense_dp, expert_dp = tuple(range(8)), (0, 2, 4, 6)
    want = (time(system, CollectiveKind.REDUCE_SCATTER, dense_dp, dense * 4)
            + time(system, CollectiveKind.REDUCE_SCATTER, expert_dp, expert * 4)
            + time(system, CollectiveKind.ALL_GATHER, dense_dp, dense * 2)
            + time(system, CollectiveKind.ALL_GATHER, expert_dp, expert * 2))
    assert dp_comm_estimate(spec, system, plan) == pytest.approx(want)
    # ZeRO 0: an all-reduce of the gradients, no parameter gather.
    plain = replace(plan, zero=0)
    want0 = (time(system, CollectiveKind.ALL_REDUCE, dense_dp, dense * 4)
             + time(system, CollectiveKind.ALL_REDUCE, expert_dp, expert * 4))
    assert dp_comm_estimate(spec, system, plain) == pytest.approx(want0)
    # Without overlap every chunk's traffic is in line: vpp chunks of 1/vpp of the weights.
    assert dp_comm_estimate(spec, system, replace(plan, overlap_dp=False)) == pytest.approx(want)


def test_folding_moves_the_expert_reduction_across_servers():
    # 2 x 8 devices, tp2 cp4 ep2 (dp 2). Unfolded, the expert-DP group is CP x DP/EP: ranks
    # 0, 2, 4, 6, one server. Folded (experts' order tp-ep-dp-pp, dp = cp x dp / ep = 4 at
    # stride tp x ep = 4): ranks 0, 4, 8, 12, two servers; the dense-DP group is the same.
    spec = tiny_spec()
    system = load_system("atlas-800t-a2", nodes=2)
    flat = validate_plan(spec, ParallelPlan(tp=2, cp=4, ep=2, gbs=16, seq=512), 16)
    fold = replace(flat, moe_fold=True)
    dense, expert = chunk_params(spec, flat)
    cross = time(system, CollectiveKind.REDUCE_SCATTER, (0, 4, 8, 12), expert * 4)
    inside = time(system, CollectiveKind.REDUCE_SCATTER, (0, 2, 4, 6), expert * 4)
    assert cross > inside
    gap = (cross - inside) + (time(system, CollectiveKind.ALL_GATHER, (0, 4, 8, 12), expert * 2)
                              - time(system, CollectiveKind.ALL_GATHER, (0, 2, 4, 6), expert * 2))
    diff = dp_comm_estimate(spec, system, fold) - dp_comm_estimate(spec, system, flat)
    assert diff == pytest.approx(gap)
