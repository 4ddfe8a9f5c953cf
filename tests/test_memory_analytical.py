"""The analytical memory mode by hand: micro-batches in flight, a dense model's stages
term by term, ZeRO sharding of an MoE model, and the plan-space lower bound."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.models.spec import ModelSpec, MoESpec
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.schedules import peak_in_flight, stage_order
from xpusim.sim.training import estimate_memory
from xpusim.sim.training.memory import (
    GIB,
    analytical_memory,
    in_flight,
    model_weight_params,
    static_lower_bound,
)

DENSE = ModelSpec(
    name="hand-dense", family="llama", hidden=1024, layers=4, heads=8, kv_heads=4,
    head_dim=128, ffn=4096, vocab=32000,
)
MOE = ModelSpec(
    name="hand-moe", family="deepseek", hidden=512, layers=2, heads=4, kv_heads=2,
    head_dim=64, ffn=1024, vocab=1000,
    moe=MoESpec(num_experts=8, top_k=2, expert_ffn=256, first_dense_layers=1),
)


@pytest.fixture(scope="module")
def node():
    return load_system("atlas-800t-a2", nodes=1)  # 8 x 910B2, 64 GB each


def test_in_flight_by_hand():
    # 1F1B, 4 stages, 8 micro-batches: stage s warms up with 3 - s forwards, then one more.
    assert [in_flight(s, 4, 1, 8, False) for s in range(4)] == [{0: 4}, {0: 3}, {0: 2}, {0: 1}]
    assert in_flight(0, 4, 1, 2, False) == {0: 2}  # fewer micro-batches than stages
    assert in_flight(3, 4, 1, 8, False, extra_warmup=1) == {0: 2}  # merged F/B overlap
    # Interleaved, p = 4, v = 2, m = 8: stage 0 warms up with 2*3 + 1*4 = 10 chunk
    # forwards; the first 11 are mb 0-3 on chunk 0, mb 0-3 on chunk 1, mb 4-6 on chunk 0.
    assert in_flight(0, 4, 2, 8, True) == {0: 7, 1: 4}
    assert in_flight(3, 4, 2, 8, True) == {0: 4, 1: 1}
    assert in_flight(0, 1, 3, 5, True) == {0: 1, 1: 1, 2: 1}  # one stage, three chunks


def test_in_flight_is_the_schedules_peak():
    for p, v, m, interleaved, extra in itertools.product(
        (1, 2, 3, 4, 8), (1, 2, 3), (1, 2, 4, 8, 12, 24), (False, True), (0, 1)
    ):
        if v > 1 and not interleaved or interleaved and p > 1 and m % p:
            continue
        for s in range(p):
            want = peak_in_flight(stage_order(s, p, v, m, interleaved, extra))
            assert in_flight(s, p, v, m, interleaved, extra) == want, (p, v, m, s, extra)


def test_dense_stages_by_hand(node):
    # TP 2 (SP), PP 2, DP 2 on 8 NPUs; 4 micro-batches of one 2048-token sequence; full
    # recompute keeps each slot's input only.
    plan = ParallelPlan(tp=2, pp=2, dp=2, mbs=1, gbs=8, seq=2048, sequence_parallel=True,
                        recompute="full")
    # Per rank and layer: qkv 1024 x (4 + 2*2)*128, o 512 x 1024, SwiGLU up 1024 x 2*2048,
    # down 2048 x 1024. Stage 0 adds the vocab-parallel table (16000 x 1024), stage 1 the
    # head GEMM (1024 x 16000).
    layer = 1024 * 8 * 128 + 512 * 1024 + 1024 * 4096 + 2048 * 1024
    params = 2 * layer + 16000 * 1024
    slot_input = 2048 * 1024 * 2 / 2  # bf16, a TP shard of the sequence (SP)
    largest = 2048 * 1024 * 2  # the SP all-gather / reduce-scatter of a block
    buffers = 2 * largest + 4 * slot_input  # collective + pipeline send/recv, double-buffered
    mems = analytical_memory(DENSE, node, plan)
    for mem, in_flight_mbs in zip(mems, (2, 1), strict=True):  # 1F1B: p - s micro-batches
        acts = 3 * slot_input * in_flight_mbs  # embedding or head + 2 layers
        assert mem.weights == 2 * params  # bf16
        assert mem.gradients == 4 * params  # fp32 main grads
        assert mem.optimizer == 12 * params / 2  # ZeRO-1 over DP 2
        assert mem.activations == acts
        assert mem.comm_buffers == buffers
        assert mem.fragmentation == pytest.approx(0.05 * (acts + buffers))
        assert mem.reserved == GIB
        assert mem.per_layer_activations == slot_input
    assert mems == estimate_memory(DENSE, node, plan)


def test_moe_zero_sharding_by_hand(node):
    # TP 2 x EP 2 (TP-extend-EP: the 4 ranks share the 8 experts), DP 4 on 8 NPUs.
    plan = ParallelPlan(tp=2, ep=2, dp=4, mbs=1, gbs=4, seq=512, sequence_parallel=True)
    attention = 512 * (2 + 2 * 1) * 64 + 2 * 64 * 512  # per rank: 2 query heads, 1 KV head
    dense = 2 * attention + (512 * 1024 + 512 * 512) + 512 * 8 + 2 * 500 * 512
    expert = 2 * 3 * 512 * 256  # 2 local experts, SwiGLU
    dpd, dpe = 4, 2  # DP x CP for dense parameters, DP/EP x CP for experts
    for zero in (0, 1, 2, 3):
        mem = analytical_memory(MOE, node, replace(plan, zero=zero))[0]
        whole, shard = dense + expert, dense / dpd + expert / dpe
        assert mem.weights == pytest.approx(2 * (shard if zero >= 3 else whole))
        assert mem.gradients == pytest.approx(4 * (shard if zero >= 2 else whole))
        assert mem.optimizer == pytest.approx(12 * (shard if zero >= 1 else whole))
        assert [mem] == estimate_memory(MOE, node, replace(plan, zero=zero))


def test_model_weight_params_by_hand():
    h, v = 512, 1000
    attention = h * 4 * 64 + 2 * h * 2 * 64 + 4 * 64 * h
    dense, expert = model_weight_params(MOE)
    # input table + head; layer 0 dense SwiGLU, layer 1 router + 8 experts
    assert dense == 2 * v * h + 2 * attention + 3 * h * 1024 + h * 8
    assert expert == 8 * 3 * h * 256
    # An MTP module: a 2h x h projection, a block like the last (MoE) layer, its table
    # lookup and the output head; a tied head is still its own GEMM.
    mtp = replace(MOE, mtp_layers=1, tie_embeddings=True)
    d2, e2 = model_weight_params(mtp)
    assert d2 == dense + 2 * h * h + attention + h * 8 + 2 * v * h
    assert e2 == 2 * expert


def test_static_lower_bound_by_hand():
    plan = ParallelPlan(zero=1)
    dense, expert = model_weight_params(MOE)
    want = 6 * (dense / (2 * 2) + expert / (2 * 4 * 2)) + 12 * (dense + expert) / 8 + GIB
    assert static_lower_bound(MOE, plan, 8, tp=2, pp=2, ep=4) == pytest.approx(want)
    # ZeRO-3 shards all 18 B over the devices; nothing is kept whole.
    z3 = static_lower_bound(MOE, replace(plan, zero=3), 8, tp=2, pp=2, ep=4)
    assert z3 == pytest.approx(18 * (dense + expert) / 8 + GIB)
