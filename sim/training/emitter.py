"""Emitting a rank's tasks: the per-unit part of the training lowering
(``sim.training.lowering`` drives it through the pipeline schedule).

A unit's pieces (``sim.training.units``) are emitted block by block (a block ends at an
EP collective when two units are interleaved). A collective whose group holds no other
simulated rank needs no rendezvous (the engine gives it a fixed duration); the one
object of such a collective in a unit's pieces is shared by every unit that runs them.

With ``chains`` (no per-task records asked for) a run of a unit's pieces that go to the
compute stream one after the other — segments and solo collectives, nothing else
waiting on them part-way — is one ``Chain`` task, shared by every unit that runs it:
the engine gives each part the same start, end and breakdown as a task of its own, at a
fraction of the cost (the bulk of a step's tasks are such runs).

What an emitter derives from its unit templates (solo collectives, each block's
emission program) is kept in an ``EmitCache``, which the lowerings of one rank at two
micro-batch counts share (``sim.training.simulate.StepCache``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from xpusim.sim.ir import (
    Chain,
    Collective,
    CollectiveKind,
    RankGraph,
    Segment,
    Stream,
    Task,
    Work,
)
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.units import Piece

if TYPE_CHECKING:
    from xpusim.sim.training.dp_buckets import ChunkBuckets

# A block's emission program (``Emitter.program``): per step the piece (the first of a
# chain), its index in the unit, and the work to emit when it is fixed in advance (a
# chain, or a solo collective) with its label; (piece, index, None, "") otherwise.
Step = tuple[Piece, int, Work | None, str]


@dataclass
class EmitCache:
    """One rank's emitter caches, valid for one plan, rank groups and ``chains`` setting:
    per group whether it is solo; per comm piece its solo collective; per (unit template,
    paired) its blocks' programs; per template the single task of an unpaired unit; per
    chunk its DP bucket parts (their pieces live here, so the ids keyed above stay valid)."""

    solo: dict[tuple[int, ...], bool] = field(default_factory=dict)
    solo_piece: dict[int, tuple[Collective, str] | None] = field(default_factory=dict)
    programs: dict[tuple[int, bool], list[list[Step]]] = field(default_factory=dict)
    single: dict[int, tuple[Work, str] | None] = field(default_factory=dict)
    replays: dict[tuple[int, ...], Replay | None] = field(default_factory=dict)
    # id(chunk) -> its DP bucket parts (``sim.training.dp_buckets``), None: one bucket.
    buckets: dict[int, ChunkBuckets | None] = field(default_factory=dict)


@dataclass
class Replay:
    """The tasks one unit or two interleaved units emit (``Emitter.run_blocks``), recorded
    once per unit template or pair of them: each task's work, stream, label and dependencies, a
    dependency >= 0 counted from the pair's first task, ~k the k-th of the units' first
    dependencies (both units' lists, joined); ``lasts`` each unit's last task alike. Each
    task's last field: its one dependency when it has exactly one and that is inside the
    pair (~80 % of replayed tasks), else None (``run_pair``'s fast path)."""

    tasks: list[tuple[Work, Stream, tuple[int, ...], str, int | None]]
    lasts: list[int]
    folded: int


@dataclass
class Emitter:
    """Adds tasks to one rank's graph (see the module docstring)."""

    graph: RankGraph
    plan: ParallelPlan
    groups: dict[str, tuple[int, ...]]
    simulated: frozenset[int]
    chains: bool = False
    cache: EmitCache = field(default_factory=EmitCache)
    folded: int = 0  # pieces folded into chains beyond one task each

    def add(self, work: Work, stream: Stream, deps: list[int], label: str) -> int:
        """Append a task: ``RankGraph.add`` without its checks (the emitter's dependencies
        are tasks it added before, by construction); this runs per task."""
        tasks = self.graph.tasks
        tid = len(tasks)
        tasks.append(Task(tid, work, stream, tuple(deps), label))
        if type(work) is Chain:
            self.folded += len(work.parts) - 1
        return tid

    def solo(self, group: tuple[int, ...]) -> bool:
        known = self.cache.solo.get(group)
        if known is None:
            known = self.cache.solo[group] = sum(1 for r in group if r in self.simulated) <= 1
        return known

    def collective(
        self,
        name: str,
        kind: CollectiveKind,
        group: tuple[int, ...],
        nbytes: float,
        stream: Stream,
        deps: Sequence[int | None],
        label: str,
        tag: int,
        algorithm: str = "auto",
    ) -> int:
        coll = Collective(name, kind, group, nbytes, algorithm, tag)
        return self.add(coll, stream, [d for d in deps if d is not None], label)

    def comm_piece(self, piece: Piece, stream: Stream, deps: list[int], tag: int, idx: int) -> int:
        c = piece.comm
        assert c is not None
        solo = self.solo_part(piece)
        if solo is not None:
            return self.add(solo[0], stream, deps, solo[1])
        label = c.group.split("_")[0] if c.group.startswith(("ep", "dp")) else c.group
        name = f"{piece.phase}.{piece.slot}.{c.name}.{idx}"
        return self.collective(name, c.kind, self.groups[c.group], c.nbytes, stream, deps,
                               label, tag, c.algorithm)

    def solo_part(self, piece: Piece) -> tuple[Collective, str] | None:
        """(collective, label) of a comm piece whose group holds no other simulated rank,
        else None. One object per piece: a solo collective of a unit's pieces is the same
        work every time the unit runs (tens of thousands of times per step)."""
        known = self.cache.solo_piece
        if id(piece) in known:
            return known[id(piece)]
        c = piece.comm
        assert c is not None
        group = self.groups[c.group]
        solo = None
        if self.solo(group):
            label = c.group.split("_")[0] if c.group.startswith(("ep", "dp")) else c.group
            coll = Collective(f"{piece.phase}.{piece.slot}.{c.name}", c.kind, group, c.nbytes,
                              c.algorithm)
            solo = (coll, label)
        known[id(piece)] = solo
        return solo

    def unit(self, pieces: list[Piece], split_ep: bool) -> list[list[Step]]:
        """Blocks of a unit, as emission programs (``program``): runs of pieces ending at
        an EP collective (when ``split_ep``). Built once per unit template."""
        key = (id(pieces), split_ep)
        programs = self.cache.programs.get(key)
        if programs is None:
            blocks: list[list[tuple[Piece, int]]] = [[]]
            for i, piece in enumerate(pieces):
                blocks[-1].append((piece, i))
                nxt = pieces[i + 1] if i + 1 < len(pieces) else None
                if split_ep and _is_ep(piece) and not (nxt is not None and _is_ep(nxt)):
                    blocks.append([])  # hierarchical: 2 back to back
            programs = [self.program(b, split_ep) for b in blocks if b]
            self.cache.programs[key] = programs
        return programs

    def single(self, pieces: list[Piece]) -> tuple[Work, str] | None:
        """(work, label) when an unpaired unit of these pieces is one compute-stream task
        that waits for nothing but the unit's first dependencies (a chain, or one
        segment or solo collective), else None."""
        key = id(pieces)
        if key not in self.cache.single:
            programs = self.unit(pieces, False)
            found: tuple[Work, str] | None = None
            if len(programs) == 1 and len(programs[0]) == 1:
                piece, _, work, label = programs[0][0]
                if type(work) is Chain:
                    found = (work, label)
                elif not piece.waits:
                    found = self._chainable(piece, False)
            self.cache.single[key] = found
        return self.cache.single[key]

    def program(self, block: list[tuple[Piece, int]], paired: bool) -> list[Step]:
        """The block's pieces in order, runs of chainable ones (``_chainable``) folded
        into one chain each when ``chains``; a solo collective's work fixed in advance."""
        steps: list[Step] = []
        run: list[tuple[Piece, int]] = []
        for piece, idx in block:
            part = self._chainable(piece, paired) if self.chains else None
            if part is not None and not (run and piece.waits):
                run.append((piece, idx))
                continue
            self._fold(run, steps)
            run = [(piece, idx)] if part is not None else []
            if part is None:
                steps.append(self._step(piece, idx))
        self._fold(run, steps)
        return steps

    def _step(self, piece: Piece, idx: int) -> Step:
        solo = self.solo_part(piece) if piece.comm is not None else None
        return (piece, idx, solo[0], solo[1]) if solo is not None else (piece, idx, None, "")

    def _chainable(self, piece: Piece, paired: bool) -> tuple[Segment | Collective, str] | None:
        """(work, label) of a piece that runs on the compute stream with no rendezvous:
        a segment, or a synchronous solo collective; else None."""
        if piece.comm is None:
            return piece.segment, piece.phase  # type: ignore[return-value]
        if piece.waits or piece.async_ or (paired and piece.comm.group.startswith("ep")):
            return None  # on the comm stream
        return self.solo_part(piece)

    def _fold(self, run: list[tuple[Piece, int]], steps: list[Step]) -> None:
        if len(run) == 1:
            steps.append(self._step(*run[0]))
        elif run:
            parts = tuple(self._chainable(p, False) for p, _ in run)
            name = "+".join(p.slot for p, _ in run[:1]) + f"..{len(run)}"
            chain = Chain(name, parts)  # type: ignore[arg-type]
            steps.append((run[0][0], run[0][1], chain, chain.parts[0][1]))

    def run_pair(self, units: list[tuple[list[list[Step]], int, list[int]]]) -> list[int]:
        """``run_blocks`` for one unit or two interleaved units, replayed from a recording
        of the same templates (the steady state runs each tens of thousands of times).
        Units whose tasks depend on their tags (collectives that meet another simulated
        rank) are emitted afresh."""
        key = tuple(x for blocks, _, deps in units for x in (id(blocks), len(deps)))
        if key not in self.cache.replays:
            self.cache.replays[key] = self._record(units)
        replay = self.cache.replays[key]
        if replay is None:
            return self.run_blocks(units)
        first = [d for _, _, deps in units for d in deps]
        tasks = self.graph.tasks
        base = len(tasks)
        for tid, (work, stream, deps, label, one) in enumerate(replay.tasks, base):
            # One dependency inside the pair, or none: the same tuple without a list
            # comprehension (~6.8M replayed tasks over ``validate --published``'s
            # training rows; a comprehension is a call of its own in CPython 3.11).
            if one is not None:
                deps = (base + one,)
            elif deps:
                deps = tuple([base + d if d >= 0 else first[~d] for d in deps])
            tasks.append(Task(tid, work, stream, deps, label))
        self.folded += replay.folded
        return [base + d if d >= 0 else first[~d] for d in replay.lasts]

    def _record(self, units: list[tuple[list[list[Step]], int, list[int]]]) -> Replay | None:
        """Emit the pair on a scratch graph, the first dependencies as ~k; None when a
        piece's collective meets another simulated rank (its name carries the tag)."""
        for blocks, _, _ in units:
            for block in blocks:
                if any(p.comm is not None and w is None for p, _, w, _ in block):
                    return None
        scratch = Emitter(RankGraph(self.graph.rank), self.plan, self.groups, self.simulated,
                          self.chains, self.cache)
        marks, k = [], 0
        for blocks, tag, deps in units:
            marks.append((blocks, tag, [~i for i in range(k, k + len(deps))]))
            k += len(deps)
        lasts = scratch.run_blocks(marks)
        tasks = [(t.work, t.stream, t.deps, t.label, _single(t.deps))
                 for t in scratch.graph.tasks]
        return Replay(tasks, lasts, scratch.folded)

    def _comm(self, piece: Piece, work: Work | None, label: str, stream: Stream,
              deps: list[int], tag: int, idx: int) -> int:
        if work is not None:
            return self.add(work, stream, deps, label)
        return self.comm_piece(piece, stream, deps, tag, idx)

    def run_blocks(self, units: list[tuple[list[list[Step]], int, list[int]]]) -> list[int]:
        """Emit the blocks of one or two units round-robin; return each unit's last task.

        With two units, EP collectives go on the comm stream and only the same
        unit's next block waits for them, so the other unit's block fills the gap.
        Per unit: ``pending`` are the tasks its next piece waits for, ``keyed`` its
        asynchronous collectives by key.
        """
        pending = [list(deps) for _, _, deps in units]
        last: list[int | None] = [None] * len(units)
        last_compute: list[int | None] = [None] * len(units)
        keyed: list[dict[int, int]] = [{} for _ in units]
        paired = len(units) > 1
        longest = max(len(blocks) for blocks, _, _ in units)
        for i in range(longest):
            for u, (blocks, tag, _) in enumerate(units):
                for piece, idx, work, label in blocks[i] if i < len(blocks) else ():
                    if piece.comm is None or type(work) is Chain:
                        deps = pending[u] + [keyed[u][k] for k in piece.waits]
                        if work is None:  # a segment piece
                            work, label = cast(Segment, piece.segment), piece.phase
                        tid = self.add(work, Stream.COMPUTE, deps, label)
                        pending[u] = []
                        last_compute[u] = tid
                    elif piece.async_:
                        lc = last_compute[u]
                        deps = [lc] if lc is not None else list(pending[u])
                        tid = self._comm(piece, work, label, _async_stream(piece), deps, tag,
                                         idx)
                        keyed[u][piece.key] = tid
                    elif paired and piece.comm.group.startswith("ep"):
                        lu = last[u]
                        deps = ([lu] if lu is not None else []) + pending[u]
                        tid = self._comm(piece, work, label, Stream.COMM, deps, tag, idx)
                        pending[u] = [tid]
                    else:
                        tid = self._comm(piece, work, label, Stream.COMPUTE, pending[u], tag,
                                         idx)
                        pending[u] = []
                        last_compute[u] = tid
                    last[u] = tid
        # a unit that ended on an async collective finishes when it does
        return [p[-1] if p else t for p, t in zip(pending, last, strict=True)]  # type: ignore[misc]


def _async_stream(piece: Piece) -> Stream:
    """The stream of an asynchronous collective: ``DP_COMM`` for the data-parallel groups'
    (ZeRO-3 / FSDP parameter gathers and gradient reduce-scatters), ``COMM`` for the rest
    (TP, EP, CP). Megatron's distributed optimizer and Megatron-FSDP issue them on the DP
    process group's NCCL stream (PyTorch ProcessGroupNCCL: one stream per communicator),
    so a TP piece never waits behind a whole-layer parameter gather. TransformerEngine's
    userbuffers also run their TP pieces on their own non-blocking stream
    (``CommOverlapBase``: ``cudaStreamCreateWithPriority(&_stream_comm,
    cudaStreamNonBlocking, ...)``, transformer_engine/common/comm_gemm_overlap/
    comm_gemm_overlap.cpp); that third stream is not modelled: with TP pieces on a stream
    of their own the contended engine waits at nearly every compute task (4x slower on the
    405B rows, docs/training_notes.md), so they stay on ``COMM`` behind EP/PP traffic. Concurrent
    collectives on the two streams each take their full-bandwidth price: the engine does
    not model link sharing (docs/training_notes.md)."""
    comm = piece.comm
    return Stream.DP_COMM if comm is not None and comm.group.startswith("dp") else Stream.COMM


def _is_ep(piece: Piece) -> bool:
    return piece.comm is not None and piece.comm.group.startswith("ep")


def _single(deps: tuple[int, ...]) -> int | None:
    """A recorded task's one dependency inside its pair (>= 0), or None (``Replay``)."""
    return deps[0] if len(deps) == 1 and deps[0] >= 0 else None
