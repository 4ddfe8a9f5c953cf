"""``Engine.run`` under SM contention schedules contended at once (``engine_contended.contended_first``,
docs/performance.md "What is still expensive"): it used to schedule plainly first and
reschedule contended only when compute overlapped a collective. Both ways must give the
same result, float for float, on graphs with and without overlap."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_contended_order import _graph, _pricing, _run_patched, _same, _seg, item
from xpusim.sim import engine_contended
from xpusim.sim.engine import Engine, SimResult
from xpusim.sim.engine_contended import contended, overlapped
from xpusim.sim.ir import Collective, CollectiveKind, RankGraph, Stream


def _two_passes(engine: Engine) -> SimResult:
    """The engine's path before: the plain schedule, then the contended one only when the
    plain one overlapped compute with a collective."""
    run = engine._setup()
    engine._schedule(run)
    engine._check_finished(run)
    if overlapped(engine, run):
        run = contended(engine)
    return engine._collect(run, records=True)


@settings(max_examples=250, deadline=None)
@given(st.lists(item, min_size=1, max_size=14), st.integers(1, 3),
       st.sampled_from([0.3, 0.6, 0.999]))
def test_contended_first_gives_the_two_pass_result(spec, ranks, share):
    graphs = [_graph(spec, r, ranks) for r in range(ranks)]
    engine = Engine(graphs, pricing=_pricing())
    engine.pricing.comm_share = share
    _same(engine.run(records=True), _two_passes(Engine(graphs, pricing=engine.pricing)))


def _serial(wait_for_collective: bool) -> RankGraph:
    """compute A (1 s), a solo collective X (2 s) after A, compute B (4 s), which waits
    for X when ``wait_for_collective`` (then nothing overlaps)."""
    g = RankGraph(0)
    a = g.add(_seg("A", 1.0), Stream.COMPUTE, label="fwd")
    x = g.add(Collective("X", CollectiveKind.ALL_GATHER, (0,), 2.0), Stream.COMM,
              deps=(a,), label="tp")
    g.add(_seg("B", 4.0), Stream.COMPUTE, deps=(x,) if wait_for_collective else (),
          label="fwd")
    return g


@pytest.mark.parametrize("wait", [True, False])
def test_slowed_seconds_only_where_compute_overlapped(wait):
    """No overlap: the plain schedule, reported with no slowed seconds (as before); overlap:
    B stretched over X at half rate (ends at 6, 1 s slowed)."""
    pricing = _pricing()
    pricing.comm_share = 0.5
    res = Engine([_serial(wait)], pricing=pricing).run(records=True)
    by = {r.name: (r.start, r.end) for r in res.records}
    assert by["B"] == ((3.0, 7.0) if wait else (1.0, 6.0))
    assert res.slowed_s == ({} if wait else {0: 1.0})
    _same(res, _two_passes(Engine([_serial(wait)], pricing=pricing)))


def test_a_deadlock_is_reported_by_the_plain_pass():
    """A collective whose other member never arrives: the plain pass's message."""
    g = RankGraph(0)
    g.add(_seg("A", 1.0), Stream.COMPUTE, label="fwd")
    g.add(Collective("P", CollectiveKind.SEND_RECV, (0, 1), 1.0), Stream.COMM, label="pp")
    other = RankGraph(1)
    other.add(_seg("A", 1.0), Stream.COMPUTE, label="fwd")
    with pytest.raises(RuntimeError, match="deadlock: collectives never completed"):
        Engine([g, other], pricing=_pricing()).run()


_first_look = engine_contended._first_look


def _look_at_the_end_too(run, g, tid, start):
    """``_first_look`` without its -2: the end is always looked at (``_blocking_comm``)."""
    look = _first_look(run, g, tid, start)
    return -1 if look == -2 else look


@settings(max_examples=150, deadline=None)
@given(st.lists(item, min_size=1, max_size=14), st.integers(1, 3))
def test_no_second_look_when_no_stream_can_block(spec, ranks):
    """``_final_end`` skips ``_blocking_comm`` at a task's end when no comm stream's next
    contending collective is free of the task (``_first_look`` -2): looking anyway gives
    the same schedule, float for float."""
    graphs = [_graph(spec, r, ranks) for r in range(ranks)]
    skipped = Engine(graphs, pricing=_pricing()).run(records=True)
    _same(skipped, _run_patched(graphs, "_first_look", _look_at_the_end_too))
