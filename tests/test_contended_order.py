"""The contended engine's stream order and the training emitter's replay of single units
(docs/performance.md, 2026-12-06 "the contended schedule"): both only change how the
same schedule is computed, so every float must equal the reference path's (``==``).

* ``engine_contended._wait`` lets a ready comm stream advance before a compute stream
  that waits on it looks again; the reference parks every such compute stream until all
  streams are blocked (``_release``), as the engine did before. A task's end is fixed
  only once no collective of its rank can start before it, so the order in which
  streams advance cannot change it.
* ``Emitter.run_pair`` replays one unit's recorded tasks; the reference emits them
  afresh with ``run_blocks``.
"""

from engine_results import assert_same_schedule
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_system
from xpusim.sim import engine_contended, engine_share
from xpusim.sim.cost.pricing import Pricing
from xpusim.sim.engine import Engine, SimResult
from xpusim.sim.ir import Chain, Collective, CollectiveKind, Op, OpKind, RankGraph, Segment, Stream
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.emitter import Emitter
from xpusim.sim.training.simulate import TrainingOptions, lower_step, price_step, step_pricing

# (kind, seconds, flag) per item of a rank's program: 0 a compute segment (flag: fold it
# with the next segment into a chain), 1 an asynchronous solo collective on the comm
# stream after the last compute task (flag: on DP_COMM), 2 a compute segment that waits
# for the last asynchronous collective, 3 a collective of two neighbouring ranks on the
# comm stream (a rendezvous, label "pp" when flag).
item = st.tuples(st.integers(0, 3), st.floats(0.1, 3.0), st.booleans())


def _seg(name: str, seconds: float) -> Segment:
    return Segment(name, (Op(name, OpKind.GEMM, seconds, {}),))


def _graph(spec: list[tuple[int, float, bool]], rank: int, ranks: int) -> RankGraph:
    g = RankGraph(rank)
    last = g.add(_seg("s", 0.5), Stream.COMPUTE, label="fwd")
    coll = -1
    pending: list[tuple[Segment, str]] = []
    for i, (kind, dur, flag) in enumerate(spec):
        if kind != 3:  # a rendezvous is priced alike by every member
            dur *= 1 + 0.29 * rank
        if kind in (0, 2):
            pending.append((_seg(f"s{i}", dur), "bwd" if kind == 2 else "fwd"))
            if kind == 0 and flag:
                continue  # folded with the next segment
            work = Chain("c", tuple(pending)) if len(pending) > 1 else pending[0][0]
            deps = (last, coll) if kind == 2 and coll >= 0 else (last,)
            last = g.add(work, Stream.COMPUTE, deps=deps, label=pending[0][1])
            pending = []
        elif kind == 1:
            stream = Stream.DP_COMM if flag else Stream.COMM
            coll = g.add(Collective(f"a{i}", CollectiveKind.ALL_GATHER, (rank,), dur),
                         stream, deps=(last,), label="dp" if flag else "tp")
        else:
            peer = rank ^ 1 if (rank ^ 1) < ranks else rank
            group = tuple(sorted({rank, peer}))
            g.add(Collective(f"p{i}", CollectiveKind.SEND_RECV, group, dur, tag=i),
                  Stream.COMM, deps=(last,), label="pp" if flag else "ep")
    if pending:
        g.add(_seg("end", 0.5), Stream.COMPUTE, deps=(last,), label="fwd")
    return g


def _same(a: SimResult, b: SimResult) -> None:
    assert_same_schedule(a, b)
    assert list(a.spans.items()) == list(b.spans.items())
    assert a.slowed_s == b.slowed_s
    assert a.records == b.records


def _release_only(run, s, cs, tid, start, stop=None):  # the engine's order before the change
    run.waiting[s] = (tid, start)


def _pricing() -> Pricing:
    return Pricing(lambda op: op.flops, lambda c: c.bytes, comm_share=0.6)


def _run_patched(graphs, name: str, replacement):
    """The contended run of ``graphs`` with ``engine_contended.<name>`` replaced."""
    saved = getattr(engine_contended, name)
    setattr(engine_contended, name, replacement)
    try:
        return Engine(graphs, pricing=_pricing()).run(records=True)
    finally:
        setattr(engine_contended, name, saved)


@settings(max_examples=120, deadline=None)
@given(st.lists(item, min_size=1, max_size=14), st.integers(1, 3))
def test_ready_comm_first_gives_the_release_only_schedule(spec, ranks):
    graphs = [_graph(spec, r, ranks) for r in range(ranks)]
    fast = Engine(graphs, pricing=_pricing()).run(records=True)
    slow = _run_patched(graphs, "_wait", _release_only)
    _same(fast, slow)


def test_hand_computed_wait_on_a_ready_comm_stream():
    """compute A 1 s, then B 4 s; a solo collective X (2 s) on comm after A. The compute
    stream reaches B while X is ready but not yet run: X goes first (1..3), B does 1 s
    of work by 1..3 at rate 0.5 and 3 s after: ends at 6, as with the release order."""
    g = RankGraph(0)
    a = g.add(_seg("A", 1.0), Stream.COMPUTE, label="fwd")
    g.add(Collective("X", CollectiveKind.ALL_GATHER, (0,), 2.0), Stream.COMM, deps=(a,),
          label="tp")
    g.add(_seg("B", 4.0), Stream.COMPUTE, label="fwd")
    pricing = Pricing(lambda op: op.flops, lambda c: c.bytes, comm_share=0.5)
    res = Engine([g], pricing=pricing).run(records=True)
    by = {r.name: r for r in res.records}
    assert (by["X"].start, by["X"].end) == (1.0, 3.0)
    assert (by["B"].start, by["B"].end) == (1.0, 6.0)
    assert res.slowed_s == {0: 1.0}


def _tasks(step):
    return [[(type(t.work).__name__, t.work.name, id(t.work), t.stream, t.deps, t.label)
             for t in g.tasks] for g in step.graphs]


def test_replayed_single_units_emit_the_same_tasks(monkeypatch):
    """Units of a TP-overlap plan (async TP pieces on the comm stream: not one chain)
    are replayed from one recording per template: the same tasks as run_blocks, and
    the same priced step (dgx-h100: SM contention on)."""
    spec, sysm = load_model("llama-3-8b"), load_system("dgx-h100", nodes=2)
    plan = ParallelPlan(tp=4, pp=4, vpp=2, mbs=1, gbs=32, seq=4096,
                        sequence_parallel=True, overlap_tp=True)
    options = TrainingOptions()
    calls: list[int] = []
    record = Emitter._record

    def counted(self, units):
        calls.append(len(units))
        return record(self, units)

    monkeypatch.setattr(Emitter, "_record", counted)
    replayed = lower_step(spec, sysm, plan, options)
    assert 1 in calls  # single units went through a recording
    with monkeypatch.context() as m:
        m.setattr(Emitter, "run_pair", Emitter.run_blocks)
        fresh = lower_step(spec, sysm, plan, options)
    assert replayed.tasks == fresh.tasks
    assert [[t[:2] + t[3:] for t in g] for g in _tasks(replayed)] == \
        [[t[:2] + t[3:] for t in g] for g in _tasks(fresh)]
    a = price_step(replayed, sysm, step_pricing(plan, sysm, options))
    b = price_step(fresh, sysm, step_pricing(plan, sysm, options))
    assert a.step_time_s == b.step_time_s
    assert a.sim.slowed_s == b.sim.slowed_s and a.sim.slowed_s  # contention took part
    _same(a.sim, b.sim)


def _fresh_tentative(run, g, tid, start, state=None):  # no memo: stretched at every call
    c, ivs = run.contention[g], run.graphs[g][7]
    return engine_contended._tentative(c, run.graphs[g][8], tid, start,
                                       engine_share.known_comm(ivs, c.comm_slots, start))


@settings(max_examples=120, deadline=None)
@given(st.lists(item, min_size=1, max_size=14), st.integers(1, 3))
def test_kept_tentative_ends_give_the_fresh_schedule(spec, ranks):
    """``_tentative_end`` keeps a waiting task's end while its rank's collective
    intervals (``_graph_state``) and its start are unchanged; evaluating it afresh at every
    call gives the same schedule, float for float."""
    graphs = [_graph(spec, r, ranks) for r in range(ranks)]
    kept = Engine(graphs, pricing=_pricing()).run(records=True)
    fresh = _run_patched(graphs, "_tentative_end", _fresh_tentative)
    _same(kept, fresh)


@settings(max_examples=120, deadline=None)
@given(st.lists(item, min_size=1, max_size=14), st.integers(1, 3))
def test_waking_only_moved_graphs_gives_the_wake_all_schedule(spec, ranks):
    """``_release`` leaves waiting the tasks whose graph has not moved since they began
    to wait (``_graph_state``); waking every waiting task, as before, gives the same
    schedule."""
    graphs = [_graph(spec, r, ranks) for r in range(ranks)]
    selective = Engine(graphs, pricing=_pricing()).run(records=True)
    every = _run_patched(graphs, "_graph_state", lambda run, g: object())  # never equal: wake all
    _same(selective, every)


def _next_task_only(run, g, tid, stop, among=None):
    """``_blocking_comm`` before the look past non-contending tasks: a comm stream blocks
    unless its clock is past ``stop`` or its next task waits for compute ``tid`` or later."""
    tasks, end = run.graphs[g][0], run.graphs[g][3]
    for cs in run.contention[g].comm_streams:
        if run.s_clock[cs] >= stop or (among is not None and cs not in among):
            continue
        pos, tids = run.s_pos[cs], run.s_tids[cs]
        if pos >= len(tids):
            continue
        if not any(end[d] is None and d >= tid and tasks[d].stream == Stream.COMPUTE
                   for d in tasks[tids[pos]].deps):
            return cs
    return -1


@settings(max_examples=150, deadline=None)
@given(st.lists(item, min_size=1, max_size=14), st.integers(1, 3))
def test_looking_past_pp_gives_the_next_task_schedule(spec, ranks):
    """``_blocking_comm`` looks past a comm stream's PP sends and receives (they do not
    contend) to its next contending collective (``comm_reach``); blocking on the next
    task whatever it is, as before, gives the same schedule, float for float."""
    graphs = [_graph(spec, r, ranks) for r in range(ranks)]
    ahead = Engine(graphs, pricing=_pricing()).run(records=True)
    slow = _run_patched(graphs, "_blocking_comm", _next_task_only)
    _same(ahead, slow)


def test_comm_reach_hand_computed():
    """comm stream: recv R (pp, no compute dep), send S (pp, after compute 2), X (tp,
    after compute 0), recv R2 (pp): from R and S the next contending task is X, and the
    latest compute they wait for is 2; from X, 0; from R2 and past the end nothing
    contends (infinite)."""
    g = RankGraph(0)
    c0 = g.add(_seg("c0", 1.0), Stream.COMPUTE, label="fwd")
    g.add(_seg("c1", 1.0), Stream.COMPUTE, label="fwd")
    c2 = g.add(_seg("c2", 1.0), Stream.COMPUTE, label="fwd")
    pp = CollectiveKind.SEND_RECV
    g.add(Collective("R", pp, (0, 1), 1.0, tag=1), Stream.COMM, label="pp")
    g.add(Collective("S", pp, (0, 1), 1.0, tag=2), Stream.COMM, deps=(c2,), label="pp")
    g.add(Collective("X", CollectiveKind.ALL_GATHER, (0,), 1.0), Stream.COMM, deps=(c0,),
          label="tp")
    g.add(Collective("R2", pp, (0, 1), 1.0, tag=3), Stream.COMM, label="pp")
    engine = Engine([g], pricing=_pricing())
    run = engine._setup(contend=True)
    c = run.contention[0]
    assert c.reach == [[2, 2, 0, float("inf"), float("inf")]]


def _stretched_chain(parts, rates, start, busy, ivs, c, comm):
    """``run_chain_contended``'s general path: every part through ``stretch``."""
    t = start
    for (d, slot), rate in zip(parts, rates, strict=True):
        stop = engine_share.stretch(comm, t, d, rate)
        c.slowed_s += (stop - t) - d
        engine_share.add_busy(busy, ivs[slot], slot, t, stop)
        t = stop
    return t


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(0, 2), st.floats(0.3, 1.0)),
                min_size=1, max_size=8), st.floats(0.0, 100.0), st.floats(0.0, 1e-3))
def test_a_chain_beside_no_collective_runs_as_stretched(parts, start, slowed):
    """With no collective known after its start, a contended chain skips ``stretch``
    (``run_chain_contended``, ``chain_end``): the same end, busy sums, intervals and
    slowed seconds, float for float (the slowed sum starts off zero, as mid-run)."""
    pieces = [(d, slot) for d, slot, _ in parts]
    rates = [rate for _, _, rate in parts]
    results = []
    for run_it in (engine_contended.run_chain_contended, _stretched_chain):
        busy, ivs = [0.1, 0.2, 0.3], [[0.0, start], [], [0.0, 0.5]]
        c = engine_share.Contention([0], slowed_s=slowed)
        end = run_it(pieces, rates, start, busy, ivs, c, [])
        results.append((end, busy, ivs, c.slowed_s))
    assert results[0] == results[1]
    assert engine_share.chain_end(pieces, rates, start, []) == results[0][0]
