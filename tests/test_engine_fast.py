"""The fast engine (dependency recurrence, streams parked on unknown inputs) against the
SimPy reference engine: same start and end for every task, same makespan, and the
streamed breakdown (busy time and interval unions per rank, stream, label) equal to
the one computed from the records."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.sim.engine import Engine, SimPyEngine, union_intervals
from xpusim.sim.ir import Collective, CollectiveKind, Delay, RankGraph, Stream

LABELS = ("fwd", "bwd", "tp", "dp")


def _graphs(spec, ranks: int) -> list[RankGraph]:
    """Every rank runs the same program shape (so collectives match) with its own durations;
    collective i is on stream ``stream`` with group all ranks, tagged by its index."""
    graphs = []
    for rank in range(ranks):
        g = RankGraph(rank)
        for i, (stream, dur, deps, is_coll, label) in enumerate(spec):
            deps = sorted({d % i for d in deps}) if i else ()
            if is_coll:
                work = Collective("c", CollectiveKind.ALL_REDUCE, tuple(range(ranks)), 1.0, tag=i)
            else:
                work = Delay(f"t{i}", dur * (1 + 0.37 * rank))
            g.add(work, stream, deps, label)
        graphs.append(g)
    return graphs


task = st.tuples(st.sampled_from(list(Stream)), st.floats(0.0, 5.0),
                 st.lists(st.integers(0, 1000), max_size=3), st.booleans(),
                 st.sampled_from(LABELS))


@settings(max_examples=80, deadline=None)
@given(st.lists(task, min_size=1, max_size=30), st.integers(1, 3))
def test_fast_engine_equals_simpy_engine(spec, ranks):
    graphs = _graphs(spec, ranks)
    try:
        ref = SimPyEngine(graphs, lambda op: 0.0, lambda c: 0.25).run()
    except RuntimeError:  # a collective order that deadlocks: both must say so
        with pytest.raises(RuntimeError, match="deadlock"):
            Engine(graphs, lambda op: 0.0, lambda c: 0.25).run()
        return
    fast = Engine(graphs, lambda op: 0.0, lambda c: 0.25).run()
    key = lambda r: (r.rank, r.task)  # noqa: E731
    got, want = sorted(fast.records, key=key), sorted(ref.records, key=key)
    assert [r[:6] for r in got] == [r[:6] for r in want]
    assert [t for r in got for t in r[6:]] == pytest.approx([t for r in want for t in r[6:]],
                                                            rel=1e-12)
    assert fast.makespan_s == pytest.approx(ref.makespan_s, rel=1e-12)
    streamed = Engine(graphs, lambda op: 0.0, lambda c: 0.25).run(records=False)
    assert streamed.records == []
    assert streamed.makespan_s == fast.makespan_s
    for k, spans in streamed.intervals.items():
        from_records = union_intervals([(r.start, r.end) for r in fast.records
                                        if (r.rank, r.stream, r.label) == k])
        assert [t for span in spans for t in span] == pytest.approx(
            [t for span in from_records for t in span], rel=1e-12)
        assert streamed.busy_by_label[k] == pytest.approx(
            sum(r.end - r.start for r in fast.records if (r.rank, r.stream, r.label) == k),
            rel=1e-12, abs=1e-12)
    assert streamed.busy_s == pytest.approx(ref.busy_s, rel=1e-12, abs=1e-12)


def test_collectives_on_different_streams_in_opposite_orders_do_not_deadlock():
    """Rank 0 meets x on comm and y on compute; rank 1 the other way round: each stream
    parks on its own collective, as CUDA streams would."""
    graphs = []
    for rank in range(2):
        g = RankGraph(rank)
        first, second = ("x", "y") if rank == 0 else ("y", "x")
        g.add(Collective(first, CollectiveKind.ALL_REDUCE, (0, 1), 1.0), Stream.COMM)
        g.add(Collective(second, CollectiveKind.ALL_REDUCE, (0, 1), 1.0), Stream.COMPUTE)
        graphs.append(g)
    fast = Engine(graphs, lambda op: 0.0, lambda c: 2.0).run()
    ref = SimPyEngine(graphs, lambda op: 0.0, lambda c: 2.0).run()
    assert fast.makespan_s == ref.makespan_s == 2.0


def test_waiting_on_another_stream_starts_at_its_end():
    g = RankGraph(0)
    a = g.add(Delay("a", 3.0), Stream.COMM)
    g.add(Delay("b", 1.0), Stream.COMPUTE)
    g.add(Delay("c", 1.0), Stream.COMPUTE, (a,))
    res = Engine([g], lambda op: 0.0, lambda c: 0.0).run()
    assert [(r.start, r.end) for r in res.records] == [(0.0, 3.0), (0.0, 1.0), (3.0, 4.0)]
    assert res.intervals[(0, Stream.COMPUTE, "")] == [(0.0, 1.0), (3.0, 4.0)]
