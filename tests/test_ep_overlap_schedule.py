"""Merged forward/backward (EP overlap) and the pipeline schedule.

Megatron-Core's combined 1F1B and MindSpeed's fb-overlap merge a forward and a backward
of different micro-batches only without pipelining or on the interleaved schedule (one
extra warm-up micro-batch). On plain 1F1B with PP > 1 a merged step would wait a round
trip between adjacent stages every step; the simulator follows the frameworks' rule
(``ParallelPlan.fb_mergeable``). Fixed F/B times and free transfers give exact makespans.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.sim.api.train import TrainRequest, build_plan
from xpusim.sim.engine import Engine
from xpusim.sim.errors import InputError
from xpusim.sim.ir import Collective, CollectiveKind, Delay, RankGraph, Stream
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.schedules import closed_form_bubble, stage_order, steady_pairs
from xpusim.sim.training import simulate_training

sys.path.insert(0, str(Path(__file__).parent))
from test_schedules import _ideal_system  # noqa: E402


def _p2p(g: RankGraph, kind: str, pair: tuple[int, int], tag: int, stream, deps=()) -> int:
    coll = Collective(f"pp.{kind}", CollectiveKind.SEND_RECV, pair, 0.0, tag=tag)
    return g.add(coll, stream, list(deps))


def _makespan(p: int, v: int, m: int, cost, merged: bool) -> float:
    """(Interleaved) 1F1B with free transfers; ``merged``: each steady (F, B) pair is one
    task of tf + tb that waits for both inputs and sends both outputs at its end (the
    combined step: Megatron's ``combined_1f1b_schedule_for_interleaved_pipelining`` runs
    both pre-processes, the merged compute, then both post-processes), with the extra
    warm-up micro-batch. ``cost(vstage) -> (tf, tb)``."""
    graphs = []
    for s in range(p):
        g = RankGraph(s)
        order = stage_order(s, p, v, m, interleaved=v > 1, extra_warmup=int(merged))
        for step in steady_pairs(order) if merged else [(u,) for u in order]:
            deps, dur = [], 0.0
            for u in step:
                vs = u.chunk * p + s
                src = vs - 1 if u.kind == "F" else vs + 1
                if 0 <= src < p * v:
                    deps.append(_p2p(g, u.kind, (src % p, s), u.microbatch * p * v + vs,
                                     Stream.COMM))
                tf, tb = cost(vs)
                dur += tf if u.kind == "F" else tb
            t = g.add(Delay("+".join(map(str, step)), dur), Stream.COMPUTE, deps)
            for u in step:
                vs = u.chunk * p + s
                dst = vs + 1 if u.kind == "F" else vs - 1
                if 0 <= dst < p * v:
                    _p2p(g, u.kind, (s, dst % p), u.microbatch * p * v + dst, Stream.COPY, [t])
        graphs.append(g)
    return Engine(graphs, lambda op: 0.0, lambda c: 0.0).run().makespan_s


def test_plain_1f1b_merge_waits_a_round_trip_hand_computed():
    """p = 2, m = 4, F = 1, B = 2. Unmerged: (m + p - 1)(F + B) = 15. Merged (warm-up 2
    and 1): s0 F0 [0,1] F1 [1,2]; s1 F0 [1,2], (F1,B0) [2,5]; s0 (F2,B0) waits B0: [5,8];
    s1 (F2,B1) waits F2: [8,11]; s0 (F3,B1) [11,14]; s1 (F3,B2) [14,17]; s0 B2 [17,19],
    s1 B3 [17,19]; s0 B3 [19,21]: 21, each merged step waiting for the other stage's."""
    uniform = lambda vs: (1.0, 2.0)  # noqa: E731
    assert _makespan(2, 1, 4, uniform, merged=False) == pytest.approx(15.0)
    assert _makespan(2, 1, 4, uniform, merged=True) == pytest.approx(21.0)
    # Steady state: 2 (F + B) per micro-batch merged, F + B unmerged (p = 4).
    for merged, per_mb in ((False, 3.0), (True, 6.0)):
        grow = _makespan(4, 1, 80, uniform, merged) - _makespan(4, 1, 40, uniform, merged)
        assert grow == pytest.approx(40 * per_mb)


@pytest.mark.parametrize("p, v, m", [(2, 2, 4), (4, 2, 8), (4, 2, 80), (8, 4, 32)])
def test_interleaved_merge_keeps_the_closed_form(p, v, m):
    """Interleaved with one extra warm-up: merging costs nothing when communication is free.
    p = 2, v = 2, m = 4, per chunk F = 0.5, B = 1: m v (F + B)(1 + (p-1)/(m v)) = 13.5."""
    cost = lambda vs: (1.0 / v, 2.0 / v)  # noqa: E731
    ideal = m * 3.0 * (1 + closed_form_bubble(p, m, v))
    assert _makespan(p, v, m, cost, merged=False) == pytest.approx(ideal)
    assert _makespan(p, v, m, cost, merged=True) == pytest.approx(ideal)


@settings(max_examples=25, deadline=None)
@given(
    p=st.integers(1, 6),
    v=st.integers(2, 4),
    groups=st.integers(1, 4),
    heavy=st.floats(1.0, 2.5),
)
def test_merge_never_slower_without_communication(p, v, groups, heavy):
    """On the schedules that merge (no PP, or interleaved) and with free communication, a
    merged step is the same compute in one task: never a longer step than unmerged, with
    the last virtual stage up to 2.5x heavier (a big output head)."""
    v = v if p > 1 else 1
    m = p * groups
    last = p * v - 1
    cost = lambda vs: (heavy / v, 2 * heavy / v) if vs == last else (1.0 / v, 2.0 / v)  # noqa: E731
    assert _makespan(p, v, m, cost, merged=True) <= _makespan(p, v, m, cost, False) + 1e-9


def test_fb_mergeable_follows_the_frameworks():
    assert ParallelPlan(pp=1).fb_mergeable
    assert ParallelPlan(pp=4, vpp=2).fb_mergeable
    assert not ParallelPlan(pp=4).fb_mergeable


def test_default_ep_overlap_follows_the_rule_explicit_is_refused():
    moe = dict(model="mixtral-8x7b", tp=1, ep=8, mbs=1, gbs=64, seq=1024)
    assert not build_plan(TrainRequest(pp=4, **moe))[0].overlap_ep
    assert build_plan(TrainRequest(pp=4, vpp=2, **moe))[0].overlap_ep
    assert build_plan(TrainRequest(pp=1, **moe))[0].overlap_ep
    with pytest.raises(InputError, match="--overlap-ep with pp=4.*--vpp > 1"):
        build_plan(TrainRequest(pp=4, overlap_ep=True, **moe))


@pytest.mark.parametrize("pp, vpp", [(1, 1), (2, 2), (4, 2), (4, 1)])
def test_full_step_overlap_not_slower_with_free_communication(pp, vpp):
    """The whole simulator, Mixtral with EP 2 on a system with free communication: the
    merged schedule's step is the unmerged one (the same compute, nothing to hide)."""
    spec = load_model("mixtral-8x7b")
    dp = 8 // pp
    plan = ParallelPlan(tp=1, pp=pp, vpp=vpp, dp=dp, ep=2, mbs=1, gbs=8 * dp, seq=512)
    sysm = _ideal_system()
    merged = simulate_training(spec, sysm, plan).step_time_s
    plain = simulate_training(spec, sysm, replace(plan, overlap_ep=False)).step_time_s
    assert merged <= plain * (1 + 1e-6)
