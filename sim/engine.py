"""The discrete-event engine (SimPy): ranks x streams, tasks scheduled by dependencies.

Each (rank, stream) is one SimPy process that runs its tasks in order, like a
CUDA/ACL stream. A task starts when the previous task of its stream and all its
``deps`` have finished. Ops take the cost model's time; a ``Collective`` is a
rendezvous: it starts when every *simulated* member of its group has reached it
(members outside the simulation are assumed symmetric — scale by symmetry) and
takes the network's time. Overlap of compute and communication is therefore a
result of the schedule, not a parameter. Every task is recorded for traces and
breakdowns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import simpy

from sim.ir import Collective, Delay, Op, RankGraph, Stream, Work


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
    if isinstance(work, Op):
        return str(work.kind)
    if isinstance(work, Collective):
        return str(work.kind)
    return work.kind


class Engine:
    """Runs rank graphs. ``op_time`` prices an Op, ``comm_time`` a Collective (seconds)."""

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

    def run(self) -> SimResult:
        env = simpy.Environment()
        simulated = {g.rank for g in self.graphs}
        records: list[Record] = []
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
                                         finished, waiters, simulated, rendezvous, records))
        env.run()
        unfinished = [key for key, state in rendezvous.items() if not state[1].triggered]
        if unfinished:
            raise RuntimeError(f"deadlock: collectives never completed: {unfinished[:3]}")
        makespan = max((r.end for r in records), default=0.0)
        busy: dict[tuple[int, str], float] = {}
        for r in records:
            busy[(r.rank, r.stream)] = busy.get((r.rank, r.stream), 0.0) + r.end - r.start
        return SimResult(makespan, records, sorted(simulated), busy)

    def _durations(self, graph: RankGraph) -> list[float]:
        out = []
        for task in graph.tasks:
            work = task.work
            if isinstance(work, Op):
                out.append(self.op_time(work))
            elif isinstance(work, Delay):
                out.append(work.seconds)
            else:
                out.append(-1.0)  # collectives are priced at their rendezvous
        return out

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
