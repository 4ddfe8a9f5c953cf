"""The discrete-event engine: ranks x streams, tasks scheduled by dependencies.

Each (rank, stream) runs its tasks in order, like a CUDA/ACL stream. A task starts when
the previous task of its stream and all its ``deps`` have finished. Ops take the cost
model's time; a ``Collective`` is a rendezvous: it starts when every *simulated* member
of its group has reached it (members outside the simulation are assumed symmetric —
scale by symmetry) and takes the network's time. Overlap of compute and communication
is therefore a result of the schedule, not a parameter.

``Engine`` computes that schedule by running each stream as far as its inputs are known
and parking it on the first unknown one; ``SimPyEngine`` is the same model as SimPy
processes with one event per wait (the reference the tests compare with). A run keeps,
per (rank, stream, label), the busy time and the union of busy intervals; per-task
``Record``s only when asked (traces, timelines).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import simpy
from xpusim.sim.ir import Collective, Delay, Op, RankGraph, Stream, Work


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
    # intervals: kept by every run, records or not (sim.training.simulate.stage_stats).
    busy_by_label: dict[tuple[int, str, str], float] = field(default_factory=dict)
    intervals: dict[tuple[int, str, str], list[tuple[float, float]]] = field(
        default_factory=dict)

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
    if isinstance(work, Op):
        return str(work.kind)
    if isinstance(work, Collective):
        return str(work.kind)
    return work.kind


class Engine:
    """Runs rank graphs. ``op_time`` prices an Op, ``comm_time`` a Collective (seconds).

    ``run(records=False)`` streams: it keeps, per (rank, stream, label), the busy time
    and the union of busy intervals (what step breakdowns need), not one Record per task.
    """

    def __init__(
        self,
        graphs: Sequence[RankGraph],
        op_time: Callable[[Op], float],
        comm_time: Callable[[Collective], float],
    ) -> None:
        self.graphs = list(graphs)
        self.op_time = op_time
        self.comm_time = comm_time
        self._members: dict[tuple[int, ...], int] = {}  # simulated members per group

    def run(self, records: bool = True) -> SimResult:
        """Schedule every task: start = max(end of the previous task on its stream, end of
        its dependencies), or for a collective the latest arrival of its simulated members.

        Why not an event queue: no task's duration depends on what else runs at the same
        time (ops are priced alone, collectives by the network model without link sharing),
        so the discrete-event schedule is the fixed point of that recurrence, reached
        by running each stream as far as its inputs are known and parking it on the first
        unknown one (a dependency on another stream, a collective whose members have not
        all arrived). Same times as the SimPy engine (``SimPyEngine``, kept as the
        reference the tests compare with) at a fraction of the cost per task.
        """
        simulated = {g.rank for g in self.graphs}
        # Per stream s: its rank's graph index, its task ids, next position, clock.
        s_graph: list[int] = []
        s_name: list[Stream] = []
        s_tids: list[list[int]] = []
        s_pos: list[int] = []
        s_clock: list[float] = []
        per_graph = []
        for gi, graph in enumerate(self.graphs):
            tasks = graph.tasks
            n = len(tasks)
            by_stream: dict[Stream, list[int]] = {}
            for task in tasks:
                by_stream.setdefault(task.stream, []).append(task.id)
            slots: dict[tuple[Stream, str], int] = {}
            slot_of = [0] * n
            for task in tasks:
                slot_of[task.id] = slots.setdefault((task.stream, task.label), len(slots))
            per_graph.append((
                tasks,
                self._durations(graph),
                [None] * n,  # end time per task, once known
                [None] * n,  # streams parked on a task: None or a list
                slot_of,
                slots,
                [0.0] * len(slots),  # busy seconds per slot
                [[] for _ in slots],  # busy intervals per slot, flat [s0, e0, s1, e1, ...]
                [0.0] * n if records else None,  # start time per task, for records
            ))
            for stream, tids in by_stream.items():
                s_graph.append(gi)
                s_name.append(stream)
                s_tids.append(tids)
                s_pos.append(0)
                s_clock.append(0.0)
        rendezvous: dict[tuple, list] = {}
        ready = list(range(len(s_tids)))
        ready.reverse()  # pop() takes the first stream first
        pop, push = ready.pop, ready.append
        members = self._members
        comm_time = self.comm_time
        while ready:
            s = pop()
            gi = s_graph[s]
            (tasks, durations, end, parked, slot_of, _, busy, ivs, begin) = per_graph[gi]
            tids = s_tids[s]
            n = len(tids)
            i = s_pos[s]
            clock = s_clock[s]
            while i < n:
                tid = tids[i]
                task = tasks[tid]
                start = clock
                blocked = False
                for d in task.deps:
                    e = end[d]
                    if e is None:
                        w = parked[d]
                        if w is None:
                            parked[d] = [s]
                        else:
                            w.append(s)
                        blocked = True
                        break
                    if e > start:
                        start = e
                if blocked:
                    break
                dur = durations[tid]
                if dur is not None:
                    stop = start + dur
                    end[tid] = stop
                    slot = slot_of[tid]
                    busy[slot] += stop - start
                    # merge_interval, inlined: this is the engine's hot loop.
                    if stop > start:
                        iv = ivs[slot]
                        if iv and start <= iv[-1]:
                            if stop > iv[-1]:
                                iv[-1] = stop
                        else:
                            iv.append(start)
                            iv.append(stop)
                    if begin is not None:
                        begin[tid] = start
                    w = parked[tid]
                    if w is not None:
                        parked[tid] = None
                        ready.extend(w)
                    clock = stop
                    i += 1
                    continue
                # A collective: a rendezvous of its simulated members.
                work = task.work
                key = (work.name, work.tag, work.group)
                state = rendezvous.get(key)
                if state is None:
                    expected = members.get(work.group)
                    if expected is None:
                        expected = members[work.group] = (
                            sum(1 for r in work.group if r in simulated) or 1)
                    state = rendezvous[key] = [[], expected, 0.0]
                arrived = state[0]
                arrived.append((s, tid))
                if start > state[2]:
                    state[2] = start
                if len(arrived) < state[1]:
                    break  # parked here; the last member to arrive moves it on
                t0 = state[2]
                t1 = t0 + comm_time(work)
                for ms, mtid in arrived:
                    mg = per_graph[s_graph[ms]]
                    mg[2][mtid] = t1
                    slot = mg[4][mtid]
                    mg[6][slot] += t1 - t0
                    merge_interval(mg[7][slot], t0, t1)
                    if mg[8] is not None:
                        mg[8][mtid] = t0
                    w = mg[3][mtid]
                    if w is not None:
                        mg[3][mtid] = None
                        ready.extend(w)
                    if ms != s:
                        s_pos[ms] += 1
                        s_clock[ms] = t1
                        push(ms)
                del rendezvous[key]  # done: a later collective with this key meets anew
                clock = t1
                i += 1
            s_pos[s] = i
            s_clock[s] = clock
        unfinished = list(rendezvous)
        if unfinished:
            raise RuntimeError(f"deadlock: collectives never completed: {unfinished[:3]}")
        if any(s_pos[s] < len(s_tids[s]) for s in range(len(s_tids))):
            raise RuntimeError("deadlock: a stream waits for a task that never runs")
        makespan = 0.0
        busy_s: dict[tuple[int, str], float] = {}
        by_label: dict[tuple[int, str, str], float] = {}
        intervals: dict[tuple[int, str, str], list[tuple[float, float]]] = {}
        for graph, pg in zip(self.graphs, per_graph, strict=True):
            for e in pg[2]:
                if e is not None and e > makespan:
                    makespan = e
            for (stream, label), slot in pg[5].items():
                busy_s[(graph.rank, stream)] = busy_s.get((graph.rank, stream), 0.0) + pg[6][slot]
                by_label[(graph.rank, stream, label)] = pg[6][slot]
                iv = pg[7][slot]
                intervals[(graph.rank, stream, label)] = list(zip(iv[::2], iv[1::2], strict=True))
        keep: list[Record] = []
        if records:  # built once at the end, in (rank, task) order
            for graph, pg in zip(self.graphs, per_graph, strict=True):
                rank, begin, end = graph.rank, pg[8], pg[2]
                keep.extend([Record(rank, t.stream, t.id, t.work.name, _kind_of(t.work),
                                    t.label, begin[t.id], end[t.id]) for t in graph.tasks])
        return SimResult(makespan, keep, sorted(simulated), busy_s, by_label, intervals)

    def _durations(self, graph: RankGraph) -> list[float | None]:
        out: list[float | None] = []
        for task in graph.tasks:
            work = task.work
            if isinstance(work, Op):
                out.append(self.op_time(work))
            elif isinstance(work, Delay):
                out.append(work.seconds)
            else:
                out.append(None)  # collectives are priced at their rendezvous
        return out


class SimPyEngine(Engine):
    """The reference engine: one SimPy process per (rank, stream), one event per wait.

    Kept to check ``Engine`` against (tests compare the two on random multi-rank graphs)
    and as the base for any future model in which durations depend on concurrency
    (shared links), where the event order matters.
    """

    def run(self, records: bool = True) -> SimResult:
        env = simpy.Environment()
        simulated = {g.rank for g in self.graphs}
        recs: list[Record] = []
        rendezvous: dict[tuple, list] = {}
        for graph in self.graphs:
            finished: list[float | None] = [None] * len(graph.tasks)
            waiters: dict[int, simpy.Event] = {}
            durations = self._durations(graph)
            meta = [(t.work.name, _kind_of(t.work), t.label) for t in graph.tasks]
            watched = self._watched(graph)
            by_stream: dict[Stream, list[int]] = {}
            for task in graph.tasks:
                by_stream.setdefault(task.stream, []).append(task.id)
            for stream, tids in by_stream.items():
                env.process(self._stream(env, graph, stream, tids, durations, meta, watched,
                                         finished, waiters, simulated, rendezvous, recs))
        env.run()
        unfinished = [key for key, state in rendezvous.items() if not state[1].triggered]
        if unfinished:
            raise RuntimeError(f"deadlock: collectives never completed: {unfinished[:3]}")
        makespan = max((r.end for r in recs), default=0.0)
        busy: dict[tuple[int, str], float] = {}
        by_label: dict[tuple[int, str, str], float] = {}
        spans: dict[tuple[int, str, str], list[tuple[float, float]]] = {}
        for r in recs:
            busy[(r.rank, r.stream)] = busy.get((r.rank, r.stream), 0.0) + r.end - r.start
            key = (r.rank, r.stream, r.label)
            by_label[key] = by_label.get(key, 0.0) + r.end - r.start
            spans.setdefault(key, []).append((r.start, r.end))
        intervals = {k: union_intervals(v) for k, v in spans.items()}
        return SimResult(makespan, recs if records else [], sorted(simulated), busy, by_label,
                         intervals)

    def _stream(self, env, graph, stream, tids, durations, meta, watched, finished, waiters,
                simulated, rendezvous, records):
        """Run one stream's tasks in order.

        Consecutive ops whose dependencies are already met and whose completion no
        other stream waits for are advanced with a single timeout (event coalescing):
        their start/end times are the same as if each had its own event, but the
        event loop does one step instead of many.
        """
        tasks = graph.tasks
        rank = graph.rank
        append = records.append
        i, n = 0, len(tids)
        while i < n:
            tid = tids[i]
            task = tasks[tid]
            for dep in task.deps:
                if finished[dep] is None:
                    ev = waiters.get(dep)
                    if ev is None:
                        ev = waiters[dep] = env.event()
                    yield ev
            work = task.work
            if isinstance(work, Collective):
                start = yield from self._collective(env, work, simulated, rendezvous)
                self._finish(rank, stream, task, meta[tid], start, env.now, finished, waiters,
                             records)
                i += 1
                continue
            t = env.now
            run_end = i
            while True:
                tid = tids[run_end]
                end = t + durations[tid]
                append(Record(rank, stream, tid, *meta[tid], t, end))
                t = end
                run_end += 1
                if watched[tid] or run_end >= n:
                    break  # another stream must see this task finish at its real time
                finished[tid] = end  # only this stream reads it
                nxt = tasks[tids[run_end]]
                if isinstance(nxt.work, Collective) or any(
                    tasks[d].stream != stream and (finished[d] is None or finished[d] > env.now)
                    for d in nxt.deps
                ):
                    break
            if t > env.now:
                yield env.timeout(t - env.now)
            last = tids[run_end - 1]
            finished[last] = t
            ev = waiters.pop(last, None)
            if ev is not None:
                ev.succeed()
            i = run_end

    @staticmethod
    def _watched(graph: RankGraph) -> list[bool]:
        """Tasks that a task on another stream depends on."""
        watched = [False] * len(graph.tasks)
        tasks = graph.tasks
        for task in tasks:
            for dep in task.deps:
                if tasks[dep].stream != task.stream:
                    watched[dep] = True
        return watched

    @staticmethod
    def _finish(rank, stream, task, task_meta, start, end, finished, waiters, records) -> None:
        finished[task.id] = end
        ev = waiters.pop(task.id, None)
        if ev is not None:
            ev.succeed()
        records.append(Record(rank, stream, task.id, *task_meta, start, end))

    def _collective(self, env, work: Collective, simulated, rendezvous):
        key = (work.name, work.tag, work.group)
        state = rendezvous.get(key)
        if state is None:
            expected = self._members.get(work.group)
            if expected is None:
                expected = self._members[work.group] = sum(1 for r in work.group if r in simulated) or 1
            state = rendezvous[key] = [0, env.event(), expected, 0.0]
        state[0] += 1
        if state[0] < state[2]:
            yield state[1]
            return state[3]
        state[3] = env.now
        yield env.timeout(self.comm_time(work))
        state[1].succeed()
        return state[3]
