"""Lowering a training step to per-rank IR graphs, unpriced.

For each simulated rank (one representative per pipeline stage, or every rank in
full-rank mode) the lowering:

1. builds the forward items of each model chunk it holds (``sim.training.chunks``),
2. turns each chunk's forward and backward into *pieces* (``sim.training.units``): runs
   of consecutive ops frozen into ``ir.Segment`` s (the engine then schedules tens of
   thousands of tasks instead of millions) and collectives on concrete global-rank
   groups,
3. emits the units of the pipeline schedule in order: receive activations
   (gradients), the unit's segments, send; data-parallel gradient reduction after
   the last backward of each chunk; the optimizer step; the parameter all-gather.

Nothing here has a duration: the pricing pass (``sim.cost.pricing``) prices segments
and ops by the device's cost model and collectives by the system's network, and the
engine schedules the priced graph, so a what-if that changes hardware prices the same
graphs again (``sim.training.simulate.price_step``). What the lowering does read from
the hardware: the number of devices (the plan's data-parallel degree), the devices per
node (whether the EP group spans nodes, which selects hierarchical EP), and, through
the plan, the attention implementation (the device's default when unset), which
decides whether the S x S scores are kept for the backward. A capacity-driven choice
(a recompute policy picked to fit memory) is made before lowering, by the caller.

Streams: compute-stream work runs in order; a collective the next op needs at
once (TP, CP, and EP without overlap) sits on the compute stream, so its time is
exposed. Pipeline receives go on the comm stream, sends on the copy stream (each
direction between two stages then appears in the same order on both sides, so the
rendezvous cannot deadlock). With ``overlap_ep`` an F unit and the B unit that
follows it in 1F1B's steady state are interleaved block by block at their EP
all-to-alls, which move to the comm stream: one micro-batch's dispatch/combine runs
while the other's compute proceeds (Pangu's adaptive pipe overlap; MindSpeed's
merged forward-backward). With ``overlap_dp`` gradient reduce-scatters run on the
comm stream as soon as a chunk's last backward ends, and the parameter all-gather
of the previous step's optimizer overlaps this step's first forwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from xpusim.sim.ir import (
    Chain,
    Collective,
    CollectiveKind,
    ElementwiseShape,
    Op,
    OpKind,
    RankGraph,
    Segment,
    Stream,
    Task,
    Unit,
    Work,
    dtype_bytes,
    is_low_precision,
)
from xpusim.sim.parallel import Layout, ParallelPlan
from xpusim.sim.schedules import Unit as SchedUnit
from xpusim.sim.schedules import steady_pairs
from xpusim.sim.training import layers as L
from xpusim.sim.training.chunks import (  # noqa: F401  (re-exported)
    Chunk,
    RankPlan,
    build_chunks,
    merges_fb,
    rank_groups,
    slot_context,
    with_pp,
)
from xpusim.sim.training.units import (  # noqa: F401  (re-exported)
    FSDP_KEY,
    Piece,
    fsdp_comms,
    grad_accum_bytes_per_param,
    tp_overlap,
    unit_pieces,
)

ADAM_FLOPS_PER_PARAM = 12.0  # moments, bias correction, sqrt, divide, decay, update
# Norm of the gradients: square and accumulate.
NORM_FLOPS_PER_PARAM = 2.0


def adam_bytes_per_param(plan: ParallelPlan) -> float:
    """HBM bytes per parameter of one mixed-precision Adam step (Megatron's optimizer;
    Micikevicius et al. 2018 for the recipe): read the main gradient (``grad_reduce_dtype``),
    read and write the fp32 master weight, m and v (3 x 8 B), and, when the model
    computes in 16 or 8 bits, write its 16-bit copy of the weight (2 B). fp16/bf16 with
    fp32 grads: 4 + 24 + 2 = 30 B."""
    b = 0.0 if plan.dtype == "fp32" else 2.0  # fp8 recipes keep a bf16 weight copy
    return dtype_bytes(plan.grad_reduce_dtype) + 24.0 + b


@dataclass
class LoweredRank:
    """One rank's step as unpriced IR: its graph, the pieces of each distinct unit
    (chunk x F/B, each run once per micro-batch: the breakdown prices them once and
    scales), and the optimizer's ops: those before the step (loss-scale check, gradient
    norm) and the step itself (Adam, the weights' cast)."""

    rank_plan: RankPlan
    graph: RankGraph
    templates: list[list[Piece]]
    optimizer_prep: list[Op]
    optimizer_step: list[Op]
    tasks: int  # tasks as one per piece: a chain counts its parts


# A block's emission program (``Emitter.program``): each step a run of two or more
# pieces emitted as one chain task, or one piece on its own (chain None).
_Step = tuple[Piece, int, Chain | None]


# ---------------------------------------------------------------- emission


@dataclass
class Emitter:
    """Adds tasks to one rank's graph.

    A collective whose group holds no other simulated rank needs no rendezvous (the
    engine gives it a fixed duration); the one object of such a collective in a unit's
    pieces is shared by every unit that runs them.

    With ``chains`` (no per-task records asked for) a run of a unit's pieces that go to
    the compute stream one after the other — segments and solo collectives, nothing
    else waiting on them part-way — is one ``Chain`` task, shared by every unit that
    runs it: the engine gives each part the same start, end and breakdown as a task of
    its own, at a fraction of the cost (the bulk of a step's tasks are such runs).
    """

    graph: RankGraph
    plan: ParallelPlan
    groups: dict[str, tuple[int, ...]]
    simulated: frozenset[int]
    chains: bool = False
    folded: int = 0  # pieces folded into chains beyond one task each
    _solo: dict[tuple[int, ...], bool] = field(default_factory=dict)
    _solo_piece: dict[int, tuple[Collective, str]] = field(default_factory=dict)
    # (id(pieces), split_ep) -> the unit's blocks, each block's emission program
    _programs: dict[tuple[int, bool], list[list[_Step]]] = field(default_factory=dict)
    _single: dict[int, tuple[Work, str] | None] = field(default_factory=dict)

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
        known = self._solo.get(group)
        if known is None:
            known = self._solo[group] = sum(1 for r in group if r in self.simulated) <= 1
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
        solo = self._solo_piece.get(id(piece))
        if solo is not None:
            return solo
        c = piece.comm
        assert c is not None
        group = self.groups[c.group]
        if not self.solo(group):
            return None
        label = c.group.split("_")[0] if c.group.startswith(("ep", "dp")) else c.group
        coll = Collective(f"{piece.phase}.{piece.slot}.{c.name}", c.kind, group, c.nbytes,
                          c.algorithm)
        solo = self._solo_piece[id(piece)] = (coll, label)
        return solo

    def unit(self, pieces: list[Piece], split_ep: bool) -> list[list[_Step]]:
        """Blocks of a unit, as emission programs (``program``): runs of pieces ending at
        an EP collective (when ``split_ep``). Built once per unit template."""
        key = (id(pieces), split_ep)
        programs = self._programs.get(key)
        if programs is None:
            blocks: list[list[tuple[Piece, int]]] = [[]]
            for i, piece in enumerate(pieces):
                blocks[-1].append((piece, i))
                nxt = pieces[i + 1] if i + 1 < len(pieces) else None
                if split_ep and _is_ep(piece) and not (nxt is not None and _is_ep(nxt)):
                    blocks.append([])  # hierarchical: 2 back to back
            programs = self._programs[key] = [self.program(b, split_ep) for b in blocks if b]
        return programs

    def single(self, pieces: list[Piece]) -> tuple[Work, str] | None:
        """(work, label) when an unpaired unit of these pieces is one compute-stream task
        that waits for nothing but the unit's first dependencies (a chain, or one
        segment or solo collective), else None."""
        key = id(pieces)
        if key not in self._single:
            programs = self.unit(pieces, False)
            found: tuple[Work, str] | None = None
            if len(programs) == 1 and len(programs[0]) == 1:
                piece, _, chain = programs[0][0]
                if chain is not None:
                    found = (chain, chain.parts[0][1])
                elif not piece.waits:
                    found = self._chainable(piece, False)
            self._single[key] = found
        return self._single[key]

    def program(self, block: list[tuple[Piece, int]], paired: bool) -> list[_Step]:
        """The block's pieces in order, runs of chainable ones (``_chainable``) folded
        into one chain each when ``chains``."""
        steps: list[_Step] = []
        run: list[tuple[Piece, int]] = []
        for piece, idx in block:
            part = self._chainable(piece, paired) if self.chains else None
            if part is not None and not (run and piece.waits):
                run.append((piece, idx))
                continue
            self._fold(run, steps)
            run = [(piece, idx)] if part is not None else []
            if part is None:
                steps.append((piece, idx, None))
        self._fold(run, steps)
        return steps

    def _chainable(self, piece: Piece, paired: bool) -> tuple[Segment | Collective, str] | None:
        """(work, label) of a piece that runs on the compute stream with no rendezvous:
        a segment, or a synchronous solo collective; else None."""
        if piece.comm is None:
            return piece.segment, piece.phase  # type: ignore[return-value]
        if piece.waits or piece.async_ or (paired and piece.comm.group.startswith("ep")):
            return None  # on the comm stream
        return self.solo_part(piece)

    def _fold(self, run: list[tuple[Piece, int]], steps: list[_Step]) -> None:
        if len(run) == 1:
            steps.append((run[0][0], run[0][1], None))
        elif run:
            parts = tuple(self._chainable(p, False) for p, _ in run)
            name = "+".join(p.slot for p, _ in run[:1]) + f"..{len(run)}"
            steps.append((run[0][0], run[0][1], Chain(name, parts)))  # type: ignore[arg-type]

    def run_blocks(self, units: list[tuple[list[list[_Step]], int, list[int]]]) -> list[int]:
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
                for piece, idx, chain in blocks[i] if i < len(blocks) else ():
                    if chain is not None:
                        deps = pending[u] + [keyed[u][k] for k in piece.waits]
                        tid = self.add(chain, Stream.COMPUTE, deps, chain.parts[0][1])
                        pending[u] = []
                        last_compute[u] = tid
                    elif piece.comm is None:
                        deps = pending[u] + [keyed[u][k] for k in piece.waits]
                        tid = self.add(piece.segment, Stream.COMPUTE,  # type: ignore[arg-type]
                                             deps, piece.phase)
                        pending[u] = []
                        last_compute[u] = tid
                    elif piece.async_:
                        lc = last_compute[u]
                        deps = [lc] if lc is not None else list(pending[u])
                        tid = self.comm_piece(piece, Stream.COMM, deps, tag, idx)
                        keyed[u][piece.key] = tid
                    elif paired and piece.comm.group.startswith("ep"):
                        lu = last[u]
                        deps = ([lu] if lu is not None else []) + pending[u]
                        tid = self.comm_piece(piece, Stream.COMM, deps, tag, idx)
                        pending[u] = [tid]
                    else:
                        tid = self.comm_piece(piece, Stream.COMPUTE, pending[u], tag, idx)
                        pending[u] = []
                        last_compute[u] = tid
                    last[u] = tid
        # a unit that ended on an async collective finishes when it does
        return [p[-1] if p else t for p, t in zip(pending, last, strict=True)]  # type: ignore[misc]


def _is_ep(piece: Piece) -> bool:
    return piece.comm is not None and piece.comm.group.startswith("ep")


def _p2p_tag(plan: ParallelPlan, microbatch: int, vstage: int) -> int:
    return microbatch * plan.pp * plan.vpp + vstage


# ---------------------------------------------------------------- one rank's step


def lower_rank(
    rp: RankPlan, plan: ParallelPlan, layout: Layout, simulated: frozenset[int],
    chains: bool = False, pieces: dict[tuple[int, str], list[Piece]] | None = None,
) -> LoweredRank:
    """The program of one rank for one training step; ``chains``: fold runs of compute
    pieces into chain tasks (when no per-task record is asked for, ``Emitter``).
    ``pieces``: (id(chunk), "F"/"B") -> the unit's pieces, shared with other lowerings of
    the same chunks (a step lowered at two micro-batch counts builds them once)."""
    g = RankGraph(rp.rank)
    em = Emitter(g, plan, rp.groups, simulated, chains)
    pieces = {} if pieces is None else pieces
    templates = {}
    for c, ch in enumerate(rp.chunks):
        for k in ("F", "B"):
            unit = pieces.get((id(ch), k))
            if unit is None:
                unit = pieces[(id(ch), k)] = unit_pieces(ch, k, plan)
            templates[(c, k)] = unit
    # Parameter all-gather (ZeRO >= 1) of the previous step's optimizer: with overlap it
    # runs while this step starts; the first forward of a chunk waits for its own.
    param_ag: dict[int, list[int]] = {}
    if plan.zero >= 1 and plan.overlap_dp and plan.zero < 3:
        b = dtype_bytes(plan.dtype)
        for c, ch in enumerate(rp.chunks):
            param_ag[c] = _param_gather(em, ch, c, b, Stream.COMM, [], tag=c)
    sched = _Schedule(em, rp, layout, templates, param_ag)
    sched.emit()
    dp_tasks = sched.dp_tasks + _embedding_grads(em, rp, sched.embed_deps)
    prep, step = _optimizer(em, rp, dp_tasks)
    return LoweredRank(rp, g, list(templates.values()), prep, step, len(g.tasks) + em.folded)


@dataclass
class _Schedule:
    """Emits a rank's pipeline schedule: per unit (or merged F/B pair) the receive, the
    unit's pieces, the send; after a chunk's last backward its gradient reduction."""

    em: Emitter
    rp: RankPlan
    layout: Layout
    templates: dict[tuple[int, str], list[Piece]]
    param_ag: dict[int, list[int]]
    dp_tasks: list[int] = field(default_factory=list)
    embed_deps: list[int] = field(default_factory=list)
    _seen_first_f: set[int] = field(default_factory=set)
    _last_b: dict[int, int] = field(default_factory=dict)  # chunk -> its last B in order
    _index: dict[int, int] = field(default_factory=dict)  # id(unit) -> position in order
    _peers: dict[int, int] = field(default_factory=dict)  # virtual stage -> peer rank

    def emit(self) -> None:
        rp = self.rp
        for i, unit in enumerate(rp.order):
            self._index[id(unit)] = i
            if unit.kind == "B":
                self._last_b[unit.chunk] = i
        steps = steady_pairs(rp.order) if rp.merge_fb else [(u,) for u in rp.order]
        em = self.em
        for step in steps:
            if len(step) == 1:
                # Most units run one chain (or one piece): one task, no block bookkeeping.
                unit = step[0]
                pieces = self.templates[(unit.chunk, unit.kind)]
                single = em.single(pieces)
                deps = self._receive(unit)
                if single is not None:
                    last = em.add(single[0], Stream.COMPUTE, deps, single[1])
                else:
                    last = em.run_blocks([(em.unit(pieces, False), self._tag(unit), deps)])[0]
                self._finish(unit, last)
                continue
            prepared = [(em.unit(self.templates[(u.chunk, u.kind)], True), self._tag(u),
                         self._receive(u)) for u in step]
            lasts = em.run_blocks(prepared)
            for unit, last in zip(step, lasts, strict=True):
                self._finish(unit, last)

    def _peer(self, vstage: int) -> int:
        peer = self._peers.get(vstage)
        if peer is None:
            stage = vstage % self.em.plan.pp
            peer = self._peers[vstage] = self.layout.rank(with_pp(self.layout, self.rp.rank, stage))
        return peer

    def _tag(self, unit: SchedUnit) -> int:
        """The tag of the unit's own collectives (tells repeated ones apart)."""
        return (unit.microbatch * self.em.plan.vpp + unit.chunk) * 2 + (unit.kind == "B")

    def _receive(self, unit: SchedUnit) -> list[int]:
        """The unit's first dependencies: its receive, and for a chunk's first forward the
        overlapped parameter all-gather."""
        plan, rp = self.em.plan, self.rp
        v = rp.chunks[unit.chunk].vstage
        deps: list[int] = []
        if unit.kind == "F" and unit.chunk not in self._seen_first_f:
            self._seen_first_f.add(unit.chunk)
            deps += self.param_ag.get(unit.chunk, [])
        src = v - 1 if unit.kind == "F" else v + 1
        if 0 <= src < plan.pp * plan.vpp:
            deps.append(self.em.collective(
                f"pp.{unit.kind}", CollectiveKind.SEND_RECV, (self._peer(src), rp.rank),
                rp.chunks[unit.chunk].input_bytes, Stream.COMM, [], "pp",
                _p2p_tag(plan, unit.microbatch, v)))
        return deps

    def _finish(self, unit: SchedUnit, last: int) -> None:
        """After the unit: its send, and after a chunk's last backward the gradient
        reduction (ZeRO-3 units end with their own reduce-scatters)."""
        plan, rp = self.em.plan, self.rp
        ch = rp.chunks[unit.chunk]
        nv = plan.pp * plan.vpp
        dst = ch.vstage + 1 if unit.kind == "F" else ch.vstage - 1
        if 0 <= dst < nv:
            self.em.collective(
                f"pp.{unit.kind}", CollectiveKind.SEND_RECV, (rp.rank, self._peer(dst)),
                ch.input_bytes, Stream.COPY, [last], "pp", _p2p_tag(plan, unit.microbatch, dst))
        last_b = unit.kind == "B" and self._index[id(unit)] == self._last_b[unit.chunk]
        if unit.kind == "B" and plan.zero == 3:
            self.dp_tasks.append(last)  # the unit ends with its last slot's reduce-scatter
        elif last_b:
            stream = Stream.COMM if plan.overlap_dp else Stream.COMPUTE
            gb = dtype_bytes(plan.grad_reduce_dtype)
            self.dp_tasks += _grad_reduce(self.em, ch, unit.chunk, gb, stream, [last], tag=0)
        if last_b and rp.shared_embedding and plan.pp > 1 and ch.vstage in (0, nv - 1):
            self.embed_deps.append(last)


def _embedding_grads(em: Emitter, rp: RankPlan, embed_deps: list[int]) -> list[int]:
    """The shared word-embedding gradient all-reduce between the first and last stage,
    after the whole schedule (Megatron's finalize_model_grads): issued earlier on the
    in-order comm stream it would hold back the pipeline receives behind it."""
    if not embed_deps:
        return []
    plan = em.plan
    stream = Stream.COMM if plan.overlap_dp else Stream.COMPUTE
    gb = dtype_bytes(plan.grad_reduce_dtype)
    return [em.collective("dp.embed_grad", CollectiveKind.ALL_REDUCE, rp.groups["embed"],
                          rp.shared_embedding * gb, stream, embed_deps, "dp", 0)]


def _optimizer_task(em: Emitter, name: str, op: Op, deps: list[int]) -> int:
    """One optimizer pass: a single fused kernel over the local shard (not host-bound)."""
    return em.graph.add(Segment(name, (op,), "optimizer", host=False), Stream.COMPUTE, deps,
                        "optimizer")


def _optimizer(em: Emitter, rp: RankPlan, deps: list[int]) -> tuple[list[Op], list[Op]]:
    """Optimizer step on the local shard, then (without overlap) the parameter all-gather.
    Returns (ops before the step, ops of the step)."""
    plan = em.plan
    params = sum(
        _shard(plan, ch.dense_params, len(rp.groups["dp_dense"]))
        + _shard(plan, ch.expert_params, len(rp.groups["dp_expert"]))
        for ch in rp.chunks
    )
    gbytes = dtype_bytes(plan.grad_reduce_dtype)
    prep: list[Op] = []
    if plan.dtype == "fp16":
        # Dynamic loss scaling (Micikevicius et al. 2018; Megatron's
        # _unscale_main_grads_and_check_for_nan): scale the main grads by 1/S and look for
        # inf/NaN (read + write), then agree on "found inf" across all ranks.
        unscale = Op("grad_unscale", OpKind.ELEMENTWISE, 2.0 * params,
                     {"hbm": 2.0 * gbytes * params}, "fp32", Unit.VECTOR, ElementwiseShape(params))
        prep.append(unscale)
        deps = [_optimizer_task(em, "grad_unscale", unscale, deps)]
        deps = [em.collective("dp.found_inf", CollectiveKind.ALL_REDUCE, rp.groups["world"],
                              4.0, Stream.COMPUTE, deps, "dp", 0)]
    # Gradient clipping (Megatron clip_grad_norm_fp32, on by default: clip-grad 1.0): the
    # L2 norm of the local grad shard, then an all-reduce of one fp32 scalar over every
    # rank holding a distinct shard (model-parallel x distributed-optimizer ranks).
    norm = Op("grad_norm", OpKind.REDUCTION, NORM_FLOPS_PER_PARAM * params,
              {"hbm": gbytes * params}, "fp32", Unit.VECTOR, ElementwiseShape(params))
    prep.append(norm)
    deps = [_optimizer_task(em, "grad_norm", norm, deps)]
    deps = [em.collective("dp.grad_norm", CollectiveKind.ALL_REDUCE, rp.groups["world"], 4.0,
                          Stream.COMPUTE, deps, "dp", 0)]
    adam = Op("adam", OpKind.ELEMENTWISE, ADAM_FLOPS_PER_PARAM * params,
              {"hbm": adam_bytes_per_param(plan) * params}, "fp32", Unit.VECTOR,
              ElementwiseShape(params))
    step = [adam]
    opt = _optimizer_task(em, "optimizer", adam, deps)
    if is_low_precision(plan.dtype):
        # The updated weights are cast to the recipe's format once per step and reused by
        # every micro-batch (TransformerEngine caches the FP8 weights from the first
        # micro-batch: Megatron's is_first_microbatch); every local weight, not the shard.
        local = sum(ch.dense_params + ch.expert_params for ch in rp.chunks)
        cast = L.quantize_op("weights", local, plan.dtype)
        step.append(cast)
        opt = _optimizer_task(em, "weight_cast", cast, [opt])
    if plan.zero in (1, 2) and not plan.overlap_dp:
        b = dtype_bytes(plan.dtype)
        for c, ch in enumerate(rp.chunks):
            _param_gather(em, ch, c, b, Stream.COMPUTE, [opt], tag=c)
    return prep, step


def _shard(plan: ParallelPlan, params: float, dp: int) -> float:
    """Parameters whose optimizer step this rank runs (ZeRO >= 1 shards them over DP)."""
    return params / dp if plan.zero >= 1 else params


def _dp_collectives(
    em: Emitter,
    ch: Chunk,
    what: str,
    c: int,
    kind: CollectiveKind,
    bytes_per_param: float,
    stream: Stream,
    deps: list[int],
    tag: int,
) -> list[int]:
    """One DP collective per parameter class of chunk ``c``: dense parameters over the
    dense-DP group, expert parameters over the (smaller) expert-DP group."""
    out = []
    for name, params, group in (
        ("dense", ch.dense_params, "dp_dense"),
        ("expert", ch.expert_params, "dp_expert"),
    ):
        if params > 0 and len(em.groups[group]) > 1:
            out.append(
                em.collective(f"dp.{what}.{name}.{c}", kind, em.groups[group],
                              params * bytes_per_param, stream, deps, "dp", tag)
            )
    return out


def _grad_reduce(
    em: Emitter, ch: Chunk, c: int, gb: float, stream: Stream, deps: list[int], tag: int
) -> list[int]:
    """Gradient all-reduce (ZeRO 0) or reduce-scatter (ZeRO >= 1) of chunk ``c``."""
    kind = CollectiveKind.ALL_REDUCE if em.plan.zero == 0 else CollectiveKind.REDUCE_SCATTER
    return _dp_collectives(em, ch, "grad", c, kind, gb, stream, deps, tag)


def _param_gather(
    em: Emitter, ch: Chunk, c: int, b: float, stream: Stream, deps: list[int], tag: int
) -> list[int]:
    """Parameter all-gather of chunk ``c`` (ZeRO-3 before use, ZeRO >= 1 after the step)."""
    return _dp_collectives(em, ch, "param", c, CollectiveKind.ALL_GATHER, b, stream, deps, tag)
