"""Chain tasks (``sim.ir.Chain``: a run of one stream's work that nothing waits for
part-way) give the same schedule and the same streamed breakdown, to the bit, as one
task per part: in the engine on random graphs, and in training lowerings (which fold
runs of compute pieces into chains unless every task's record is asked for)."""

import pytest
from engine_results import assert_same_schedule
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_system
from xpusim.sim.cost.pricing import Pricing
from xpusim.sim.engine import Engine, SimResult
from xpusim.sim.ir import Chain, Collective, CollectiveKind, Op, OpKind, RankGraph, Segment, Stream
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.simulate import TrainingOptions, lower_step, step_pricing

LABELS = ("fwd", "bwd", "tp", "dp")

# (kind, duration, label, chained with the previous item): kind 0 a segment, 1 a solo
# collective, 2 a collective of every rank on the comm stream (a rendezvous).
item = st.tuples(st.integers(0, 2), st.floats(0.0, 3.0), st.sampled_from(LABELS), st.booleans())


def _segment(name: str, seconds: float) -> Segment:
    return Segment(name, (Op(name, OpKind.ELEMENTWISE, seconds, {}),))


def _graph(spec, rank: int, ranks: int, chains: bool) -> RankGraph:
    """One rank's program: runs of compute items (segments, solo collectives) folded into
    chains when ``chains``, rendezvous collectives on the comm stream between them."""
    g = RankGraph(rank)
    run: list[tuple[Segment | Collective, str]] = []
    last: list[int] = []

    def flush() -> None:
        if len(run) > 1 and chains:
            last[:] = [g.add(Chain("c", tuple(run)), Stream.COMPUTE, last, run[0][1])]
        else:
            for work, label in run:
                last[:] = [g.add(work, Stream.COMPUTE, last, label)]
        run.clear()

    for i, (kind, dur, label, chained) in enumerate(spec):
        if kind == 2:
            flush()
            coll = Collective("r", CollectiveKind.ALL_REDUCE, tuple(range(ranks)), dur, tag=i)
            last[:] = [g.add(coll, Stream.COMM, last, label)]
            continue
        if not chained:
            flush()
        dur *= 1 + 0.37 * rank
        work = (_segment(f"s{i}", dur) if kind == 0 else
                Collective(f"c{i}", CollectiveKind.ALL_REDUCE, (rank,), dur))
        run.append((work, label))
    flush()
    return g


def _same(a: SimResult, b: SimResult) -> None:
    assert_same_schedule(a, b)
    assert list(a.intervals.items()) == list(b.intervals.items())


@settings(max_examples=80, deadline=None)
@given(st.lists(item, min_size=1, max_size=30), st.integers(1, 3))
def test_chain_tasks_equal_one_task_per_part(spec, ranks):
    pricing = Pricing(lambda op: op.flops, lambda c: c.bytes)
    runs = []
    for chains in (False, True):
        graphs = [_graph(spec, r, ranks, chains) for r in range(ranks)]
        runs.append(Engine(graphs, pricing=pricing).run(records=False))
    _same(*runs)


def test_chain_with_a_rendezvous_part_is_refused():
    coll = Collective("x", CollectiveKind.ALL_REDUCE, (0, 1), 1.0)
    graphs = [RankGraph(r) for r in (0, 1)]
    for g in graphs:
        g.add(Chain("bad", ((_segment("s", 1.0), "fwd"), (coll, "tp"))), Stream.COMPUTE)
    with pytest.raises(ValueError, match="cannot be a chain part"):
        Engine(graphs, pricing=Pricing(lambda op: 1.0, lambda c: 1.0)).run()


PLANS = [
    ("gpt3-1.7b", "dgx-a100", 1, ParallelPlan(tp=2, pp=2, dp=2, mbs=1, gbs=16, seq=1024)),
    ("gpt3-1.7b", "dgx-a100", 2, ParallelPlan(tp=2, pp=4, vpp=2, mbs=1, gbs=32, seq=1024,
                                               overlap_tp=True, sequence_parallel=True)),
    ("mixtral-8x7b", "dgx-h100", 4, ParallelPlan(tp=2, pp=4, ep=4, mbs=1, gbs=64, seq=2048)),
    ("mixtral-8x7b", "dgx-h100", 4, ParallelPlan(tp=2, pp=4, ep=4, mbs=1, gbs=64, seq=2048,
                                                  overlap_ep=False, recompute="full")),
]


@pytest.mark.parametrize("model,system,nodes,plan", PLANS)
def test_training_chains_change_nothing(model, system, nodes, plan):
    spec, sysm = load_model(model), load_system(system, nodes=nodes)
    chained = lower_step(spec, sysm, plan)
    plain = lower_step(spec, sysm, plan, TrainingOptions(exact=True))
    assert chained.tasks == plain.tasks
    assert sum(len(g.tasks) for g in chained.graphs) < sum(len(g.tasks) for g in plain.graphs)
    pricing = step_pricing(chained.plan, sysm, TrainingOptions())
    _same(Engine(chained.graphs, pricing=pricing).run(records=False),
          Engine(plain.graphs, pricing=pricing).run(records=False))


span = st.tuples(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0]), st.floats(0.0, 2.0))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(span, max_size=8), max_size=4))
def test_union_spans_equals_union_intervals(lists):
    """The vectorised union of flat interval lists (stage_stats) is the engine's union."""
    from xpusim.sim.engine import union_intervals
    from xpusim.sim.training.spans import union_arrays

    pairs = [[(s, s + d) for s, d in spans] for spans in lists]
    flat = [[t for p in spans for t in p] for spans in pairs]
    start, end = union_arrays(flat)
    assert list(zip(start.tolist(), end.tolist(), strict=True)) == \
        union_intervals([p for spans in pairs for p in spans])


def test_replayed_unit_pairs_emit_the_same_tasks(monkeypatch):
    """Interleaved (merged F/B) unit pairs are replayed from a recording: the same tasks,
    (work, stream, dependencies, label) as emitting every pair afresh."""
    from xpusim.sim.training.emitter import Emitter

    spec, sysm = load_model("mixtral-8x7b"), load_system("dgx-h100", nodes=4)
    plan = ParallelPlan(tp=2, pp=4, ep=4, mbs=1, gbs=64, seq=2048)

    def tasks(step):
        return [[(type(t.work).__name__, t.work.name, t.stream, t.deps, t.label)
                 for t in g.tasks] for g in step.graphs]

    for exact in (False, True):
        options = TrainingOptions(exact=exact)
        replayed = lower_step(spec, sysm, plan, options)
        with monkeypatch.context() as m:
            m.setattr(Emitter, "run_pair", Emitter.run_blocks)
            fresh = lower_step(spec, sysm, plan, options)
        assert replayed.tasks == fresh.tasks
        assert tasks(replayed) == tasks(fresh)
