"""SM contention between NCCL collectives and overlapped compute (sim.engine_share,
Pricing.comm_share / contended_rate, Engine's contended rounds): hand-computed times."""

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.cost.pricing import Pricing, overlap_compute_share
from xpusim.sim.engine import Engine
from xpusim.sim.engine_share import flat_union, stretch
from xpusim.sim.ir import Chain, Collective, CollectiveKind, Op, OpKind, RankGraph, Segment, Stream


def _op(name: str, seconds: float) -> Op:
    return Op(name, OpKind.GEMM, seconds, {})  # op_time below reads flops as seconds


def _coll(name: str) -> Collective:
    return Collective(name, CollectiveKind.ALL_GATHER, (0,), 1e6)  # solo: no rendezvous


def _pricing(share: float, comm_s: float = 2.0) -> Pricing:
    return Pricing(lambda op: op.flops, lambda c: comm_s, comm_share=share)


def test_stretch_by_hand():
    # 1 s at full rate to t = 1, then the last second of work at half rate: 2 s.
    assert stretch([1.0, 3.0], 0.0, 2.0, 0.5) == pytest.approx(3.0)
    # Starts inside [0, 2]: 1 s at half rate = 0.5 of work, 0.5 left at full rate.
    assert stretch([0.0, 2.0], 1.0, 1.0, 0.5) == pytest.approx(2.5)
    # Crosses two intervals: 0-1 free (1), 1-2 half (0.5), 2-3 free (1), 3-5 half (1),
    # 0.5 left after 5.
    assert stretch([1.0, 2.0, 3.0, 5.0], 0.0, 4.0, 0.5) == pytest.approx(5.5)
    # Ends before the first interval, or no contention: unchanged.
    assert stretch([5.0, 6.0], 0.0, 2.0, 0.5) == 2.0
    assert stretch([0.0, 6.0], 0.0, 2.0, 1.0) == 2.0


def test_flat_union():
    assert flat_union([[0.0, 1.0, 4.0, 5.0], [0.5, 2.0]]) == [0.0, 2.0, 4.0, 5.0]


def test_compute_overlapping_a_collective_slows_for_the_overlap():
    """compute: A (1 s), B (4 s); comm: C (2 s) after A. C runs 1..3; B starts at 1 and
    does 1 s of work in 1..3 at half rate, 3 s after: ends at 6 (not 5)."""
    g = RankGraph(0)
    a = g.add(_op("A", 1.0), Stream.COMPUTE, label="fwd")
    g.add(_coll("C"), Stream.COMM, deps=(a,), label="dp")
    g.add(_op("B", 4.0), Stream.COMPUTE, label="fwd")
    res = Engine([g], pricing=_pricing(0.5)).run()
    by = {r.name: r for r in res.records}
    assert (by["C"].start, by["C"].end) == pytest.approx((1.0, 3.0))
    assert by["B"].end == pytest.approx(6.0)
    assert res.makespan_s == pytest.approx(6.0)
    assert res.slowed_s[0] == pytest.approx(1.0)
    assert res.busy_by_label[(0, "compute", "fwd")] == pytest.approx(6.0)
    # Without contention: B ends at 5.
    assert Engine([g], pricing=_pricing(1.0)).run().makespan_s == pytest.approx(5.0)


def test_fixed_point_when_the_collective_waits_for_slowed_compute():
    """compute: A 1, B 4, D 1; comm: X (2 s) after A, Y (2 s) after B. X 1..3 slows B to
    end at 6 (as above); Y then runs 6..8 and D, starting at 6, does its 1 s of work at
    half rate: ends at 8. The uncontended schedule (B ends 5, Y 5..7) is only the first
    round; the rounds settle on this one."""
    g = RankGraph(0)
    a = g.add(_op("A", 1.0), Stream.COMPUTE)
    g.add(_coll("X"), Stream.COMM, deps=(a,))
    b = g.add(_op("B", 4.0), Stream.COMPUTE)
    g.add(_coll("Y"), Stream.COMM, deps=(b,))
    g.add(_op("D", 1.0), Stream.COMPUTE)
    res = Engine([g], pricing=_pricing(0.5)).run()
    by = {r.name: r for r in res.records}
    assert (by["Y"].start, by["Y"].end) == pytest.approx((6.0, 8.0))
    assert (by["D"].start, by["D"].end) == pytest.approx((6.0, 8.0))
    assert res.slowed_s[0] == pytest.approx(2.0)


def test_chain_parts_slow_as_plain_tasks():
    """The same program with B and D folded into one chain gives the same times."""
    g = RankGraph(0)
    a = g.add(_op("A", 1.0), Stream.COMPUTE)
    g.add(_coll("X"), Stream.COMM, deps=(a,))
    parts = ((Segment("B", (_op("B", 4.0),)), "fwd"), (Segment("D", (_op("D", 1.0),)), "bwd"))
    g.add(Chain("BD", parts), Stream.COMPUTE)
    res = Engine([g], pricing=_pricing(0.5)).run()
    # B: 1 work in 1..3, 3 after: ends 6; D 6..7 (X is over).
    assert res.makespan_s == pytest.approx(7.0)
    assert res.busy_by_label[(0, "compute", "fwd")] == pytest.approx(5.0)
    assert res.busy_by_label[(0, "compute", "bwd")] == pytest.approx(1.0)
    assert res.slowed_s[0] == pytest.approx(1.0)


def test_pp_transfers_and_the_copy_stream_do_not_contend():
    g = RankGraph(0)
    a = g.add(_op("A", 1.0), Stream.COMPUTE)
    g.add(_coll("send"), Stream.COMM, deps=(a,), label="pp")
    g.add(_coll("swap"), Stream.COPY, deps=(a,))
    g.add(_op("B", 4.0), Stream.COMPUTE)
    assert Engine([g], pricing=_pricing(0.5)).run().makespan_s == pytest.approx(5.0)


def test_memory_bound_ops_do_not_slow():
    """A segment of a compute-bound op (3 s) and a memory-bound one (1 s) at share 3/4:
    stretch = 1 + (3/4) x (4/3 - 1) = 1.25, rate 0.8."""
    seg = Segment("s", (_op("gemm", 3.0), Op("add", OpKind.ELEMENTWISE, 1.0, {})))
    pricing = Pricing(lambda op: op.flops, lambda c: 1.0, comm_share=0.75,
                      op_bound=lambda op: "compute" if op.kind == OpKind.GEMM else "memory")
    assert pricing.contended_rate(seg) == pytest.approx(0.8)
    assert _pricing(1.0).contended_rate(seg) == 1.0


def test_share_from_profiles():
    # dgx-a100: 24 channels of 108 SMs; dgx-h100: 32 of 132; Ascend (HCCL on SDMA): none.
    assert overlap_compute_share(load_system("dgx-a100")) == pytest.approx(84 / 108)
    assert overlap_compute_share(load_system("dgx-h100")) == pytest.approx(100 / 132)
    for name in ("atlas-800t-a2", "cloudmatrix-384", "mi300x-8"):
        assert overlap_compute_share(load_system(name)) == 1.0


def test_intersects():
    from xpusim.sim.engine_share import intersects

    busy = [0.0, 1.0, 2.0, 3.0]
    assert intersects(busy, [0.5, 0.6])
    assert intersects(busy, [1.5, 2.5])
    assert not intersects(busy, [1.0, 2.0])  # touching ends only
    assert not intersects(busy, [3.0, 9.0])
