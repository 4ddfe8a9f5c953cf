"""Lowering a training step to per-rank IR graphs.

For each simulated rank (one representative per pipeline stage, or every rank in
full-rank mode) the lowering:

1. builds the forward items of each model chunk it holds (``layers.slot_items``),
2. turns them into *segments*: runs of consecutive ops priced by the cost model
   and merged into one ``Delay`` (the engine then handles tens of thousands of
   tasks instead of millions; the per-op times are kept for the breakdown), and
   collectives on concrete global-rank groups,
3. emits the units of the pipeline schedule in order: receive activations
   (gradients), the unit's segments, send; data-parallel gradient reduction after
   the last backward of each chunk; the optimizer step; the parameter all-gather.

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

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from xpusim.hwprofiles.spec import System
from xpusim.sim import ops
from xpusim.sim.ir import (
    Collective,
    CollectiveKind,
    Delay,
    ElementwiseShape,
    GemmShape,
    Op,
    OpKind,
    RankGraph,
    Stream,
    Unit,
    dtype_bytes,
    is_low_precision,
)
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import Coord, Layout, ParallelPlan, stage_slots
from xpusim.sim.schedules import Unit as SchedUnit
from xpusim.sim.schedules import steady_pairs
from xpusim.sim.training import layers as L
from xpusim.sim.training.routing import hot_factors, rank_loads

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


def grad_accum_bytes_per_param(plan: ParallelPlan) -> float:
    """Unfused gradient accumulation (Megatron-LM 2021: ``main_grad.add_(grad)`` in a
    hook after each micro-batch's backward): read the 16-bit gradient and the fp32 main
    gradient, write the fp32 main gradient. 0 with ``grad_accum_fusion`` (the wgrad GEMM
    accumulates in its epilogue) or when the model already computes in the grad dtype."""
    if plan.grad_accum_fusion or plan.dtype == plan.grad_reduce_dtype:
        return 0.0
    gb = dtype_bytes(plan.grad_reduce_dtype)
    return dtype_bytes(plan.dtype) + 2 * gb


@dataclass
class Chunk:
    """The model chunk (virtual stage) ``chunk`` of one rank."""

    vstage: int
    slots: list[tuple[str, list[L.Item]]]
    dense_params: float
    expert_params: float
    act_bytes: float  # alive per in-flight micro-batch
    input_bytes: float  # the chunk's input activation (what is sent between stages)
    # (dense, expert) parameters of each slot, in slot order: ZeRO-3 gathers and
    # reduce-scatters them one slot (layer) at a time, as FSDP does.
    slot_params: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class RankPlan:
    rank: int
    stage: int
    groups: dict[str, tuple[int, ...]]
    chunks: list[Chunk]
    order: list[SchedUnit] = field(default_factory=list)
    merge_fb: bool = False  # interleave steady-state F/B pairs at EP collectives (overlap_ep)
    # Word-embedding elements on this rank shared between the first and the last pipeline
    # stage (tied output head, or MTP modules that reuse the input embedding): their
    # gradients are all-reduced between the two stages once per step (Megatron's
    # embedding group, ``_allreduce_word_embedding_grads``). 0: nothing shared.
    shared_embedding: float = 0.0


def merges_fb(spec: ModelSpec, plan: ParallelPlan) -> bool:
    """Whether adaptive pipe overlap applies: an MoE model with expert all-to-alls."""
    has_a2a = plan.ep > 1 or (plan.tp_extend_ep and plan.tp > 1)
    return plan.overlap_ep and spec.moe is not None and has_a2a


def slot_context(
    spec: ModelSpec, plan: ParallelPlan, system: System, layout: Layout, rank: int, full_ranks: bool
) -> tuple[L.SlotContext, L.SlotContext]:
    """(compute context, comm context): loads for the rank's own experts and the busiest rank."""
    ep_dims = ("tp", "ep") if plan.tp_extend_ep else ("ep",)
    ep_group = layout.group(rank, ep_dims)
    spans = len({g // system.devices_per_node for g in ep_group}) > 1
    n = len(ep_group)
    hot = hot_factors(spec, plan.moe_routing, n, plan.seed) if spec.moe else {}
    own = hot
    if full_ranks and spec.moe:
        idx = ep_group.index(rank)
        own = {i: float(rank_loads(spec, plan.moe_routing, n, i, plan.seed)[idx]) for i in hot}
    tokens = plan.mbs * plan.seq / plan.cp
    comp = L.SlotContext(spec, plan, tokens, own, hot, spans)
    return comp, L.SlotContext(spec, plan, tokens, hot, hot, spans)


def rank_groups(plan: ParallelPlan, layout: Layout, rank: int) -> dict[str, tuple[int, ...]]:
    return {
        "tp": layout.group(rank, ("tp",)),
        "cp": layout.group(rank, ("cp",)),
        "ep": layout.group(rank, ("tp", "ep") if plan.tp_extend_ep else ("ep",)),
        "ep_inter": layout.group(rank, ("ep",)),
        "ep_intra": layout.group(rank, ("tp",)),
        "ep_tp": layout.group(rank, ("tp",)),  # expert-TP gather/scatter around the dispatch
        "dp_dense": layout.group(rank, ("cp", "ep", "dp")),
        "dp_expert": layout.group(rank, ("cp", "dp")),
        "embed": tuple(sorted({layout.rank(_with_pp(layout, rank, s)) for s in (0, plan.pp - 1)})),
        "world": tuple(range(plan.world)),
    }


def build_chunks(
    spec: ModelSpec, plan: ParallelPlan, ctx: L.SlotContext, stage: int
) -> list[Chunk]:
    slots = stage_slots(spec, plan)
    last_v = plan.pp * plan.vpp - 1
    b = dtype_bytes(plan.dtype)
    seq_shard = plan.tp if plan.sequence_parallel else 1
    input_bytes = ctx.tokens * spec.hidden * b / seq_shard
    chunks = []
    for c in range(plan.vpp):
        v = c * plan.pp + stage
        work: list[tuple[str, list[L.Item]]] = []
        if v == 0:
            work.append(("embedding", L.embedding_items(ctx)))
        for slot in slots[v]:
            work.append((slot, L.slot_items(ctx, slot)))
        if v == last_v:
            work.append(("head", L.head_items(ctx)))
        dense = expert = act = 0.0
        per_slot = []
        for _, items in work:
            d, e = L.weight_params(items)
            dense += d
            expert += e
            per_slot.append((d, e))
            act += L.activation_bytes(items, plan.recompute, plan.recompute_modules, input_bytes)
        chunks.append(Chunk(v, work, dense, expert, act, input_bytes, per_slot))
    return chunks


# ---------------------------------------------------------------- segments


@dataclass
class Segment:
    """One step of a unit: merged compute (seconds) or one collective.

    ``async_`` collectives run on the comm stream after the unit's previous compute;
    ``waits`` names the async collectives (by ``key``) a compute segment needs.
    """

    phase: str  # "fwd" | "bwd" | "recompute"
    slot: str
    seconds: float = 0.0
    ops: int = 0  # ops merged into a compute segment (each one host launch)
    comm: L.Comm | None = None
    async_: bool = False
    key: int = -1
    waits: tuple[int, ...] = ()


class Pricer:
    """Prices ops with the (cached) cost model; the per-kind totals are kept by the caller.

    ``host_op_s``: the framework's host cost per launched op (sim.training.framework).
    """

    def __init__(self, op_time, host_op_s: float = 0.0) -> None:
        self.op_time = op_time
        self.host_op_s = host_op_s

    def time(self, op: Op) -> float:
        return self.op_time(op)


def _split_gemm(op: Op, parts: int) -> Op:
    s = op.shape
    assert isinstance(s, GemmShape)
    return ops.gemm(op.name, s.m / parts, s.n, s.k, op.dtype, s.batch, role=op.role)


def tp_overlap(items: list, plan: ParallelPlan, counter: list[int]) -> list:
    """Chunk TP collectives with their adjacent GEMM (Megatron ``tp_comm_overlap``).

    An all-gather feeding a GEMM is cut into ``c`` pieces along the tokens; GEMM piece
    j starts when gather piece j lands. A GEMM feeding a reduce-scatter is cut the
    same way and piece j's reduce-scatter runs while piece j+1 computes. Only with
    sequence parallelism (all-gather / reduce-scatter; an all-reduce is not chunked).
    """
    if not (plan.overlap_tp and plan.sequence_parallel and plan.tp > 1):
        return items
    c = plan.tp_overlap_chunks
    out: list = []
    i = 0
    while i < len(items):
        it = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        nxt_op = nxt
        if (
            isinstance(it, L.Comm)
            and it.group == "tp"
            and it.kind == CollectiveKind.ALL_GATHER
            and isinstance(nxt_op, Op)
            and nxt_op.kind == OpKind.GEMM
        ):
            keys = []
            for j in range(c):
                counter[0] += 1
                keys.append(counter[0])
                out.append(
                    ("async", replace(it, name=f"{it.name}#{j}", nbytes=it.nbytes / c), counter[0])
                )
            for j in range(c):
                out.append(("wait", _split_gemm(nxt_op, c), keys[j]))
            i += 2
            continue
        prev = out[-1] if out else None
        prev_op = prev
        if (
            isinstance(it, L.Comm)
            and it.group == "tp"
            and it.kind == CollectiveKind.REDUCE_SCATTER
            and isinstance(prev_op, Op)
            and prev_op.kind == OpKind.GEMM
        ):
            out.pop()
            for j in range(c):
                counter[0] += 1
                out.append(_split_gemm(prev_op, c))
                out.append(
                    ("async", replace(it, name=f"{it.name}#{j}", nbytes=it.nbytes / c), counter[0])
                )
            out.append(("join", counter[0]))
            i += 1
            continue
        out.append(it)
        i += 1
    return out


def _segments(
    items: list,
    phase: str,
    slot: str,
    pricer: Pricer,
    by_kind: dict[str, list[float]],
    out: list[Segment],
) -> list[Segment]:
    join: tuple[int, ...] = ()
    for it in items:
        if isinstance(it, tuple):
            tag = it[0]
            if tag == "async":
                out.append(Segment(phase, slot, comm=it[1], async_=True, key=it[2]))
                continue
            if tag == "join":
                join = (it[1],)
                continue
            op, waits = it[1], (it[2] if isinstance(it[2], tuple) else (it[2],))
        elif isinstance(it, L.Comm):
            out.append(Segment(phase, slot, comm=it))
            continue
        else:
            op, waits = it, ()
        waits += join
        join = ()
        t = pricer.time(op)
        acc = by_kind.setdefault(f"{phase}:{op.kind}", [0.0, 0.0])
        acc[0] += t
        acc[1] += op.flops
        if out and out[-1].comm is None and out[-1].phase == phase and not waits:
            out[-1].seconds += t
            out[-1].ops += 1
        else:
            out.append(Segment(phase, slot, seconds=t, waits=waits, ops=1))
    return out


def host_bound(segs: list[Segment], pricer: Pricer, by_kind: dict[str, list[float]]) -> None:
    """A run of n ops cannot end before the host has issued them: max(device, n * host).
    The excess is booked as "<phase>:host" (the exposed framework overhead)."""
    h = pricer.host_op_s
    if h <= 0:
        return
    for seg in segs:
        if seg.comm is None and seg.ops:
            exposed = seg.ops * h - seg.seconds
            if exposed > 0:
                seg.seconds += exposed
                by_kind.setdefault(f"{seg.phase}:host", [0.0, 0.0])[0] += exposed


FSDP_KEY = 1 << 20  # keys of the ZeRO-3 per-slot collectives (above tp_overlap's)


def fsdp_comms(
    chunk: Chunk, i: int, kind: CollectiveKind, bytes_per_param: float
) -> list[L.Comm]:
    """ZeRO-3 collectives of slot ``i``: dense parameters over the dense-DP group,
    expert parameters over the expert-DP group (one collective per parameter class)."""
    d, e = chunk.slot_params[i]
    what = "param_ag" if kind == CollectiveKind.ALL_GATHER else "grad_rs"
    return [
        L.Comm(f"fsdp.{what}.{name}", kind, p * bytes_per_param, group)
        for name, p, group in (("dense", d, "dp_dense"), ("expert", e, "dp_expert"))
        if p > 0
    ]


def _fsdp_items(
    chunk: Chunk, plan: ParallelPlan, counter: list[int], i: int, kind: CollectiveKind
) -> tuple[list, tuple[int, ...]]:
    """Slot ``i``'s ZeRO-3 collectives as items: asynchronous (comm stream, keyed) when
    the plan overlaps DP traffic, else blocking on the compute stream."""
    nbytes = dtype_bytes(plan.dtype if kind == CollectiveKind.ALL_GATHER else plan.grad_reduce_dtype)
    comms = fsdp_comms(chunk, i, kind, nbytes)
    if not plan.overlap_dp:
        return comms, ()
    keys = []
    out: list = []
    for c in comms:
        counter[1] += 1
        keys.append(FSDP_KEY + counter[1])
        out.append(("async", c, keys[-1]))
    return out, tuple(keys)


def _waiting(items: list, keys: tuple[int, ...]) -> tuple[list, tuple[int, ...]]:
    """``items`` with their first compute op waiting for the collectives ``keys``, and
    the keys still to wait for (all of them when ``items`` has no compute op)."""
    if not keys:
        return items, ()
    out = list(items)
    for j, it in enumerate(out):
        if isinstance(it, (tuple, L.Comm)):
            continue
        out[j] = ("wait", it, keys)
        return out, ()
    return out, keys


def unit_segments(
    chunk: Chunk, kind: str, plan: ParallelPlan, pricer: Pricer, by_kind: dict[str, list[float]]
) -> list[Segment]:
    """The segments of one forward (F) or backward (B) of a chunk.

    ZeRO-3 (FSDP) gathers each slot's parameters just before it runs and, in backward,
    reduce-scatters its gradients as soon as its backward ends (torchtitan applies
    ``fully_shard`` per transformer block; Megatron-FSDP and DeepSpeed ZeRO-3 also
    fetch per module). With ``overlap_dp`` the collectives run on the comm stream and
    slot i+1's all-gather is issued before slot i computes (FSDP2's implicit forward
    prefetch and explicit backward prefetch of one block; Zhao et al., VLDB 2023 s3.3),
    so only the first gather and the last reduce-scatter are necessarily exposed.
    """
    segs: list[Segment] = []
    counter = [0, 0]
    fsdp = plan.zero == 3 and bool(chunk.slot_params)
    ag = CollectiveKind.ALL_GATHER
    n = len(chunk.slots)
    if kind == "F":
        pending: dict[int, tuple[int, ...]] = {}
        if fsdp:
            items, pending[0] = _fsdp_items(chunk, plan, counter, 0, ag)
            _segments(items, "fwd", chunk.slots[0][0], pricer, by_kind, segs)
        for i, (slot, items) in enumerate(chunk.slots):
            if fsdp and i + 1 < n:  # prefetch the next slot while this one computes
                pre, pending[i + 1] = _fsdp_items(chunk, plan, counter, i + 1, ag)
                _segments(pre, "fwd", slot, pricer, by_kind, segs)
            items, _ = _waiting(tp_overlap(items, plan, counter), pending.pop(i, ()))
            _segments(items, "fwd", slot, pricer, by_kind, segs)
        host_bound(segs, pricer, by_kind)
        return segs
    order = list(reversed(range(n)))
    pending_b: dict[int, tuple[int, ...]] = {}
    if fsdp:
        items, pending_b[order[0]] = _fsdp_items(chunk, plan, counter, order[0], ag)
        _segments(items, "bwd", chunk.slots[order[0]][0], pricer, by_kind, segs)
    for pos, i in enumerate(order):
        slot, items = chunk.slots[i]
        keys = pending_b.pop(i, ())
        if fsdp and pos + 1 < n:
            j = order[pos + 1]
            pre, pending_b[j] = _fsdp_items(chunk, plan, counter, j, ag)
            _segments(pre, "bwd", slot, pricer, by_kind, segs)
        if slot not in ("embedding", "head"):
            redo = L.recompute_items(items, plan.recompute, plan.recompute_modules)
            redo, keys = _waiting(tp_overlap(redo, plan, counter), keys)
            _segments(redo, "recompute", slot, pricer, by_kind, segs)
        bwd, _ = _waiting(tp_overlap(L.backward_items(items, plan.sequence_parallel), plan, counter), keys)
        _segments(bwd, "bwd", slot, pricer, by_kind, segs)
        if fsdp:
            rs, _ = _fsdp_items(chunk, plan, counter, i, CollectiveKind.REDUCE_SCATTER)
            _segments(rs, "bwd", slot, pricer, by_kind, segs)
    accum = grad_accum_bytes_per_param(plan) * (chunk.dense_params + chunk.expert_params)
    if accum:
        # One add per parameter tensor in Megatron's hook; a single memory-bound op here.
        numel = chunk.dense_params + chunk.expert_params
        op = Op("grad_accum", OpKind.ELEMENTWISE, numel, {"hbm": accum}, plan.grad_reduce_dtype,
                Unit.VECTOR, ElementwiseShape(numel))
        _segments([op], "bwd", "grad_accum", pricer, by_kind, segs)
    host_bound(segs, pricer, by_kind)
    return segs


# ---------------------------------------------------------------- emission


@dataclass
class Emitter:
    """Adds tasks to one rank's graph.

    A collective whose group holds no other simulated rank needs no rendezvous: it
    becomes a ``Delay`` of the network's time (same timing, far cheaper for the
    engine); the Delay objects of a template are built once and shared by all units.
    """

    graph: RankGraph
    plan: ParallelPlan
    groups: dict[str, tuple[int, ...]]
    simulated: frozenset[int]
    comm_time: Callable[[Collective], float]
    _solo: dict[tuple[int, ...], bool] = field(default_factory=dict)
    _delays: dict[int, Delay] = field(default_factory=dict)
    _solo_seg: dict[int, tuple[Delay, str]] = field(default_factory=dict)

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
        deps: list[int],
        label: str,
        tag: int,
        algorithm: str = "auto",
    ) -> int:
        coll = Collective(name, kind, group, nbytes, algorithm, tag)
        deps = [d for d in deps if d is not None]
        if self.solo(group):
            return self.graph.add(Delay(name, self.comm_time(coll), str(kind)), stream, deps, label)
        return self.graph.add(coll, stream, deps, label)

    def comm_segment(
        self, seg: Segment, stream: Stream, deps: list[int], tag: int, idx: int
    ) -> int:
        # Fast path: a solo collective of a template segment is the same Delay every
        # time the template runs (tens of thousands of times per step).
        solo = self._solo_seg.get(id(seg))
        if solo is not None:
            return self.graph.add(solo[0], stream, deps, solo[1])
        c = seg.comm
        label = c.group.split("_")[0] if c.group.startswith(("ep", "dp")) else c.group
        group = self.groups[c.group]
        if self.solo(group):
            coll = Collective(c.name, c.kind, group, c.nbytes, c.algorithm)
            work = Delay(f"{seg.phase}.{seg.slot}.{c.name}", self.comm_time(coll), str(c.kind))
            self._solo_seg[id(seg)] = (work, label)
            return self.graph.add(work, stream, deps, label)
        return self.collective(
            f"{seg.phase}.{seg.slot}.{c.name}.{idx}",
            c.kind,
            group,
            c.nbytes,
            stream,
            deps,
            label,
            tag,
            c.algorithm,
        )

    def unit(
        self, segs: list[Segment], first_deps: list[int], tag: int, split_ep: bool
    ) -> list[list[tuple[Segment, int]]]:
        """Blocks of a unit: runs of segments ending at an EP collective (when ``split_ep``)."""
        blocks: list[list[tuple[Segment, int]]] = [[]]
        for i, seg in enumerate(segs):
            blocks[-1].append((seg, i))
            nxt = segs[i + 1] if i + 1 < len(segs) else None
            if (
                split_ep and _is_ep(seg) and not (nxt is not None and _is_ep(nxt))
            ):  # hierarchical: 2 back to back
                blocks.append([])
        return [b for b in blocks if b]

    def run_blocks(
        self,
        units: list[tuple[list[list[tuple[Segment, int]]], int, list[int]]],
    ) -> list[int]:
        """Emit the blocks of one or two units round-robin; return each unit's last task.

        With two units, EP collectives go on the comm stream and only the same
        unit's next block waits for them, so the other unit's block fills the gap.
        """
        pending = [list(deps) for _, _, deps in units]
        last: list[int | None] = [None] * len(units)
        last_compute: list[int | None] = [None] * len(units)
        keyed: list[dict[int, int]] = [{} for _ in units]
        longest = max(len(blocks) for blocks, _, _ in units)
        for i in range(longest):
            for u, (blocks, tag, _) in enumerate(units):
                if i >= len(blocks):
                    continue
                for seg, idx in blocks[i]:
                    if seg.comm is None:
                        deps = pending[u] + [keyed[u][k] for k in seg.waits]
                        work = self._delays.get(id(seg))
                        if work is None:
                            work = self._delays[id(seg)] = Delay(
                                f"{seg.phase}.{seg.slot}", seg.seconds, seg.phase
                            )
                        tid = self.graph.add(work, Stream.COMPUTE, deps, seg.phase)
                        pending[u] = []
                        last_compute[u] = tid
                    elif seg.async_:
                        deps = (
                            [last_compute[u]] if last_compute[u] is not None else list(pending[u])
                        )
                        tid = self.comm_segment(seg, Stream.COMM, deps, tag, idx)
                        keyed[u][seg.key] = tid
                    elif len(units) > 1 and seg.comm.group.startswith("ep"):
                        deps = ([last[u]] if last[u] is not None else []) + pending[u]
                        tid = self.comm_segment(seg, Stream.COMM, deps, tag, idx)
                        pending[u] = [tid]
                    else:
                        tid = self.comm_segment(seg, Stream.COMPUTE, pending[u], tag, idx)
                        pending[u] = []
                        last_compute[u] = tid
                    last[u] = tid
        # a unit that ended on an async collective finishes when it does
        return [p[-1] if p else t for p, t in zip(pending, last, strict=True)]


def _is_ep(seg: Segment) -> bool:
    return seg.comm is not None and seg.comm.group.startswith("ep")


def _p2p_tag(plan: ParallelPlan, microbatch: int, vstage: int) -> int:
    return microbatch * plan.pp * plan.vpp + vstage


def lower_rank(
    rp: RankPlan,
    plan: ParallelPlan,
    layout: Layout,
    pricer: Pricer,
    by_kind: dict[str, list[float]],
    simulated: frozenset[int],
    comm_time: Callable[[Collective], float],
) -> tuple[RankGraph, float]:
    """The program of one rank for one training step."""
    g = RankGraph(rp.rank)
    em = Emitter(g, plan, rp.groups, simulated, comm_time)
    b = dtype_bytes(plan.dtype)
    gb = dtype_bytes(plan.grad_reduce_dtype)
    nv = plan.pp * plan.vpp
    # by_kind collects each template once: the caller scales by the micro-batch count.
    templates = {
        (c, k): unit_segments(ch, k, plan, pricer, by_kind)
        for c, ch in enumerate(rp.chunks)
        for k in ("F", "B")
    }
    # Parameter all-gather (ZeRO >= 1) of the previous step's optimizer: with overlap it
    # runs while this step starts; the first forward of a chunk waits for its own.
    param_ag: dict[int, list[int]] = {}
    if plan.zero >= 1 and plan.overlap_dp and plan.zero < 3:
        for c, ch in enumerate(rp.chunks):
            param_ag[c] = _param_gather(em, ch, c, b, Stream.COMM, [], tag=c)

    last_b_of_chunk = {}
    for i, unit in enumerate(rp.order):
        if unit.kind == "B":
            last_b_of_chunk[unit.chunk] = i
    seen_first_f: set[int] = set()
    dp_tasks: list[int] = []
    embed_deps: list[int] = []
    steps = steady_pairs(rp.order) if rp.merge_fb else [(u,) for u in rp.order]
    index = {id(u): i for i, u in enumerate(rp.order)}
    for step in steps:
        prepared = []
        for unit in step:
            ch = rp.chunks[unit.chunk]
            v = ch.vstage
            deps: list[int] = []
            tag = (unit.microbatch * plan.vpp + unit.chunk) * 2 + (unit.kind == "B")
            if unit.kind == "F" and unit.chunk not in seen_first_f:
                seen_first_f.add(unit.chunk)
                deps += param_ag.get(unit.chunk, [])
            src = v - 1 if unit.kind == "F" else v + 1
            if 0 <= src < nv:
                peer = layout.rank(_with_pp(layout, rp.rank, src % plan.pp))
                deps.append(
                    em.collective(
                        f"pp.{unit.kind}",
                        CollectiveKind.SEND_RECV,
                        (peer, rp.rank),
                        ch.input_bytes,
                        Stream.COMM,
                        [],
                        "pp",
                        _p2p_tag(plan, unit.microbatch, v),
                    )
                )
            blocks = em.unit(templates[(unit.chunk, unit.kind)], deps, tag, len(step) > 1)
            prepared.append((blocks, tag, deps))
        lasts = em.run_blocks(prepared)
        for unit, last in zip(step, lasts, strict=True):
            ch = rp.chunks[unit.chunk]
            v = ch.vstage
            dst = v + 1 if unit.kind == "F" else v - 1
            if 0 <= dst < nv:
                peer = layout.rank(_with_pp(layout, rp.rank, dst % plan.pp))
                em.collective(
                    f"pp.{unit.kind}",
                    CollectiveKind.SEND_RECV,
                    (rp.rank, peer),
                    ch.input_bytes,
                    Stream.COPY,
                    [last],
                    "pp",
                    _p2p_tag(plan, unit.microbatch, dst),
                )
            if unit.kind == "B" and plan.zero == 3:
                dp_tasks.append(last)  # the unit ends with its last slot's reduce-scatter
            elif unit.kind == "B" and index[id(unit)] == last_b_of_chunk[unit.chunk]:
                stream = Stream.COMM if plan.overlap_dp else Stream.COMPUTE
                dp_tasks += _grad_reduce(
                    em,
                    ch,
                    unit.chunk,
                    gb,
                    stream,
                    [last],
                    tag=0,
                )
            if (
                unit.kind == "B"
                and rp.shared_embedding
                and plan.pp > 1
                and ch.vstage in (0, nv - 1)
                and index[id(unit)] == last_b_of_chunk[unit.chunk]
            ):
                embed_deps.append(last)
    if embed_deps:
        # After the whole schedule (Megatron's finalize_model_grads): issued earlier on the
        # in-order comm stream it would hold back the pipeline receives behind it.
        stream = Stream.COMM if plan.overlap_dp else Stream.COMPUTE
        dp_tasks.append(
            em.collective(
                "dp.embed_grad",
                CollectiveKind.ALL_REDUCE,
                rp.groups["embed"],
                rp.shared_embedding * gb,
                stream,
                embed_deps,
                "dp",
                0,
            )
        )
    # Optimizer step on the local shard, then (without overlap) the parameter all-gather.
    params = sum(
        _shard(plan, ch.dense_params, len(rp.groups["dp_dense"]))
        + _shard(plan, ch.expert_params, len(rp.groups["dp_expert"]))
        for ch in rp.chunks
    )
    deps = dp_tasks
    t_prep = 0.0
    gbytes = dtype_bytes(plan.grad_reduce_dtype)
    if plan.dtype == "fp16":
        # Dynamic loss scaling (Micikevicius et al. 2018; Megatron's
        # _unscale_main_grads_and_check_for_nan): scale the main grads by 1/S and look for
        # inf/NaN (read + write), then agree on "found inf" across all ranks.
        unscale = Op("grad_unscale", OpKind.ELEMENTWISE, 2.0 * params,
                     {"hbm": 2.0 * gbytes * params}, "fp32", Unit.VECTOR, ElementwiseShape(params))
        t = pricer.time(unscale)
        t_prep += t
        deps = [g.add(Delay("grad_unscale", t, "optimizer"), Stream.COMPUTE, deps, "optimizer")]
        deps = [em.collective("dp.found_inf", CollectiveKind.ALL_REDUCE, rp.groups["world"],
                              4.0, Stream.COMPUTE, deps, "dp", 0)]
    # Gradient clipping (Megatron clip_grad_norm_fp32, on by default: clip-grad 1.0): the
    # L2 norm of the local grad shard, then an all-reduce of one fp32 scalar over every
    # rank holding a distinct shard (model-parallel x distributed-optimizer ranks).
    norm = Op("grad_norm", OpKind.REDUCTION, NORM_FLOPS_PER_PARAM * params,
              {"hbm": gbytes * params}, "fp32", Unit.VECTOR, ElementwiseShape(params))
    t = pricer.time(norm)
    t_prep += t
    deps = [g.add(Delay("grad_norm", t, "optimizer"), Stream.COMPUTE, deps, "optimizer")]
    deps = [em.collective("dp.grad_norm", CollectiveKind.ALL_REDUCE, rp.groups["world"], 4.0,
                          Stream.COMPUTE, deps, "dp", 0)]
    adam = Op(
        "adam",
        OpKind.ELEMENTWISE,
        ADAM_FLOPS_PER_PARAM * params,
        {"hbm": adam_bytes_per_param(plan) * params},
        "fp32",
        Unit.VECTOR,
        ElementwiseShape(params),
    )
    t_adam = pricer.time(adam)
    opt = g.add(Delay("optimizer", t_adam, "optimizer"), Stream.COMPUTE, deps, "optimizer")
    if is_low_precision(plan.dtype):
        # The updated weights are cast to the recipe's format once per step and reused by
        # every micro-batch (TransformerEngine caches the FP8 weights from the first
        # micro-batch: Megatron's is_first_microbatch); every local weight, not the shard.
        local = sum(ch.dense_params + ch.expert_params for ch in rp.chunks)
        t = pricer.time(L.quantize_op("weights", local, plan.dtype))
        t_adam += t
        opt = g.add(Delay("weight_cast", t, "optimizer"), Stream.COMPUTE, [opt], "optimizer")
    t_adam += t_prep
    if plan.zero in (1, 2) and not plan.overlap_dp:
        for c, ch in enumerate(rp.chunks):
            _param_gather(em, ch, c, b, Stream.COMPUTE, [opt], tag=c)
    return g, t_adam


def _shard(plan: ParallelPlan, params: float, dp: int) -> float:
    """Parameters whose optimizer step this rank runs (ZeRO >= 1 shards them over DP)."""
    return params / dp if plan.zero >= 1 else params


def _with_pp(layout: Layout, rank: int, stage: int) -> Coord:
    return replace(layout.coord(rank), pp=stage)


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
