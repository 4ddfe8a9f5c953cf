"""The discrete-event engine: ranks x streams, tasks scheduled by dependencies.

Each (rank, stream) runs its tasks in order, like a CUDA/ACL stream. A task starts when
the previous task of its stream and all its ``deps`` have finished. Work takes the time
the pricing pass gives it (``sim.cost.pricing``: ops and segments by the device's cost
model, collectives by the system's network); a ``Collective`` is a rendezvous: it
starts when every *simulated* member of its group has reached it (members outside the
simulation are assumed symmetric — scale by symmetry) and takes the network's time. A
collective with no other simulated member needs no rendezvous and takes its time at
once. Overlap of compute and communication is therefore a result of the schedule, not a
parameter.

``Engine`` computes that schedule by running each stream as far as its inputs are known
and parking it on the first unknown one; ``SimPyEngine`` (sim.engine_simpy) is the same
model as SimPy processes with one event per wait (the reference the tests compare with).
A run keeps, per (rank, stream, label), the busy time and the union of busy intervals;
per-task ``Record``s only when asked (traces, timelines). A ``Chain`` task (a run of
one stream's work that nothing waits for part-way) is scheduled as one task whose parts
each add their busy time and interval, as tasks of their own would.

SM contention (``sim.engine_contended``, ``sim.engine_share``): when the pricing says compute slows while a
collective is in flight on its rank (``Pricing.comm_share`` < 1, NVIDIA/NCCL systems),
``Engine.run`` schedules with every compute-stream segment stretched over its rank's
collectives (processor sharing: the overlapping time runs at the reduced rate), and
reports the plain schedule where that one overlaps nothing (it is then the same
schedule: ``engine_contended.contended_first``). A compute task's
end is final only once no collective of its rank can still start before it: it waits
until its rank's comm stream has advanced past it, and when every stream is blocked the
waiting task with the least end is final (every collective not yet started starts
after it). ``SimPyEngine`` carries no contention term: it is the
reference for the uncontended schedule (pricing without a system).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple, cast

from xpusim.sim.cost.pricing import Pricing
from xpusim.sim.engine_contended import (
    comm_reach,
    contended_entry,
    contended_first,
    special_contended,
)
from xpusim.sim.engine_share import Contention, comm_slot, finish, merge_interval, run_chain
from xpusim.sim.ir import (
    ASYNC_COMM_STREAMS,
    Chain,
    Collective,
    Delay,
    Op,
    RankGraph,
    Segment,
    Stream,
    Task,
    Work,
)


class Record(NamedTuple):
    """One executed task (a NamedTuple: immutable and cheap to create in the hot loop)."""

    rank: int
    stream: str
    task: int
    name: str
    kind: str
    label: str
    start: float
    end: float


@dataclass
class SimResult:
    makespan_s: float
    records: list[Record]
    ranks: list[int]
    busy_s: dict[tuple[int, str], float] = field(default_factory=dict)
    # (rank, stream, label) -> busy seconds, and the sorted, disjoint union of its busy
    # intervals as a flat list (s0, e0, s1, e1, ...): kept by every run, records or not
    # (sim.training.result.stage_stats); ``intervals`` gives them as pairs.
    busy_by_label: dict[tuple[int, str, str], float] = field(default_factory=dict)
    spans: dict[tuple[int, str, str], list[float]] = field(default_factory=dict)
    # rank -> seconds its compute stream was slowed by overlapped collectives (SM
    # contention, sim.engine_share); empty when the pricing has none.
    slowed_s: dict[int, float] = field(default_factory=dict)
    _pairs: dict[tuple[int, str, str], list[tuple[float, float]]] | None = field(
        default=None, repr=False, compare=False)

    @property
    def intervals(self) -> dict[tuple[int, str, str], list[tuple[float, float]]]:
        """``spans`` as (start, end) pairs (built on first use)."""
        if self._pairs is None:
            self._pairs = {k: list(zip(v[::2], v[1::2], strict=True))
                           for k, v in self.spans.items()}
        return self._pairs

    def rank_records(self, rank: int) -> list[Record]:
        return [r for r in self.records if r.rank == rank]

    def time_by_kind(self, rank: int | None = None) -> dict[str, float]:
        """Sum of task durations by kind (ops by op kind, collectives by collective kind)."""
        totals: dict[str, float] = {}
        for r in self.records:
            if rank is None or r.rank == rank:
                totals[r.kind] = totals.get(r.kind, 0.0) + (r.end - r.start)
        return totals

    def exposed_comm_s(self, rank: int) -> float:
        """Time the comm stream is busy while the compute stream is idle on ``rank``."""
        compute = union_intervals([(r.start, r.end) for r in self.records
                                   if r.rank == rank and r.stream == Stream.COMPUTE])
        comm = union_intervals([(r.start, r.end) for r in self.records
                                if r.rank == rank and r.stream != Stream.COMPUTE])
        return intervals_length(comm) - overlap_length(comm, compute)


def union_intervals(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, disjoint union of ``(start, end)`` intervals; empty ones are dropped."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def intervals_length(intervals: list[tuple[float, float]]) -> float:
    """Total length of disjoint intervals (the output of ``union_intervals``)."""
    return sum(b - a for a, b in intervals)


def overlap_length(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> float:
    """Length of the intersection of two sorted, disjoint interval lists (a linear merge)."""
    i = j = 0
    total = 0.0
    while i < len(xs) and j < len(ys):
        lo = max(xs[i][0], ys[j][0])
        hi = min(xs[i][1], ys[j][1])
        if hi > lo:
            total += hi - lo
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return total


def _kind_of(work: Work) -> str:
    if isinstance(work, Op | Collective):
        return str(work.kind)
    return work.kind


# Run state of one rank graph, a plain tuple (the hot loop unpacks it in one step, and
# tuple unpacking is fastest on an exact tuple): (tasks, durations, begin, end, parked,
# slot_of, busy, ivs, chains). Per task: its duration (None: a collective met at its
# rendezvous, or a chain), start and end once known, the streams parked on it, and its
# (stream, label) slot; per slot the busy time and the flat, time-ordered list of busy
# intervals (s0, e0, s1, e1, ...), kept as tasks end, records or not; per chain task
# its parts as (duration, slot).
_Parts = list[tuple[float, int]]
# ``Engine._price_graph``'s entry per (work, stream, label): slot, duration, chain parts,
# contended entry (``engine_contended.contended_entry``).
_Known = tuple[int, float | None, _Parts | None, tuple[float, float] | list[float] | None]
_Graph = tuple[
    list[Task],
    list[float | None],
    list[float],
    list[float | None],
    list[list[int] | None],
    list[int],
    list[float],
    list[list[float]],
    dict[int, _Parts],
]


@dataclass
class _Run:
    """Run state of one ``Engine.run``: per graph its state and slots; per stream its
    graph, task ids, next position and clock; the streams ready to advance; open
    rendezvous."""

    graphs: list[_Graph] = field(default_factory=list)
    slots: list[dict[tuple[Stream, str], int]] = field(default_factory=list)
    s_graph: list[int] = field(default_factory=list)
    s_tids: list[list[int]] = field(default_factory=list)
    s_pos: list[int] = field(default_factory=list)
    s_clock: list[float] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    rendezvous: dict[tuple, list] = field(default_factory=dict)
    contention: list[Contention] = field(default_factory=list)  # empty: none
    waiting: dict[int, tuple[int, float]] = field(default_factory=dict)  # stream -> task, start
    # stream -> its graph's state when it began to wait (``engine_contended._release``)
    wait_state: dict[int, tuple] = field(default_factory=dict)
    force: int = -1  # the waiting stream whose task ends at its least possible end


class Engine:
    """Runs rank graphs priced by a ``Pricing`` (sim.cost.pricing): an op by the cost
    model, a segment as its ops, a collective by the network (seconds).

    ``Engine(graphs, pricing=p)``; ``Engine(graphs, op_time, comm_time)`` wraps two
    functions in a ``Pricing``. ``run(records=False)`` streams: it keeps, per (rank,
    stream, label), the busy time and the union of busy intervals (what step breakdowns
    need), not one Record per task.
    """

    def __init__(
        self,
        graphs: Sequence[RankGraph],
        op_time: Callable[[Op], float] | None = None,
        comm_time: Callable[[Collective], float] | None = None,
        *,
        pricing: Pricing | None = None,
    ) -> None:
        if pricing is None:
            if op_time is None or comm_time is None:
                raise TypeError("Engine needs pricing=... or both op_time and comm_time")
            pricing = Pricing(op_time, comm_time)
        self.graphs = list(graphs)
        self.pricing = pricing
        self.simulated = frozenset(g.rank for g in self.graphs)
        self._members: dict[tuple[int, ...], int] = {}  # simulated members per group
        # id(collective) -> the fixed duration of one with no other simulated member; the
        # graphs hold every collective for the engine's life, so ids are not reused.
        self._solo: dict[int, float] = {}
        self._streams: list[list[tuple[Stream, list[int]]]] = []  # _stream_tids

    @property
    def op_time(self) -> Callable[[Op], float]:
        return self.pricing.op_time

    @property
    def comm_time(self) -> Callable[[Collective], float]:
        return self.pricing.comm_time

    def run(self, records: bool = True) -> SimResult:
        """Schedule every task: start = max(end of the previous task on its stream, end of
        its dependencies), or for a collective the latest arrival of its simulated members.

        Why not an event queue: no task's duration depends on what else runs at the same
        time (ops are priced alone, collectives by the network model without link sharing),
        so the discrete-event schedule is the fixed point of that recurrence, reached
        by running each stream as far as its inputs are known and parking it on the first
        unknown one (a dependency on another stream, a collective whose members have not
        all arrived). Same times as the SimPy engine (``SimPyEngine``, kept as the
        reference the tests compare with) at a fraction of the cost per task. Busy time
        and interval unions are read off the tasks' start and end times afterwards.
        """
        if self.pricing.comm_share < 1.0:
            return self._collect(contended_first(self), records)
        run = self._setup()
        self._schedule(run)
        self._check_finished(run)
        return self._collect(run, records)

    def _setup(self, contend: bool = False) -> _Run:
        """Run state for one schedule, the graphs priced afresh (``_price_graph``).
        ``contend``: compute slows beside collectives
        (``engine_contended.special_contended``)."""
        run = _Run()
        for gi, graph in enumerate(self.graphs):
            n = len(graph.tasks)
            slots: dict[tuple[Stream, str], int] = {}
            c = Contention([]) if contend else None
            durations, slot_of, chains = self._price_graph(graph, slots, c)
            if c is not None:
                c.comm_slots = [slot for key, slot in slots.items() if comm_slot(key)]
                run.contention.append(c)
            run.slots.append(slots)
            run.graphs.append((graph.tasks, durations, [0.0] * n, [None] * n, [None] * n,
                               slot_of, [0.0] * len(slots), [[] for _ in slots], chains))
            for stream, tids in self._stream_tids(gi, graph):
                if contend and stream in ASYNC_COMM_STREAMS:
                    c = run.contention[gi]
                    c.comm_streams.append(len(run.s_tids))
                    c.reach.append(comm_reach(graph.tasks, tids, slot_of, c.comm_slots,
                                               chains))
                    c.streams.append((len(run.s_tids), c.reach[-1]))
                run.s_graph.append(gi)
                run.s_tids.append(tids)
                run.s_pos.append(0)
                run.s_clock.append(0.0)
        run.ready = list(range(len(run.s_tids)))
        run.ready.reverse()  # pop() takes the first stream first
        return run

    def _stream_tids(self, gi: int, graph: RankGraph) -> list[tuple[Stream, list[int]]]:
        """Graph ``gi``'s streams in order of first use, each with its task ids in order;
        kept for the engine's life (a contended run schedules the same graphs again; the
        lists are only read)."""
        if gi < len(self._streams):
            return self._streams[gi]
        by_stream: dict[Stream, list[int]] = {}
        for task in graph.tasks:
            by_stream.setdefault(task.stream, []).append(task.id)
        self._streams.append(list(by_stream.items()))
        return self._streams[gi]

    def _schedule(self, run: _Run) -> None:
        """Advance streams until none can move: the engine's hot loop, one pass per task
        (a collective's rendezvous is ``_arrive``). Each stream runs as far as its inputs
        are known and parks on the first unknown one. A task's busy interval is merged
        into its slot's union as it ends: within a stream a task starts no earlier than
        the previous one ended, so it either extends the slot's last interval or starts
        a new one."""
        ready = run.ready
        pop, extend = ready.pop, ready.extend
        s_graph, s_tids, s_pos, s_clock = run.s_graph, run.s_tids, run.s_pos, run.s_clock
        graphs = run.graphs
        special = partial(special_contended, self) if run.contention else self._special
        while ready:
            s = pop()
            tasks, durations, begin, end, parked, slot_of, busy, ivs, _ = graphs[s_graph[s]]
            tids = s_tids[s]
            n = len(tids)
            i = s_pos[s]
            clock = s_clock[s]
            while i < n:
                tid = tids[i]
                start = clock
                for d in tasks[tid].deps:
                    e = end[d]
                    if e is None:
                        _park(parked, d, s)
                        break
                    start = e if e > start else start  # max(), inlined: this runs per task
                else:
                    dur = durations[tid]
                    if dur is None:
                        # A collective met at its rendezvous, or a chain (``_durations``).
                        stop = special(run, s, tid, start)
                        if stop is None:
                            break  # parked at the rendezvous; the last member moves it on
                    else:
                        stop = start + dur
                        end[tid] = stop
                        begin[tid] = start
                        slot = slot_of[tid]
                        busy[slot] += stop - start
                        iv = ivs[slot]
                        if iv and start <= iv[-1]:
                            iv[-1] = stop  # start == the slot's last end: extend it
                        elif stop > start:
                            iv.append(start)
                            iv.append(stop)
                        w = parked[tid]
                        if w is not None:
                            parked[tid] = None
                            extend(w)
                    clock = stop
                    i += 1
                    continue
                break  # parked on a dependency
            s_pos[s] = i
            s_clock[s] = clock

    def _special(self, run: _Run, s: int, tid: int, start: float) -> float | None:
        """Stream ``s`` reaches task ``tid``, whose inputs are met at ``start``, and the
        task has no plain duration: a chain runs its parts (``engine_share.run_chain``)
        and returns its end; a collective goes to its rendezvous (``_arrive``)."""
        tasks, _, begin, end, parked, _, busy, ivs, chains = run.graphs[run.s_graph[s]]
        parts = chains.get(tid)
        if parts is None:
            return self._arrive(run, s, tid, tasks[tid].work, start)  # type: ignore[arg-type]
        stop = run_chain(parts, start, busy, ivs)
        finish(run.ready, begin, end, parked, tid, start, stop)
        return stop

    def _arrive(self, run: _Run, s: int, tid: int, work: Collective, start: float
                ) -> float | None:
        """Stream ``s`` reaches collective ``tid`` at ``start``. Returns its end when this
        was the last simulated member to arrive (every member then ends at the same time
        and the other members' streams move on), else None."""
        rendezvous = run.rendezvous
        key = (work.name, work.tag, work.group)
        state = rendezvous.get(key)
        if state is None:
            state = rendezvous[key] = [[], self._expected(work.group), 0.0]
        arrived = state[0]
        arrived.append((s, tid))
        if start > state[2]:
            state[2] = start
        if len(arrived) < state[1]:
            return None
        t0 = state[2]
        t1 = t0 + self.pricing.comm_time(work)
        graphs, s_graph, ready = run.graphs, run.s_graph, run.ready
        for ms, mtid in arrived:
            _, _, begin, end, parked, slot_of, busy, ivs, _ = graphs[s_graph[ms]]
            end[mtid] = t1
            begin[mtid] = t0
            slot = slot_of[mtid]
            busy[slot] += t1 - t0
            merge_interval(ivs[slot], t0, t1)
            w = parked[mtid]
            if w is not None:
                parked[mtid] = None
                ready.extend(w)
            if ms != s:
                run.s_pos[ms] += 1
                run.s_clock[ms] = t1
                ready.append(ms)
        del rendezvous[key]  # done: a later collective with this key meets anew
        return t1

    def _check_finished(self, run: _Run) -> None:
        unfinished = list(run.rendezvous)
        if unfinished:
            raise RuntimeError(f"deadlock: collectives never completed: {unfinished[:3]}")
        if any(pos < len(tids) for pos, tids in zip(run.s_pos, run.s_tids, strict=True)):
            raise RuntimeError("deadlock: a stream waits for a task that never runs")

    def _collect(self, run: _Run, records: bool) -> SimResult:
        """The result: makespan, busy time and interval unions per (rank, stream, label),
        and the records when asked (built once, in (rank, task) order)."""
        makespan = 0.0
        busy_s: dict[tuple[int, str], float] = {}
        by_label: dict[tuple[int, str, str], float] = {}
        spans: dict[tuple[int, str, str], list[float]] = {}
        keep: list[Record] = []
        slowed = ({graph.rank: c.slowed_s
                   for graph, c in zip(self.graphs, run.contention, strict=True)}
                  if run.contention else {})
        for graph, g, slots in zip(self.graphs, run.graphs, run.slots, strict=True):
            rank = graph.rank
            tasks, _, begin, end, _, _, busy_by_slot, ivs, _ = g
            # Every task ended (_check_finished): no None left in ``end``.
            makespan = max(makespan, max(cast("list[float]", end), default=0.0))
            for (stream, label), slot in slots.items():
                busy = busy_by_slot[slot]
                iv = ivs[slot]
                busy_s[(rank, stream)] = busy_s.get((rank, stream), 0.0) + busy
                by_label[(rank, stream, label)] = busy
                spans[(rank, stream, label)] = iv
            if records:
                keep.extend([Record(rank, t.stream, t.id, t.work.name, _kind_of(t.work),
                                    t.label, begin[t.id], end[t.id] or 0.0)
                             for t in tasks])
        return SimResult(makespan, keep, sorted(self.simulated), busy_s, by_label, spans,
                         slowed_s=slowed)

    def _expected(self, group: tuple[int, ...]) -> int:
        """Simulated members of a collective's group (at least one: members outside the
        simulation are assumed symmetric)."""
        expected = self._members.get(group)
        if expected is None:
            simulated = self.simulated
            expected = self._members[group] = sum(1 for r in group if r in simulated) or 1
        return expected

    def _durations(self, graph: RankGraph) -> list[float | None]:
        """Each task's duration from the pricing (``_price``); None for a collective that
        meets other simulated members (priced at its rendezvous) and for a chain."""
        return [self._price(task.work) for task in graph.tasks]

    def _price(self, work: Work) -> float | None:
        """``Pricing.duration``, dispatched here per work type (this runs once per task).
        A collective with no other simulated member needs no rendezvous: it takes a fixed
        duration, priced once per collective object (a lowering shares one among every
        unit that runs it); one that meets others is priced at its rendezvous (None)."""
        cls = type(work)
        if cls is Collective:
            coll = cast(Collective, work)
            n = self._members.get(coll.group) or self._expected(coll.group)
            if n > 1:
                return None
            d = self._solo.get(id(coll))
            if d is None:
                d = self._solo[id(coll)] = self.pricing.comm_time(coll)
            return d
        if cls is Segment:
            return self.pricing.segment_time(cast(Segment, work))
        if cls is Op:
            return self.pricing.op_time(cast(Op, work))
        if cls is Chain:
            return None  # its parts are priced by ``_chain_parts``
        return cast(Delay, work).seconds

    def _price_graph(self, graph: RankGraph, slots: dict[tuple[Stream, str], int],
                     contention: Contention | None = None
                     ) -> tuple[list[float | None], list[int], dict[int, _Parts]]:
        """Per task its duration (``_price``) and (stream, label) slot, registered in
        ``slots`` in order of first use; per chain task its parts as (duration, slot).
        A chain's parts take their slots at its place, as one task per part would (the
        breakdown's sums then run in the same order); each distinct chain is priced once.
        ``contention``: a contended run's, which gets each compute task's contended rate
        (``engine_contended.contended_entry``; such a task's duration is then None: it
        leaves the hot loop for ``special_contended``)."""
        durations: list[float | None] = []
        slot_of: list[int] = []
        chains: dict[int, _Parts] = {}
        # (id(work), stream, label) -> (slot, duration, chain parts, contended entry): units
        # share work objects, which the graph holds (so ids stay unique), and pricing is a
        # pure function of the object; a key's first task registers its slots, so slots
        # are still numbered in order of first use.
        known: dict[tuple[int, Stream, str], _Known] = {}
        # The contended tables, read once (no ``cast`` per task: a call at run time).
        plain, chain_rates = ((contention.plain, contention.chain_rates)
                              if contention is not None else ({}, {}))
        for task in graph.tasks:
            work = task.work
            key = (id(work), task.stream, task.label)
            seen = known.get(key)
            if seen is None:
                seen = known[key] = self._price_key(task, slots, contention is not None)
            slot_of.append(seen[0])
            durations.append(seen[1])
            if seen[2] is not None:
                chains[task.id] = seen[2]
            if seen[3] is not None:  # contended: (work seconds, rate), or a chain's rates
                table = plain if seen[2] is None else chain_rates
                table[task.id] = seen[3]  # type: ignore[assignment]
        return durations, slot_of, chains

    def _price_key(self, task: Task, slots: dict[tuple[Stream, str], int],
                   contend: bool) -> _Known:
        """``_price_graph``'s entry for the first task of a (work, stream, label)."""
        work = task.work
        if type(work) is Chain:
            slot = _chain_slots(task, slots)
            parts = self._chain_parts(work, task.stream, slots)
            entry = contended_entry(self.pricing, task, None) if contend else None
            return slot, None, parts, entry
        slot = slots.setdefault((task.stream, task.label), len(slots))
        d = self._price(work)
        entry = contended_entry(self.pricing, task, d) if contend else None
        return slot, None if entry is not None else d, None, entry

    def _chain_parts(self, chain: Chain, stream: Stream,
                     slots: dict[tuple[Stream, str], int]) -> _Parts:
        parts: _Parts = []
        for work, label in chain.parts:
            if isinstance(work, Segment):
                d = self.pricing.segment_time(work)
            else:
                if self._expected(work.group) > 1:
                    raise ValueError(f"chain '{chain.name}': collective '{work.name}' meets "
                                     "other simulated ranks; it cannot be a chain part")
                solo = self._solo.get(id(work))
                if solo is None:
                    solo = self._solo[id(work)] = self.pricing.comm_time(work)
                d = solo
            parts.append((d, slots[(stream, label)]))
        return parts


def _chain_slots(task: Task, slots: dict[tuple[Stream, str], int]) -> int:
    """Register the (stream, label) slots of a chain task's parts in order; the task's
    own slot."""
    for _, label in cast(Chain, task.work).parts:
        slots.setdefault((task.stream, label), len(slots))
    return slots.setdefault((task.stream, task.label), len(slots))


def _park(parked: list[list[int] | None], tid: int, stream: int) -> None:
    """Stream ``stream`` waits for task ``tid`` to end."""
    w = parked[tid]
    if w is None:
        parked[tid] = [stream]
    else:
        w.append(stream)


def __getattr__(name: str) -> object:
    # SimPyEngine lives in sim.engine_simpy (imported on first use: SimPy is only the
    # tests' reference, and importing it costs every command's start-up).
    if name == "SimPyEngine":
        from xpusim.sim.engine_simpy import SimPyEngine

        return SimPyEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
