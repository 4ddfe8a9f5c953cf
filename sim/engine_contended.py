"""The contended schedule (SM contention, ``sim.engine_share``): ``Engine.run`` calls
``contended_first``, which schedules the step with compute-stream segments stretched
over their rank's collectives (processor sharing, ``contended``) and reports it as the
plain schedule where compute ran beside no collective (``overlapped``).

A compute task's end is final once no collective of its rank can still start before
it: it waits until its rank's comm streams have advanced past it, or their tasks up to
the next collective that contends (not a PP send or receive, ``comm_slot``) wait for
this compute task or a later one (``_blocking_comm``, ``comm_reach``). A comm stream that is
ready to advance goes first and the compute stream looks again right after it
(``_wait``); otherwise the compute stream waits (``run.waiting``). When every stream is
blocked, the waiting task with the least end over the collectives known so far is final
(``_release``): any collective not yet started starts no earlier than some blocked
task's end, and each blocked task ends no earlier than that least end (more collectives
only slow compute). One pass; deterministic (ties by stream). The order in which
streams advance changes no float: an end is fixed only when every collective that
could stretch it is known, and each (stream, label) slot sums its own stream's tasks in
stream order (tests/test_contended_order.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xpusim.sim.cost.pricing import Pricing
from xpusim.sim.engine_share import (
    Contention,
    add_busy,
    chain_end,
    comm_slot,
    finish,
    flat_union,
    intersects,
    known_comm,
    run_chain,
    stretch,
)
from xpusim.sim.ir import Chain, Op, Segment, Stream, Task

if TYPE_CHECKING:
    from xpusim.sim.engine import Engine, _Parts, _Run

_INF = float("inf")


def special_contended(engine: Engine, run: _Run, s: int, tid: int, start: float
                      ) -> float | None:
    """``Engine._special`` in a contended run: a compute-stream segment (plain or a chain)
    ends where ``stretch`` puts it over its rank's collectives once that end is
    final (``_blocking_comm``), else the stream waits (``run.waiting``); collectives as
    before."""
    g = run.s_graph[s]
    tasks, _, begin, end, parked, slot_of, busy, ivs, chains = run.graphs[g]
    c = run.contention[g]
    parts = chains.get(tid)
    if parts is not None and tid not in c.chain_rates:
        stop = run_chain(parts, start, busy, ivs)
    elif parts is None and tid not in c.plain:
        return engine._arrive(run, s, tid, tasks[tid].work, start)  # type: ignore[arg-type]
    else:
        final = _final_end(run, g, s, tid, start)
        if final is None:
            return None  # waits (``_wait``)
        stop = final
        if parts is not None:
            run_chain_contended(parts, c.chain_rates[tid], start, busy, ivs, c,
                                known_comm(ivs, c.comm_slots, start))
        else:
            c.slowed_s += (stop - start) - c.plain[tid][0]
            add_busy(busy, ivs[slot_of[tid]], slot_of[tid], start, stop)
    finish(run.ready, begin, end, parked, tid, start, stop)
    return stop


def _final_end(run: _Run, g: int, s: int, tid: int, start: float) -> float | None:
    """Stream ``s``'s contended task ``tid`` (graph ``g``, inputs met at ``start``): its
    end once final, or None when a comm stream of its rank may still start a collective
    before that end (``_blocking_comm``; the stream then waits, ``_wait``). A ready comm
    stream that may do so goes first before the end is computed at all; the task that
    ``_release`` forced is final at its end over the collectives known now."""
    if run.force == s:
        run.force = -1
        stop = _tentative_end(run, g, tid, start)
    else:
        look = _first_look(run, g, tid, start)
        if look >= 0:  # a ready comm stream goes first: no end to compute yet
            _wait(run, s, look, tid, start, None)
            return None
        stop = _tentative_end(run, g, tid, start)
        cs = _blocking_comm(run, g, tid, stop) if look == -1 else -1
        if cs >= 0:
            _wait(run, s, cs, tid, start, stop)
            return None
    kept = run.contention[g].tentative
    if kept:
        kept.pop(tid, None)  # final: the task runs now
    return stop


def _tentative(c: Contention, chains: dict[int, _Parts], tid: int, start: float,
               comm: list[float]) -> float:
    """A contended task's end over the collectives known so far (``comm``): a lower
    bound of its end, exact when no other collective starts before it."""
    plain = c.plain.get(tid)
    if plain is not None:  # ``stretch`` over no interval is ``start + work``
        return stretch(comm, start, plain[0], plain[1]) if comm else start + plain[0]
    return chain_end(chains[tid], c.chain_rates[tid], start, comm)


def _tentative_end(run: _Run, g: int, tid: int, start: float,
                   state: tuple[int, ...] | None = None) -> float:
    """``_tentative`` of graph ``g``'s task ``tid`` over the collectives known now, kept
    per waiting task (``Contention.tentative``) with its start and ``_graph_state``: a
    compute task may wait through many releases (the 1T GPT step with sequence
    parallelism: ~2.3M evaluations of ~64 waiting tasks), mostly with none of its rank's
    collectives changed since it was last stretched. The end is a pure function of the
    task, its start and the rank's collective intervals, which change only with
    ``_graph_state``, so a hit is the float a new evaluation gives. ``state``:
    ``_graph_state(run, g)`` when the caller has it (``_release``); the end is kept
    only then and by ``_wait`` (the state costs a tuple per call, and a task that is
    final at its first look, most of them, never needs it)."""
    c = run.contention[g]
    kept = c.tentative.get(tid)
    if kept is not None:
        if state is None:
            state = _graph_state(run, g)
        if kept[0] == start and kept[1] == state:
            return kept[2]
    ivs = run.graphs[g][7]
    stop = _tentative(c, run.graphs[g][8], tid, start, known_comm(ivs, c.comm_slots, start))
    if state is not None:
        c.tentative[tid] = (start, state, stop)
    return stop


def _graph_state(run: _Run, g: int) -> tuple[int, ...]:
    """The positions of graph ``g``'s comm streams, which is all a waiting compute task
    of ``g`` reads that can change while it waits: ``_blocking_comm`` reads a comm
    stream's position and clock (which moves only with it) and the ends of compute
    tasks at or after the waiting one (which cannot end while the compute stream
    waits); ``known_comm`` reads the collective slots' intervals, and every write to
    them ends a task of a comm stream, which moves that stream's position (in its pass
    of ``Engine._schedule``, or in ``Engine._arrive`` for the other members), and
    positions only grow. Equal states therefore mean equal inputs."""
    s_pos = run.s_pos
    return tuple([s_pos[cs] for cs in run.contention[g].comm_streams])


def _first_look(run: _Run, g: int, tid: int, start: float) -> int:
    """``_blocking_comm`` at ``start`` among the ready streams, in one pass that also
    tells whether any comm stream can block ``tid`` at all: the first ready stream that
    blocks (>= 0); else -1, or -2 when no stream's next contending collective is free of
    compute task ``tid`` (``comm_reach``), so that none can block it whatever its end
    (``_blocking_comm`` at its end would give -1: its positions do not move meanwhile)."""
    s_pos, s_clock = run.s_pos, run.s_clock
    found = -2
    for cs, reach in run.contention[g].streams:
        if reach[s_pos[cs]] < tid:
            # The ready list last: a scan, needed only for a stream that blocks.
            if s_clock[cs] < start and cs in run.ready:
                return cs
            found = -1
    return found


def _blocking_comm(run: _Run, g: int, tid: int, stop: float) -> int:
    """A comm stream (``COMM``, ``DP_COMM``) of graph ``g`` on which a collective that
    contends (``comm_slot``) may still start before ``stop``, or -1. A stream is skipped
    when its clock is at or past ``stop`` (its next task starts after ``stop``), and
    when it has no contending task left, or one of its tasks up to and including the
    next contending one waits for compute task ``tid`` or a later one: that collective
    starts after it, so not before ``tid`` ends. Non-contending tasks (PP sends and
    receives) are looked past: in the 1T GPT step (TP8 PP64) the next task of a stage's
    comm stream is a PP receive that waits for its neighbour, behind which no contending
    collective can start before the compute task ends; counting it as one made ~64
    compute tasks wait through each of ~17,600 releases. ``comm_reach`` gives, per
    position, the latest compute task waited for up to the next contending task, so a
    look is one comparison: compute tasks run in id order and the compute stream is at
    ``tid``, so a compute dependency ``>= tid`` has not ended (``_first_look`` does the
    same at the task's start among the ready streams)."""
    s_pos, s_clock = run.s_pos, run.s_clock
    for cs, reach in run.contention[g].streams:
        if s_clock[cs] < stop and reach[s_pos[cs]] < tid:
            return cs
    return -1


def comm_reach(tasks: list[Task], tids: list[int], slot_of: list[int],
               comm_slots: list[int], chains: dict[int, _Parts]) -> list[float]:
    """Per position of a comm stream (``tids``) and one past its end: the largest
    compute task id that its tasks from there up to and including the next contending
    one (``comm_slot``; a chain counts as one, whatever its parts) depend on, -1 when
    none; infinite when no contending task is left (``_blocking_comm``: the stream
    blocks task ``tid`` when this is below it)."""
    compute = Stream.COMPUTE
    reach: list[float] = [_INF] * (len(tids) + 1)
    after = _INF
    for k in range(len(tids) - 1, -1, -1):
        task = tasks[tids[k]]
        own = -1  # max(compute deps, default=-1): a loop, not a generator (per task)
        for d in task.deps:
            if d > own and tasks[d].stream == compute:
                own = d
        contends = slot_of[task.id] in comm_slots or task.id in chains
        after = own if contends else max(own, after)
        reach[k] = after
    return reach


def _wait(run: _Run, s: int, cs: int, tid: int, start: float, stop: float | None) -> None:
    """Compute stream ``s`` cannot end task ``tid`` yet: comm stream ``cs`` may start a
    collective before its end. When ``cs`` is ready to advance, it goes first and ``s``
    looks again right after it (``s`` parks for one turn); else ``s`` waits for
    ``_release``, its tentative end ``stop`` (when computed) kept with its graph's state.
    Only the order in which streams are advanced changes: a task's end is still fixed
    only once no collective of its rank can start before it, so it is the same end in
    any order, and each (stream, label) slot sums its own stream's tasks in stream
    order."""
    ready = run.ready
    if cs in ready:
        ready.remove(cs)
        ready.append(s)
        ready.append(cs)
    else:
        g = run.s_graph[s]
        state = run.wait_state[s] = _graph_state(run, g)
        if stop is not None:
            run.contention[g].tentative[tid] = (start, state, stop)
        run.waiting[s] = (tid, start)


def contended_first(engine: Engine) -> _Run:
    """``Engine.run`` under SM contention, without the plain schedule first: the contended
    schedule, kept when compute overlapped a collective in it (``overlapped``); else it
    is the plain schedule and is returned as such (no slowed seconds).

    Why no plain pass is needed: ``run`` used to schedule plainly and reschedule
    contended only when the plain schedule overlapped. If the plain schedule has no
    overlap, the contended pass fixes each task in turn at its plain start and end (by
    induction: a compute task's end is ``stretch`` over collectives of the plain
    schedule, none of which overlaps it, and ``stretch`` beside no interval is ``start +
    work``, the plain float; busy sums and intervals are added by the same operations in
    stream order), so it is the plain schedule and has no overlap either. Hence the
    contended schedule overlaps exactly when the plain one does, and in both cases the
    result is the one the two passes gave (``tests/test_contended_first.py``: random
    graphs, ``==``). A deadlock is reported by the plain pass, as before (its message
    names its rendezvous)."""
    try:
        run = contended(engine)
    except RuntimeError:
        plain = engine._setup()
        engine._schedule(plain)
        engine._check_finished(plain)
        raise
    if not overlapped(engine, run):
        run.contention = []  # the plain schedule: no slowed seconds reported
    return run


def contended(engine: Engine) -> _Run:
    """The contended schedule: ``Engine._schedule`` until every stream is blocked,
    then ``_release`` the waiting compute tasks, until none waits."""
    run = engine._setup(contend=True)
    while True:
        engine._schedule(run)
        if not run.waiting:
            break
        _release(run)
    engine._check_finished(run)
    return run


def _release(run: _Run) -> None:
    """Every stream is blocked: wake the waiting compute tasks, and mark as final the
    one whose end over the collectives known now is least (ties by stream). Any
    collective not yet started starts no earlier than some blocked task's end, and
    each blocked task's end is at least that least end (more collectives only slow
    compute), so nothing unknown can overlap that task."""
    # A waiting task whose graph is as it was when the task began to wait would only
    # wait again (the same comm stream may start a collective before its end): it stays
    # waiting, and only the others and the forced one look again (the 1T GPT step with
    # sequence parallelism: ~64 tasks wait at each of ~21,600 releases, a few of whose
    # graphs moved). Only the order in which streams look again changes.
    best = (_INF, -1)
    state = run.wait_state
    woken: list[int] = []
    for s, (tid, start) in sorted(run.waiting.items()):
        g = run.s_graph[s]
        now = _graph_state(run, g)
        e = _tentative_end(run, g, tid, start, now)
        if e < best[0]:
            best = (e, s)
        if state.get(s) != now:
            woken.append(s)
    run.force = best[1]
    if run.force >= 0 and run.force not in woken:
        woken.append(run.force)
    for s in woken:
        del run.waiting[s]
        state.pop(s, None)
    run.ready.extend(sorted(woken, reverse=True))


def overlapped(engine: Engine, run: _Run) -> bool:
    """Whether any graph's compute stream was busy while its collectives ran (a
    bisection per collective interval and compute slot: the slots' lists are long)."""
    for gi in range(len(engine.graphs)):
        iv = _comm_spans(run, gi)
        if not iv:
            continue
        ivs = run.graphs[gi][7]
        for (stream, _), slot in run.slots[gi].items():
            if stream == Stream.COMPUTE and intersects(ivs[slot], iv):
                return True
    return False


def _comm_spans(run: _Run, gi: int) -> list[float]:
    """Busy intervals of graph ``gi``'s comm-stream collectives (``comm_slot``)."""
    ivs = run.graphs[gi][7]
    return flat_union([ivs[slot] for key, slot in run.slots[gi].items()
                       if comm_slot(key)])


def contended_entry(pricing: Pricing, task: Task, duration: float | None
                    ) -> tuple[float, float] | list[float] | None:
    """What a contended run keeps of a compute-stream task (``Engine._price_graph``, once
    per distinct work object): a segment's or op's (work seconds, rate) when its rate is
    below 1, a chain's part rates when any is; None otherwise (the task runs at full
    rate in the hot loop)."""
    if task.stream != Stream.COMPUTE:
        return None
    work = task.work
    rate_of = pricing.contended_rate
    if type(work) is Chain:
        rates = [rate_of(w) if isinstance(w, Segment) else 1.0 for w, _ in work.parts]
        return rates if min(rates, default=1.0) < 1.0 else None
    if isinstance(work, Segment | Op):
        rate = rate_of(work)
        if duration is not None and rate < 1.0:
            return (duration, rate)
    return None


def run_chain_contended(parts: _Parts, rates: list[float], start: float,
                         busy: list[float], ivs: list[list[float]], c: Contention,
                         comm: list[float]) -> float:
    """``_run_chain`` with each part stretched over the rank's collectives ``comm``
    (none known after ``start``: ``stretch`` gives ``t + d`` for each part, so the
    parts run as ``run_chain`` runs them, the slowed seconds added as the stretched
    path adds them; most chains of a step that overlaps only at its ends)."""
    t = start
    if not comm:  # ``add_busy`` inlined: this runs per part of most chains
        slowed = c.slowed_s
        for d, slot in parts:
            stop = t + d
            slowed += (stop - t) - d
            busy[slot] += stop - t
            iv = ivs[slot]
            if iv and t <= iv[-1]:
                iv[-1] = stop
            elif stop > t:
                iv.append(t)
                iv.append(stop)
            t = stop
        c.slowed_s = slowed
        return t
    for (d, slot), rate in zip(parts, rates, strict=True):
        stop = stretch(comm, t, d, rate)
        c.slowed_s += (stop - t) - d
        add_busy(busy, ivs[slot], slot, t, stop)
        t = stop
    return t
