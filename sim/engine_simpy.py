"""The reference engine: the model of ``sim.engine`` as SimPy processes, one per (rank,
stream), one event per wait. The tests compare ``sim.engine.Engine`` with it on random
multi-rank graphs; it is also where a model whose durations depend on concurrency
(shared links) would start, since there the event order matters.

It carries no SM-contention term (``Pricing.comm_share``, sim.engine_contended): it is
the reference for the uncontended schedule, and its tests price without a system
(``comm_share`` 1). The contended schedule is checked by hand in
tests/test_sm_contention.py.
"""

from __future__ import annotations

import simpy
from xpusim.sim.engine import Engine, Record, SimResult, _kind_of, union_intervals
from xpusim.sim.ir import Collective, RankGraph, Stream


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
        flat = {k: [t for span in union_intervals(v) for t in span] for k, v in spans.items()}
        return SimResult(makespan, recs if records else [], sorted(simulated), busy, by_label,
                         flat)

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
            run_end, t = self._coalesce(env, graph, stream, tids, i, durations, meta, watched,
                                        finished, append)
            if t > env.now:
                yield env.timeout(t - env.now)
            last = tids[run_end - 1]
            finished[last] = t
            ev = waiters.pop(last, None)
            if ev is not None:
                ev.succeed()
            i = run_end

    @staticmethod
    def _coalesce(env, graph, stream, tids, i, durations, meta, watched, finished, append
                  ) -> tuple[int, float]:
        """Record the run of ops from position ``i`` that can advance with one timeout;
        returns the position after the run and its end time."""
        tasks, rank = graph.tasks, graph.rank
        n = len(tids)
        t = env.now
        run_end = i
        while True:
            tid = tids[run_end]
            end = t + durations[tid]
            name, kind, label = meta[tid]
            append(Record(rank, stream, tid, name, kind, label, t, end))
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
        return run_end, t

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
        name, kind, label = task_meta
        records.append(Record(rank, stream, task.id, name, kind, label, start, end))

    def _collective(self, env, work: Collective, simulated, rendezvous):
        key = (work.name, work.tag, work.group)
        state = rendezvous.get(key)
        if state is None:
            expected = self._members.get(work.group)
            if expected is None:
                expected = self._members[work.group] = (
                    sum(1 for r in work.group if r in simulated) or 1)
            state = rendezvous[key] = [0, env.event(), expected, 0.0]
        state[0] += 1
        if state[0] < state[2]:
            yield state[1]
            return state[3]
        state[3] = env.now
        yield env.timeout(self.comm_time(work))
        state[1].succeed()
        return state[3]
