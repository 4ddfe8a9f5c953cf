"""SM contention in the engine: compute tasks slowed while a collective is in flight.

A collective kernel holds some of the device's SMs for its whole duration
(``sim.cost.pricing.overlap_compute_share``), so a compute task that overlaps it in time
on the same rank progresses at a reduced rate for the overlapping interval (processor
sharing). ``stretch`` gives such a task's end from its start, its work (its uncontended
duration) and the rank's busy intervals of collectives; ``Contention`` is the per-graph
state of one contended engine run (``sim.engine.Engine._contended``).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field


@dataclass
class Contention:
    """One rank graph in a contended run: the (stream, label) slots of its collectives
    (``comm_slot``), its comm streams' indices in the run, per plain compute
    task its (work seconds, contended rate), per chain task its parts' rates, and the
    seconds compute was slowed by."""

    comm_slots: list[int]
    comm_streams: list[int] = field(default_factory=list)
    # per comm stream, ``engine_contended.comm_reach`` of its tasks
    reach: list[list[float]] = field(default_factory=list)
    # (comm stream, its reach) of each: ``_blocking_comm`` reads the two together ~6.6M
    # times over ``validate --published``'s training rows (a zip per call, before).
    streams: list[tuple[int, list[float]]] = field(default_factory=list)
    plain: dict[int, tuple[float, float]] = field(default_factory=dict)
    chain_rates: dict[int, list[float]] = field(default_factory=dict)
    slowed_s: float = 0.0
    # Per waiting compute task: (start, its graph's state, its tentative end), so that a
    # task that waits through many releases is not stretched again while none of its
    # rank's collectives changed (``engine_contended._tentative_end``).
    tentative: dict[int, tuple[float, tuple[int, ...], float]] = field(default_factory=dict)


def comm_slot(key: tuple[str, str]) -> bool:
    """Whether a (stream, label) slot holds collectives that contend with compute:
    the comm streams' (``comm``, ``dp_comm``), except PP sends and receives (label "pp"), which NCCL runs on a
    few channels per peer (NCCL_NCHANNELS_PER_NET_PEER, default 2), not the
    collective's channel count. The copy stream uses copy engines, not SMs."""
    return key[0] in ("comm", "dp_comm") and key[1] != "pp"


def known_comm(ivs: list[list[float]], slots: list[int], start: float) -> list[float]:
    """The collectives' busy intervals known so far (flat, sorted, disjoint), for
    ``stretch`` from ``start``: empty when none ends after ``start``. When one slot has
    such intervals, its whole list, not a copy of its tail: ``stretch`` bisects the list
    at ``start`` itself and reads it no earlier than there, and the tail starts at an even
    index, so it reads the same floats (no copy per contended task, which grows with how
    far the comm stream ran ahead). Else the union of the slots' tails (``_tail``). The
    list is only read (a comm slot's, which a contended compute task never writes)."""
    picked: list[list[float]] = []
    for slot in slots:  # a loop, not a comprehension: one call fewer (this runs per task)
        iv = ivs[slot]
        if iv and iv[-1] > start:
            picked.append(iv)
    if len(picked) == 1:
        return picked[0]
    return flat_union([_tail(iv, start) for iv in picked]) if picked else []


def _tail(iv: list[float], start: float) -> list[float]:
    """The intervals of ``iv`` that end after ``start`` (from the one holding it)."""
    i = bisect_right(iv, start)
    return iv[i - 1 if i % 2 == 1 else i:]


def chain_end(parts: list[tuple[float, int]], rates: list[float], start: float,
              comm: list[float]) -> float:
    """End of a chain whose parts run back to back, each stretched over ``comm``
    (``stretch`` over no interval is ``t + d``)."""
    t = start
    if not comm:
        for d, _ in parts:
            t = t + d
        return t
    for (d, _), rate in zip(parts, rates, strict=True):
        t = stretch(comm, t, d, rate)
    return t


def stretch(comm: list[float], start: float, work: float, rate: float) -> float:
    """End of a task that starts at ``start`` and needs ``work`` seconds at full rate,
    running at ``rate`` inside the intervals ``comm`` (flat, sorted, disjoint) and at
    full rate outside them.

    Example: comm = [1, 3], start 0, work 2, rate 0.5: 1 s at full rate to t = 1, then
    the last second of work takes 2 s at half rate: end 3."""
    if rate >= 1.0 or work <= 0.0:
        return start + work
    n = len(comm)
    i = bisect_right(comm, start)
    t = start
    left = work
    if i % 2 == 1:  # ``start`` lies inside the interval that ends at comm[i]
        cap = (comm[i] - t) * rate
        if left <= cap:
            return t + left / rate
        left -= cap
        t = comm[i]
        i += 1
    while i < n:
        a, b = comm[i], comm[i + 1]
        if t + left <= a:
            return t + left
        left -= a - t
        cap = (b - a) * rate
        if left <= cap:
            return a + left / rate
        left -= cap
        t = b
        i += 2
    return t + left


def merge_interval(iv: list[float], start: float, stop: float) -> None:
    """Add [start, stop) to a flat, time-ordered list of busy intervals (s0, e0, s1, ...),
    extending the last one when they touch or overlap."""
    if stop <= start:
        return
    if iv and start <= iv[-1]:
        if stop > iv[-1]:
            iv[-1] = stop
    else:
        iv.append(start)
        iv.append(stop)


def flat_union(lists: list[list[float]]) -> list[float]:
    """Union of flat interval lists (each sorted and disjoint) as one flat list."""
    pairs = sorted((iv[k], iv[k + 1]) for iv in lists for k in range(0, len(iv), 2))
    out: list[float] = []
    for a, b in pairs:
        merge_interval(out, a, b)
    return out


def intersects(busy: list[float], other: list[float]) -> bool:
    """Whether two flat interval lists (sorted, disjoint) overlap for a positive time;
    a bisection into ``busy`` per interval of ``other`` (the shorter list)."""
    n = len(busy)
    for k in range(0, len(other), 2):
        a, b = other[k], other[k + 1]
        i = bisect_right(busy, a)
        if i % 2 == 1 and busy[i] > a:
            return True  # ``a`` lies inside a busy interval
        if i < n and busy[i] < b:
            return True  # a busy interval starts inside [a, b)
    return False


def run_chain(parts: list[tuple[float, int]], start: float, busy: list[float], ivs: list[list[float]]
               ) -> float:
    """Run a chain's parts back to back from ``start``: each adds its busy time and
    interval to its slot exactly as a task of its own would (the engine's hot loop);
    returns the chain's end."""
    t = start
    for d, slot in parts:
        stop = t + d
        busy[slot] += stop - t
        iv = ivs[slot]
        if iv and t <= iv[-1]:
            iv[-1] = stop
        elif stop > t:
            iv.append(t)
            iv.append(stop)
        t = stop
    return t


def add_busy(busy: list[float], iv: list[float], slot: int, start: float, stop: float
              ) -> None:
    """A task's busy time and interval on its slot (as the hot loop adds them)."""
    busy[slot] += stop - start
    if iv and start <= iv[-1]:
        iv[-1] = stop
    elif stop > start:
        iv.append(start)
        iv.append(stop)


def finish(ready: list, begin: list[float], end: list[float | None], parked: list, tid: int,
           start: float, stop: float) -> None:
    """Task ``tid`` ran from ``start`` to ``stop``: record both and release the tasks that
    waited on it (``parked``) into ``ready``."""
    end[tid] = stop
    begin[tid] = start
    w = parked[tid]
    if w is not None:
        parked[tid] = None
        ready.extend(w)
