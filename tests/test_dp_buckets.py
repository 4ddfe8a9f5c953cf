"""Megatron-Core's bucket-level DP overlap (sim/training/dp_buckets.py): hand-computed
bucket cuts and schedules, and invariants against the chunk-level path."""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.cost.pricing import Pricing
from xpusim.sim.engine import Engine
from xpusim.sim.ir import Collective, CollectiveKind, Op, OpKind, Segment
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import Layout, ParallelPlan
from xpusim.sim.schedules import Unit as SchedUnit
from xpusim.sim.training import dp_buckets, simulate_training
from xpusim.sim.training.chunks import Chunk, RankPlan, rank_groups
from xpusim.sim.training.dp_buckets import BucketPart, ChunkBuckets, split_slots
from xpusim.sim.training.emitter import EmitCache
from xpusim.sim.training.lowering import lower_rank
from xpusim.sim.training.units import Piece

M = 40e6  # the default bucket floor, in parameters


def test_bucket_size_default():
    assert dp_buckets.bucket_size(ParallelPlan(dp=8)) == 40e6
    assert dp_buckets.bucket_size(ParallelPlan(dp=64, ep=8)) == 64e6  # 1M x DP (EP inside)


def test_split_walks_slots_backward_and_closes_at_the_size():
    # slots 0..4 of 15M dense each: backward order 4,3,2 -> 45M >= 40M closes a bucket
    # after slot 2; 1, 0 -> 30M closes with the last part.
    parts, params = split_slots([(15e6, 0.0)] * 5, M)
    assert parts == [((2, 3, 4), [("dense", 0)]), ((0, 1), [("dense", 1)])]
    assert params == {("dense", 0): 45e6, ("dense", 1): 30e6}


def test_split_keeps_dense_and_expert_buffers_apart():
    # dense 10M, expert 30M per slot: expert closes after 2 slots (60M), dense never
    # reaches 40M in 3 slots and closes with the last part, after the leftover expert.
    parts, params = split_slots([(10e6, 30e6)] * 3, M)
    assert parts == [((1, 2), [("expert", 0)]), ((0,), [("dense", 0), ("expert", 1)])]
    assert params == {("expert", 0): 60e6, ("dense", 0): 30e6, ("expert", 1): 30e6}


def test_one_bucket_is_one_part():
    parts, _ = split_slots([(10e6, 0.0)] * 3, M)
    assert len(parts) == 1


# ----------------------------------------------------------- a hand-computed schedule

F_S, B_S = 1.0, 2.0  # each slot's forward and backward, seconds


def _op(name: str) -> Op:
    return Op(name, OpKind.GEMM, 0.0, {})


def _pieces(phase: str, slots: tuple[int, ...]) -> list[Piece]:
    order = slots if phase == "fwd" else tuple(reversed(slots))
    return [Piece(phase, f"L{i}", [_op(f"{phase}{i}")],
                  segment=Segment(f"{phase}{i}", (_op(f"{phase}{i}"),), phase, host=False))
            for i in order]


def _lowered(rs_s: float, bucketed: bool) -> tuple[float, float]:
    """Step time of one chunk of 3 slots (40M dense parameters each: one bucket per
    slot), DP 2, ZeRO 1, one micro-batch; every gather 1.5 s per bucket, every
    reduce-scatter ``rs_s`` per bucket (the chunk-level ones 3 x that). Returns (step,
    exposed communication)."""
    plan = ParallelPlan(tp=1, pp=1, dp=2, mbs=1, gbs=2, zero=1, dtype="bf16")
    layout = Layout(plan)
    slot_params = [(M, 0.0)] * 3
    ch = Chunk(0, [(f"L{i}", []) for i in range(3)], 3 * M, 0.0, 0.0, 0.0, slot_params)
    rp = RankPlan(0, 0, rank_groups(plan, layout, 0), [ch],
                  [SchedUnit("F", 0, 0), SchedUnit("B", 0, 0)])
    pieces = {(id(ch), "F"): _pieces("fwd", (0, 1, 2)), (id(ch), "B"): _pieces("bwd", (0, 1, 2))}
    cache = EmitCache()
    if bucketed:
        parts, params = split_slots(slot_params, M)
        needs = [[("dense", k)] for k in range(3)]
        cache.buckets[id(ch)] = ChunkBuckets(
            [BucketPart(s, c, n, _pieces("fwd", s), _pieces("bwd", s))
             for (s, c), n in zip(parts, needs, strict=True)], params)
    else:
        cache.buckets[id(ch)] = None
    lr = lower_rank(rp, plan, layout, frozenset({0}), False, pieces, cache)

    def op_time(op: Op) -> float:
        return F_S if op.name.startswith("fwd") else B_S if op.name.startswith("bwd") else 0.0

    def comm_time(c: Collective) -> float:
        per_bucket = c.bytes / M / (2.0 if c.kind == CollectiveKind.ALL_GATHER else 4.0)
        if c.kind == CollectiveKind.ALL_GATHER:
            return 1.5 * per_bucket
        if c.kind == CollectiveKind.REDUCE_SCATTER:
            return rs_s * per_bucket
        return 0.0  # the gradient norm's scalar all-reduce

    res = Engine([lr.graph], pricing=Pricing(op_time, comm_time)).run(records=True)
    return res.makespan_s, res.exposed_comm_s(0)


def test_buckets_hand_computed():
    # Gathers back to back 0-1.5, 1.5-3, 3-4.5; forwards 1.5-2.5, 3-4, 4.5-5.5;
    # backwards 5.5-7.5, 7.5-9.5, 9.5-11.5; reduce-scatters (1.5 s) 7.5-9, 9.5-11,
    # 11.5-13: the exposed reduction is the last bucket's. Exposed communication: the
    # compute waits 0-1.5, 2.5-3, 4-4.5 for gathers and 11.5-13 for the last reduction.
    assert _lowered(1.5, True) == pytest.approx((13.0, 4.0))
    # Chunk-level: gather 0-4.5, forward 4.5-7.5, backward 7.5-13.5, reduce 13.5-18.
    assert _lowered(1.5, False) == pytest.approx((18.0, 9.0))


def test_reductions_longer_than_the_backward_queue():
    # 3 s per bucket: 7.5-10.5, 10.5-13.5, 13.5-16.5 while the backward ends at 11.5:
    # exposed 5 s = the last bucket's 3 s + the 2 s that do not fit under the backward.
    step, exposed = _lowered(3.0, True)
    assert step == pytest.approx(16.5)
    assert exposed == pytest.approx(2.5 + 5.0)
    assert _lowered(3.0, False)[0] == pytest.approx(4.5 + 3 + 6 + 9)


# ------------------------------------------------------------------ invariants

DENSE = ModelSpec("tiny-dense", "llama", hidden=2048, layers=8, heads=16, kv_heads=4,
                  head_dim=128, ffn=5632, vocab=32000)


@pytest.fixture(scope="module")
def system():
    return load_system("dgx-h100", nodes=2)


def _step(system, plan, monkeypatch, buckets: bool) -> float:
    with monkeypatch.context() as m:
        if not buckets:
            m.setattr(dp_buckets, "applies", lambda *a: False)
        return simulate_training(DENSE, system, plan).step_time_s


@pytest.mark.parametrize("zero", [0, 1])
def test_buckets_never_slower_than_chunk_level(system, monkeypatch, zero):
    # ~50M parameters per layer: 8 layers make several 40M buckets.
    plan = ParallelPlan(tp=1, pp=1, dp=16, mbs=1, gbs=32, seq=2048, zero=zero, dtype="bf16")
    parts, _ = split_slots(
        [(6e7, 0.0)] * 8, dp_buckets.bucket_size(plan))  # sanity of the premise
    assert len(parts) > 1
    bucketed = _step(system, plan, monkeypatch, True)
    chunk = _step(system, plan, monkeypatch, False)
    assert bucketed < chunk


def test_one_bucket_equals_chunk_level(system, monkeypatch):
    plan = ParallelPlan(tp=1, pp=1, dp=16, mbs=1, gbs=32, seq=2048, zero=1, dtype="bf16")
    with monkeypatch.context() as m:
        m.setattr(dp_buckets, "MIN_BUCKET_PARAMS", 10**12)
        one = simulate_training(DENSE, system, plan).step_time_s
    assert one == _step(system, plan, monkeypatch, False)


def test_untouched_without_overlap_or_megatron(system, monkeypatch):
    base = ParallelPlan(tp=1, pp=1, dp=16, mbs=1, gbs=32, seq=2048, zero=1, dtype="bf16")
    for plan in (replace(base, overlap_dp=False), replace(base, framework="torchtitan-eager")):
        assert not dp_buckets.applies(plan, 0, 0)
    assert not dp_buckets.applies(base, 1, 0)  # a later pipeline stage
    assert not dp_buckets.applies(base, 0, 1)  # a later model chunk
    assert not dp_buckets.applies(replace(base, zero=3), 0, 0)
