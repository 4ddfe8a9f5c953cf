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
   the last backward of each chunk (per DP bucket inside it on a Megatron-Core stack's
   first stage, ``sim.training.dp_buckets``); the optimizer step; the parameter
   all-gather.

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
of the previous step's optimizer overlaps this step's first forwards. On a Megatron-Core
stack the first stage's first chunk is cut into DP buckets (``sim.training.dp_buckets``):
its last backward launches each bucket's reduction as it passes the bucket's layers,
and its first forward waits for each bucket's gather in turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xpusim.sim.ir import (
    CollectiveKind,
    ElementwiseShape,
    Op,
    OpKind,
    RankGraph,
    Segment,
    Stream,
    Unit,
    dtype_bytes,
    is_low_precision,
)
from xpusim.sim.parallel import Layout, ParallelPlan
from xpusim.sim.schedules import Unit as SchedUnit
from xpusim.sim.schedules import steady_pairs
from xpusim.sim.training import dp_buckets, fsdp1
from xpusim.sim.training.chunks import (  # noqa: F401  (re-exported)
    Chunk,
    RankPlan,
    build_chunks,
    merges_fb,
    rank_groups,
    slot_context,
    with_pp,
)
from xpusim.sim.training.dp_buckets import Bucket, ChunkBuckets
from xpusim.sim.training.emitter import EmitCache, Emitter
from xpusim.sim.training.framework import framework_profile
from xpusim.sim.training.lowprec import param_gather_bytes
from xpusim.sim.training.nvfp4 import weight_cast_ops
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


# ---------------------------------------------------------------- emission


def _p2p_tag(plan: ParallelPlan, microbatch: int, vstage: int) -> int:
    return microbatch * plan.pp * plan.vpp + vstage


# ---------------------------------------------------------------- one rank's step


def lower_rank(
    rp: RankPlan, plan: ParallelPlan, layout: Layout, simulated: frozenset[int],
    chains: bool = False, pieces: dict[tuple[int, str], list[Piece]] | None = None,
    emit_cache: EmitCache | None = None,
) -> LoweredRank:
    """The program of one rank for one training step; ``chains``: fold runs of compute
    pieces into chain tasks (when no per-task record is asked for, ``Emitter``).
    ``pieces``: (id(chunk), "F"/"B") -> the unit's pieces, and ``emit_cache`` the rank's
    emitter caches, shared with other lowerings of the same chunks and rank (a step
    lowered at two micro-batch counts builds them once)."""
    g = RankGraph(rp.rank)
    em = Emitter(g, plan, rp.groups, simulated, chains, emit_cache or EmitCache())
    pieces = {} if pieces is None else pieces
    templates = {}
    for c, ch in enumerate(rp.chunks):
        for k in ("F", "B"):
            unit = pieces.get((id(ch), k))
            if unit is None:
                unit = pieces[(id(ch), k)] = unit_pieces(ch, k, plan)
            templates[(c, k)] = unit
    buckets = _chunk_buckets(em, rp)
    # Parameter all-gather (ZeRO >= 1) of the previous step's optimizer: with overlap it
    # runs while this step starts; the first forward of a chunk waits for its own (a
    # bucketed chunk's, bucket by bucket, in the order its forward needs them).
    param_ag: dict[int, list[int]] = {}
    bucket_ag: dict[Bucket, int] = {}
    if plan.zero >= 1 and plan.overlap_dp and plan.zero < 3:
        b = param_gather_bytes(plan.dtype)
        for c, ch in enumerate(rp.chunks):
            cb = buckets.get(c)
            if cb is None:
                param_ag[c] = _param_gather(em, ch, c, b, Stream.DP_COMM, [], tag=c)
                continue
            for bk in cb.gather_order():
                t = _bucket_collective(em, bk, cb.params[bk], CollectiveKind.ALL_GATHER, b, [], c)
                if t is not None:
                    bucket_ag[bk] = t
            param_ag[c] = list(bucket_ag.values())
    sched = _Schedule(em, rp, layout, templates, param_ag, buckets, bucket_ag)
    sched.emit()
    dp_tasks = sched.dp_tasks + _embedding_grads(em, rp, sched.embed_deps)
    prep, step = _optimizer(em, rp, dp_tasks)
    return LoweredRank(rp, g, list(templates.values()), prep, step, len(g.tasks) + em.folded)


def _chunk_buckets(em: Emitter, rp: RankPlan) -> dict[int, ChunkBuckets]:
    """Chunk index -> its DP bucket parts, for the chunks Megatron-Core buckets
    (``dp_buckets.applies``) that hold more than one bucket; built once per emit cache."""
    out = {}
    for c, ch in enumerate(rp.chunks):
        if not dp_buckets.applies(em.plan, rp.stage, c):
            continue
        if id(ch) not in em.cache.buckets:
            em.cache.buckets[id(ch)] = dp_buckets.chunk_buckets(ch, em.plan)
        cb = em.cache.buckets[id(ch)]
        if cb is not None:
            out[c] = cb
    return out


def _bucket_collective(
    em: Emitter, bk: Bucket, params: float, kind: CollectiveKind, bytes_per_param: float,
    deps: list[int], c: int,
) -> int | None:
    """One bucket's DP collective on the DP comm stream, over its class's group (None
    when the group is this rank alone)."""
    cls, index = bk
    group = em.groups[f"dp_{cls}"]
    if params <= 0 or len(group) <= 1:
        return None
    what = "param" if kind == CollectiveKind.ALL_GATHER else "grad"
    return em.collective(f"dp.{what}.{cls}.{c}.b{index}", kind, group, params * bytes_per_param,
                         Stream.DP_COMM, deps, "dp", c)


@dataclass
class _Schedule:
    """Emits a rank's pipeline schedule: per unit (or merged F/B pair) the receive, the
    unit's pieces, the send; after a chunk's last backward its gradient reduction."""

    em: Emitter
    rp: RankPlan
    layout: Layout
    templates: dict[tuple[int, str], list[Piece]]
    param_ag: dict[int, list[int]]
    buckets: dict[int, ChunkBuckets] = field(default_factory=dict)
    bucket_ag: dict[Bucket, int] = field(default_factory=dict)
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
                unit = step[0]
                cb = self.buckets.get(unit.chunk)
                first_f = unit.kind == "F" and unit.chunk not in self._seen_first_f
                if cb is not None and first_f and self.bucket_ag:
                    self._finish(unit, self._first_forward(unit, cb))
                elif cb is not None and self._is_last_b(unit):
                    self._finish(unit, self._last_backward(unit, cb), reduced=True)
                else:
                    pieces = self.templates[(unit.chunk, unit.kind)]
                    self._finish(unit, self._run(unit, pieces, self._receive(unit)))
                continue
            prepared = [(em.unit(self.templates[(u.chunk, u.kind)], True), self._tag(u),
                         self._receive(u)) for u in step]
            lasts = em.run_pair(prepared)
            for unit, last in zip(step, lasts, strict=True):
                self._finish(unit, last)

    def _run(self, unit: SchedUnit, pieces: list[Piece], deps: list[int]) -> int:
        """Emit one unpaired unit's pieces after ``deps``; its last task. Most units run
        one chain (or one piece): one task, no block bookkeeping."""
        em = self.em
        single = em.single(pieces)
        if single is not None:
            return em.add(single[0], Stream.COMPUTE, deps, single[1])
        return em.run_pair([(em.unit(pieces, False), self._tag(unit), deps)])[0]

    def _is_last_b(self, unit: SchedUnit) -> bool:
        return unit.kind == "B" and self._index[id(unit)] == self._last_b[unit.chunk]

    def _first_forward(self, unit: SchedUnit, cb: ChunkBuckets) -> int:
        """A bucketed chunk's first forward: each bucket part waits for the gathers of
        its own buckets only (Megatron-Core's forward pre-hook, ``finish_param_sync``)."""
        deps = self._receive(unit, gather=False)
        last = -1
        for part in reversed(cb.parts):
            deps += [self.bucket_ag[b] for b in part.needs if b in self.bucket_ag]
            last = self._run(unit, part.fwd, deps)
            deps = []  # the compute stream keeps the parts in order
        return last

    def _last_backward(self, unit: SchedUnit, cb: ChunkBuckets) -> int:
        """A bucketed chunk's last backward: after each bucket part the reductions of the
        buckets it completes, on the DP comm stream (``register_grad_ready`` launches a
        bucket group's collective once all its gradients are in)."""
        plan = self.em.plan
        kind = CollectiveKind.ALL_REDUCE if plan.zero == 0 else CollectiveKind.REDUCE_SCATTER
        gb = dtype_bytes(plan.grad_reduce_dtype)
        deps = self._receive(unit)
        last = -1
        for part in cb.parts:
            last = self._run(unit, part.bwd, deps)
            deps = []
            for bk in part.closes:
                t = _bucket_collective(self.em, bk, cb.params[bk], kind, gb, [last], unit.chunk)
                if t is not None:
                    self.dp_tasks.append(t)
        return last

    def _peer(self, vstage: int) -> int:
        peer = self._peers.get(vstage)
        if peer is None:
            stage = vstage % self.em.plan.pp
            peer = self._peers[vstage] = self.layout.rank(with_pp(self.layout, self.rp.rank, stage))
        return peer

    def _tag(self, unit: SchedUnit) -> int:
        """The tag of the unit's own collectives (tells repeated ones apart)."""
        return (unit.microbatch * self.em.plan.vpp + unit.chunk) * 2 + (unit.kind == "B")

    def _receive(self, unit: SchedUnit, gather: bool = True) -> list[int]:
        """The unit's first dependencies: its receive, and for a chunk's first forward the
        overlapped parameter all-gather (unless ``gather`` is off: a bucketed forward
        waits per bucket)."""
        plan, rp = self.em.plan, self.rp
        v = rp.chunks[unit.chunk].vstage
        deps: list[int] = []
        if unit.kind == "F" and unit.chunk not in self._seen_first_f:
            self._seen_first_f.add(unit.chunk)
            if gather:
                deps += self.param_ag.get(unit.chunk, [])
        src = v - 1 if unit.kind == "F" else v + 1
        if 0 <= src < plan.pp * plan.vpp:
            deps.append(self.em.collective(
                f"pp.{unit.kind}", CollectiveKind.SEND_RECV, (self._peer(src), rp.rank),
                rp.chunks[unit.chunk].input_bytes, Stream.COMM, [], "pp",
                _p2p_tag(plan, unit.microbatch, v)))
        return deps

    def _finish(self, unit: SchedUnit, last: int, reduced: bool = False) -> None:
        """After the unit: its send, and after a chunk's last backward the gradient
        reduction (ZeRO-3 units end with their own reduce-scatters, a bucketed last
        backward, ``reduced``, launched its buckets')."""
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
        elif last_b and not reduced:
            stream = Stream.DP_COMM if plan.overlap_dp else Stream.COMPUTE
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
    stream = Stream.DP_COMM if plan.overlap_dp else Stream.COMPUTE
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
    composer = framework_profile(plan.framework).optimizer == "composer-decoupled-adamw"
    # Composer's FSDP1 shard gradients are fp32 (sim.training.fsdp1: cast back after the
    # reduce-scatter), and FSDP's clip_grad_norm_ then scales every one (read + write).
    norm_bytes = fsdp1.FP32 + fsdp1.CLIP_SCALE_BYTES if composer else gbytes
    norm = Op("grad_norm", OpKind.REDUCTION, NORM_FLOPS_PER_PARAM * params,
              {"hbm": norm_bytes * params}, "fp32", Unit.VECTOR, ElementwiseShape(params))
    prep.append(norm)
    deps = [_optimizer_task(em, "grad_norm", norm, deps)]
    deps = [em.collective("dp.grad_norm", CollectiveKind.ALL_REDUCE, rp.groups["world"], 4.0,
                          Stream.COMPUTE, deps, "dp", 0)]
    adam_bytes = fsdp1.decoupled_adamw_bytes_per_param() if composer else adam_bytes_per_param(plan)
    adam = Op("adam", OpKind.ELEMENTWISE, ADAM_FLOPS_PER_PARAM * params,
              {"hbm": adam_bytes * params}, "fp32", Unit.VECTOR, ElementwiseShape(params))
    step = [adam]
    opt = _optimizer_task(em, "optimizer", adam, deps)
    if is_low_precision(plan.dtype):
        # The updated weights are cast to the recipe's format once per step and reused by
        # every micro-batch (TransformerEngine caches the FP8 weights from the first
        # micro-batch: Megatron's is_first_microbatch); every local weight, not the shard.
        # NVFP4 runs an amax pass then a 2D-block cast into both usages (sim.training.nvfp4).
        local = sum(ch.dense_params + ch.expert_params for ch in rp.chunks)
        casts = tuple(weight_cast_ops(local, plan.dtype))
        step += casts
        opt = em.graph.add(Segment("weight_cast", casts, "optimizer", host=False),
                           Stream.COMPUTE, [opt], "optimizer")
    if plan.zero in (1, 2) and not plan.overlap_dp:
        b = param_gather_bytes(plan.dtype)
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
