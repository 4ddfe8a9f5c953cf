"""Asynchronous DP/FSDP collectives on their own stream (``Stream.DP_COMM``), so the TP
collectives of ``Stream.COMM`` do not queue behind them: hand-computed schedules."""

import pytest
from xpusim.sim.cost.pricing import Pricing
from xpusim.sim.engine import Engine
from xpusim.sim.engine_share import comm_slot
from xpusim.sim.ir import Collective, CollectiveKind, Op, OpKind, RankGraph, Stream
from xpusim.sim.trace import chrome_trace
from xpusim.sim.training import layers as L
from xpusim.sim.training.emitter import _async_stream
from xpusim.sim.training.units import Piece

_COMM_S = {"fsdp_ag": 3.0, "tp_ag#0": 1.0}


def _op(name: str, seconds: float) -> Op:
    return Op(name, OpKind.GEMM, seconds, {})  # the pricing reads flops as seconds


def _coll(name: str) -> Collective:
    return Collective(name, CollectiveKind.ALL_GATHER, (0,), 1e6)  # solo: no rendezvous


def _pricing(share: float = 1.0) -> Pricing:
    return Pricing(lambda op: op.flops, lambda c: _COMM_S[c.name], comm_share=share)


def _graph(dp_stream: Stream) -> RankGraph:
    """compute: A (1 s), then B (1 s) needing the TP piece; the FSDP gather (3 s) is
    issued at t = 0 on ``dp_stream``, the TP piece (1 s) after A on COMM."""
    g = RankGraph(0)
    g.add(_coll("fsdp_ag"), dp_stream, label="dp")
    a = g.add(_op("A", 1.0), Stream.COMPUTE, label="fwd")
    p = g.add(_coll("tp_ag#0"), Stream.COMM, deps=(a,), label="tp")
    g.add(_op("B", 1.0), Stream.COMPUTE, deps=(p,), label="fwd")
    return g


def test_tp_piece_no_longer_waits_for_the_gather():
    # DP_COMM: gather 0..3, A 0..1, TP piece 1..2, B 2..3: step 3 s.
    res = Engine([_graph(Stream.DP_COMM)], pricing=_pricing()).run()
    by = {r.name: r for r in res.records}
    assert (by["tp_ag#0"].start, by["tp_ag#0"].end) == pytest.approx((1.0, 2.0))
    assert (by["B"].start, by["B"].end) == pytest.approx((2.0, 3.0))
    assert res.makespan_s == pytest.approx(3.0)
    # One shared COMM stream (before): the piece queues behind the gather, 3..4; B 4..5.
    old = Engine([_graph(Stream.COMM)], pricing=_pricing()).run()
    assert old.makespan_s == pytest.approx(5.0)


def test_dp_comm_collectives_slow_compute_like_comm_ones():
    """SM contention counts DP_COMM collectives: A (1 s), then B (4 s) beside the TP
    piece (1..2) and the gather issued after A (1..4): the union 1..4 runs B at half
    rate: 1.5 s of work by 4, 2.5 s after: ends at 6.5. Two concurrent collectives
    slow compute as one does (the union of their intervals)."""
    g = RankGraph(0)
    a = g.add(_op("A", 1.0), Stream.COMPUTE, label="fwd")
    g.add(_coll("fsdp_ag"), Stream.DP_COMM, deps=(a,), label="dp")
    g.add(_coll("tp_ag#0"), Stream.COMM, deps=(a,), label="tp")
    g.add(_op("B", 4.0), Stream.COMPUTE, label="fwd")
    res = Engine([g], pricing=_pricing(0.5)).run()
    by = {r.name: r for r in res.records}
    assert by["B"].end == pytest.approx(6.5)
    assert res.slowed_s[0] == pytest.approx(1.5)
    assert comm_slot(("dp_comm", "dp")) and comm_slot(("comm", "tp"))
    assert not comm_slot(("comm", "pp")) and not comm_slot(("copy", "tp"))


def test_emitter_puts_dp_pieces_on_their_own_stream():
    tp = L.Comm("attn.qkv_ag#0", CollectiveKind.ALL_GATHER, 1e6, "tp")
    dp = L.Comm("fsdp.param_ag.dense", CollectiveKind.ALL_GATHER, 1e9, "dp_dense")
    assert _async_stream(Piece("fwd", "s0", comm=tp, async_=True, key=1)) == Stream.COMM
    assert _async_stream(Piece("fwd", "s0", comm=dp, async_=True, key=2)) == Stream.DP_COMM


def test_trace_has_a_dp_comm_row():
    res = Engine([_graph(Stream.DP_COMM)], pricing=_pricing()).run(records=True)
    ev = chrome_trace(res)["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in ev if e.get("name") == "thread_name"}
    assert names[3] == "dp_comm"
    assert {e["tid"] for e in ev if e.get("name") == "fsdp_ag" and e.get("ph") == "X"} == {3}
