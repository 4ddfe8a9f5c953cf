"""What one forward (F) or backward (B) unit of a model chunk runs, as unpriced pieces.

A unit is a list of ``Piece`` s in order: runs of consecutive ops that the engine
schedules as one task (an ``ir.Segment``; the engine then handles tens of thousands of
tasks instead of millions), and collectives on the plan's named groups. Consecutive ops
of one phase merge into one segment unless an op waits for an asynchronous collective.
Nothing here has a duration: the pricing pass (``sim.cost.pricing``) prices each segment
from its ops, and the same pieces serve every micro-batch of the chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TypeGuard

from xpusim.sim import ops
from xpusim.sim.ir import (
    CollectiveKind,
    ElementwiseShape,
    GemmShape,
    Op,
    OpKind,
    Segment,
    Unit,
    Weight,
    dtype_bytes,
)
from xpusim.sim.parallel import ParallelPlan, microbatches
from xpusim.sim.training import eager, fsdp1
from xpusim.sim.training import layers as L
from xpusim.sim.training.chunks import Chunk
from xpusim.sim.training.framework import framework_profile, moe_dispatch_syncs
from xpusim.sim.training.lowprec import is_forward_cast, is_scale_swizzle
from xpusim.sim.training.nvfp4 import param_dtype
from xpusim.sim.training.te_moe_host import segment_extra_host_s

# Item tags of an overlapped unit (besides ops and collectives):
# ("async", Comm, key): a collective on the comm stream, named by key;
# ("wait", Op, key or keys): an op that waits for those collectives;
# ("join", key): the next op waits for that collective.
Tagged = tuple
FSDP_KEY = 1 << 20  # keys of the ZeRO-3 per-slot collectives (above tp_overlap's)


@dataclass
class Piece:
    """One step of a unit: a run of ops (``segment``, built by ``unit_pieces``) or one
    collective (``comm``).

    ``async_`` collectives run on the comm stream after the unit's previous compute;
    ``waits`` names the async collectives (by ``key``) a compute piece needs.
    """

    phase: str  # "fwd" | "bwd" | "recompute"
    slot: str
    ops: list[Op] = field(default_factory=list)
    comm: L.Comm | None = None
    async_: bool = False
    key: int = -1
    waits: tuple[int, ...] = ()
    segment: Segment | None = None
    # A run of list-form collective copies: identical runs share one segment (below).
    list_copies: bool = False


# Frameworks whose linear layers add the weight gradient into the main gradient inside
# the GEMM when ``grad_accum_fusion`` is on: Megatron-LM / Megatron-Core and the stacks
# built on it (NeMo, Megatron-Bridge, MindSpeed), run eager or with CUDA graphs.
# DeepSpeed, torchtitan and the flash-attn training scripts keep autograd's gradients.
MAIN_GRAD_FRAMEWORKS = ("eager", "cuda-graphs")


def main_grad_dtype(plan: ParallelPlan) -> str:
    """The dtype the weight-gradient GEMMs accumulate into (``backward._wgrad``), or ""
    where they write a fresh gradient: Megatron-Core's ``gradient_accumulation_fusion``
    adds each micro-batch's weight gradient into ``main_grad`` (fp32, or bf16 with
    ``grad_reduce_in_fp32 = False``) in the GEMM's epilogue."""
    if plan.grad_accum_fusion and plan.framework in MAIN_GRAD_FRAMEWORKS:
        return plan.grad_reduce_dtype
    return ""


def grad_accum_bytes_per_param(plan: ParallelPlan) -> float:
    """Unfused gradient accumulation (Megatron-LM 2021: ``main_grad.add_(grad)`` in a
    hook after each micro-batch's backward): read the 16-bit gradient and the fp32 main
    gradient, write the fp32 main gradient. 0 with ``grad_accum_fusion`` (the wgrad GEMM
    accumulates in its epilogue) or when the model already computes in the grad dtype."""
    if plan.grad_accum_fusion or plan.dtype == plan.grad_reduce_dtype:
        return 0.0
    if plan.zero == 3 and framework_profile(plan.framework).fsdp1_grad_path:
        return 0.0  # FSDP1 accumulates into its saved shard (fsdp1.grad_path_bytes)
    gb = dtype_bytes(plan.grad_reduce_dtype)
    return dtype_bytes(param_dtype(plan.dtype)) + 2 * gb


def _split_gemm(op: Op, parts: int) -> Op:
    s = op.shape
    assert isinstance(s, GemmShape)
    if s.accumulate:  # a weight gradient added into the main gradient stays one
        return ops.gemm(op.name, s.m / parts, s.n, s.k, op.dtype, s.batch,
                        out_dtype=s.accumulate, role=op.role, accumulate=True)
    return ops.gemm(op.name, s.m / parts, s.n, s.k, op.dtype, s.batch, role=op.role)


def _is_tp(it: object, kind: CollectiveKind) -> TypeGuard[L.Comm]:
    return isinstance(it, L.Comm) and it.group == "tp" and it.kind == kind


def _is_gemm(it: object) -> TypeGuard[Op]:
    return isinstance(it, Op) and it.kind == OpKind.GEMM


def _chunked(it: L.Comm, c: int, counter: list[int]) -> list[Tagged]:
    """A TP collective cut into ``c`` asynchronous pieces, each with a new key."""
    out: list[Tagged] = []
    for j in range(c):
        counter[0] += 1
        out.append(("async", replace(it, name=f"{it.name}#{j}", nbytes=it.nbytes / c), counter[0]))
    return out


def _is_operand_prep(it: object) -> bool:
    """A low-precision cast or scale swizzle of a GEMM operand (``sim.training.lowprec``)."""
    return isinstance(it, Op) and (is_forward_cast(it) or is_scale_swizzle(it))


def _prep_then_gemm(items: list, i: int) -> int:
    """Index of the GEMM that ``items[i:]`` reaches through operand casts / swizzles
    only, or -1."""
    j = i
    while j < len(items) and _is_operand_prep(items[j]):
        j += 1
    return j if j < len(items) and _is_gemm(items[j]) else -1


def _bulk_backward(out: list, rs: L.Comm, ag: L.Comm, counter: list[int]) -> bool:
    """TransformerEngine 1.x userbuffers' bulk overlaps in a column-parallel layer's
    backward (``ub_bulk_dgrad`` / ``ub_bulk_wgrad``, method ``bulk`` for qkv/fc1 dgrad and
    wgrad in NeMo-Framework-Launcher's ``conf/training/tp_overlap/ub_cfg_*.yaml``): the
    re-gather of the saved input runs while the data-gradient GEMM computes
    (``BULK_OVERLAP_AG``), and the data gradient's reduce-scatter while the
    weight-gradient GEMM computes (``BULK_OVERLAP_RS``; TE ``module/linear.py``,
    ``layernorm_linear.py`` backward). ``out`` ends with [operand prep, dgrad, operand
    prep, wgrad]; rewritten in place. False (nothing changed) when it does not."""
    if not out or not _is_gemm(out[-1]):
        return False
    d = len(out) - 2
    while d >= 0 and _is_operand_prep(out[d]):
        d -= 1
    if d < 0 or not _is_gemm(out[d]):
        return False
    p = d
    while p > 0 and _is_operand_prep(out[p - 1]):
        p -= 1
    wgrad = out.pop()
    counter[0] += 1
    ag_key = counter[0]
    counter[0] += 1
    rs_key = counter[0]
    out.insert(d + 1, ("async", replace(rs, name=f"{rs.name}#bulk"), rs_key))
    out.insert(p, ("async", replace(ag, name=f"{ag.name}#bulk"), ag_key))
    out += [("wait", wgrad, ag_key), ("join", rs_key)]
    return True


def _async_backward(items: list, counter: list[int]) -> list:
    """Without userbuffers, a column-parallel layer's backward still overlaps its two
    sequence-parallel collectives with its GEMMs, through async NCCL calls: the re-gather
    of the saved input is launched before the data-gradient GEMM and waited for after it,
    and the data gradient's reduce-scatter runs while the weight-gradient GEMM computes
    (TransformerEngine 1.x ``module/linear.py`` / ``layernorm_linear.py`` /
    ``layernorm_mlp.py`` backward: ``gather_along_first_dim(..., async_op=ctx.requires_dgrad)``,
    "# Overlap dgrad-RS/AR with wgrad": ``reduce_scatter_along_first_dim(dgrad, tp_group,
    async_op=True)``; Megatron-Core ``LinearWithGradAccumulationAndAsyncCommunication``
    likewise). The same dependency structure as the userbuffers' bulk overlaps
    (``_bulk_backward``), on NCCL's kernels; the forward's gathers and reduce-scatters
    stay serial with their GEMMs."""
    out: list = []
    i = 0
    while i < len(items):
        it = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        if (_is_tp(it, CollectiveKind.REDUCE_SCATTER) and _is_tp(nxt, CollectiveKind.ALL_GATHER)
                and nxt.name.endswith("_regather") and _bulk_backward(out, it, nxt, counter)):
            i += 2
            continue
        out.append(it)
        i += 1
    return out


def _te_userbuffers(plan: ParallelPlan) -> bool:
    """Whether the TP overlap is TransformerEngine's userbuffers (Megatron-Core / NeMo /
    Megatron-Bridge ``tp_comm_overlap``; the eager and CUDA-graph frameworks) rather than
    another stack's (torchtitan's async TP keeps the plain chunking)."""
    return plan.framework in MAIN_GRAD_FRAMEWORKS


def tp_overlap(items: list, plan: ParallelPlan, counter: list[int]) -> list:
    """Chunk TP collectives with their adjacent GEMM (Megatron ``tp_comm_overlap``).

    An all-gather feeding a GEMM is cut into ``c`` pieces along the tokens; GEMM piece
    j starts when gather piece j lands. A GEMM feeding a reduce-scatter is cut the
    same way and piece j's reduce-scatter runs while piece j+1 computes. Only with
    sequence parallelism (all-gather / reduce-scatter; an all-reduce is not chunked).

    With TransformerEngine's userbuffers (``_te_userbuffers``) two more things hold.
    A low-precision cast (or scale swizzle) between the gather and its GEMM runs before
    the gather: TE 1.x casts the norm output / the output gradient to FP8 on the local
    shard and gathers the FP8 tensor into the userbuffer (``layernorm_linear.py``
    ``_apply_normalization(..., fp8_out)`` then ``SPLIT_PIPELINED_AG_P2P``;
    ``base.py`` ``grad_output_preprocess``: cast, then gather), so the ring-exchange
    gather (qkv/fc1 fprop, proj/fc2 dgrad) still overlaps the GEMM. And a column-parallel
    layer's backward re-gather and reduce-scatter run as bulk overlaps (``_bulk_backward``).
    """
    if not (plan.sequence_parallel and plan.tp > 1):
        return items
    te = _te_userbuffers(plan)
    if not plan.overlap_tp:
        return _async_backward(items, counter) if te else items
    c = plan.tp_overlap_chunks
    out: list = []
    i = 0
    while i < len(items):
        it = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        g = _prep_then_gemm(items, i + 1) if te else (i + 1 if _is_gemm(nxt) else -1)
        if _is_tp(it, CollectiveKind.ALL_GATHER) and g > 0:
            out += items[i + 1:g]  # the operand casts run on the shard, before the gather
            gathers = _chunked(it, c, counter)
            out += gathers
            out += [("wait", _split_gemm(items[g], c), x[2]) for x in gathers]
            i = g + 1
            continue
        if (te and _is_tp(it, CollectiveKind.REDUCE_SCATTER)
                and _is_tp(nxt, CollectiveKind.ALL_GATHER) and nxt.name.endswith("_regather")
                and _bulk_backward(out, it, nxt, counter)):
            i += 2
            continue
        if _is_tp(it, CollectiveKind.REDUCE_SCATTER) and out and _is_gemm(out[-1]):
            gemm = out.pop()
            for piece in _chunked(it, c, counter):
                out.append(_split_gemm(gemm, c))
                out.append(piece)
            out.append(("join", counter[0]))
            i += 1
            continue
        out.append(it)
        i += 1
    return out


def _add_op(out: list[Piece], phase: str, slot: str, op: Op, waits: tuple[int, ...]) -> None:
    """Append ``op``: merged into the last piece when that is compute of the same phase
    (and not a shared, already frozen segment) and the op waits for nothing, else the
    start of a new piece."""
    last = out[-1] if out else None
    if (last is not None and last.comm is None and last.segment is None
            and last.phase == phase and not waits):
        last.ops.append(op)
    else:
        out.append(Piece(phase, slot, [op], waits=waits))


LIST_COPIES = "zero3_list_copies"  # the segment name of a run of list-form copies


def _share_copy_segments(pieces: list[Piece]) -> None:
    """One segment object per distinct run of list copies in a unit (same op, same count):
    priced once however many slots repeat it (tens of thousands of ops each)."""
    shared: dict[tuple, Segment] = {}
    for p in pieces:
        seg = p.segment
        if p.list_copies and seg is not None:
            key = (seg.name, seg.ops[0].cache_key(), len(seg.ops))
            p.segment = shared.setdefault(key, seg)


def add_items(items: list, phase: str, slot: str, out: list[Piece]) -> list[Piece]:
    """Append the pieces of ``items`` (ops, collectives and overlap tags) to ``out``."""
    join: tuple[int, ...] = ()
    for it in items:
        if isinstance(it, L.Comm):
            out.append(Piece(phase, slot, comm=it))
            continue
        if isinstance(it, Op):
            op, waits = it, ()
        elif it[0] == "async":
            out.append(Piece(phase, slot, comm=it[1], async_=True, key=it[2]))
            continue
        elif it[0] == "join":
            join = (it[1],)
            continue
        elif it[0] == "list_copies":
            copies = tuple(it[1])
            segment = Segment(f"{phase}.{LIST_COPIES}", copies, phase)
            out.append(Piece(phase, slot, list(copies), segment=segment, list_copies=True))
            continue
        else:  # "wait"
            op, waits = it[1], (it[2] if isinstance(it[2], tuple) else (it[2],))
        _add_op(out, phase, slot, op, waits + join)
        join = ()
    return out


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


def param_tensors(items: list) -> int:
    """Parameter tensors of a slot: a weight and a bias for every op that reads a
    weight (GPT/OPT Linear layers have biases) and for every norm (LayerNorm's gain
    and bias). An upper bound for bias-free models (Llama), where it doubles the count."""
    n = 0
    for it in items:
        if isinstance(it, Op) and (it.kind == OpKind.NORM or it.role.weight != Weight.NONE):
            n += 2
    return max(n, 1)


def list_copies(comms: list[L.Comm], members: int, tensors: int) -> list[Op]:
    """The copies PyTorch's NCCL process group makes for list-form collectives: one per
    group member and parameter tensor, each moving its 1/members share of the tensor
    (read + write). Their device time is small; their count (each a launched op) is the
    cost: ``members x tensors x host_op_s`` on the host."""
    total = sum(c.nbytes for c in comms)
    count = members * tensors
    nbytes = 2 * total / count
    op = Op("zero3.list_copy", OpKind.ELEMENTWISE, nbytes / 2, {"hbm": nbytes}, "fp16",
            Unit.VECTOR, ElementwiseShape(nbytes / 2))
    return [op] * count


def _per_tensor(comms: list[L.Comm], tensors: int) -> list[L.Comm]:
    """Each collective cut into one per parameter tensor (equal shares: the bytes are
    the same, the per-collective latency is paid ``tensors`` times)."""
    return [
        replace(c, name=f"{c.name}#{j}", nbytes=c.nbytes / tensors)
        for c in comms
        for j in range(tensors)
    ]


def _list_fsdp_items(
    chunk: Chunk, plan: ParallelPlan, i: int, kind: CollectiveKind, comms: list[L.Comm]
) -> list:
    """DeepSpeed 0.3's ZeRO-3 (``framework.FRAMEWORKS['deepspeed-0.3']``): per parameter
    tensor a blocking collective (a device synchronize precedes each gather, so nothing
    overlaps) with ``dp·cp`` copies after a gather, before a reduce-scatter."""
    tensors = param_tensors(chunk.slots[i][1])
    per = _per_tensor(comms, tensors)
    copies = list_copies(comms, plan.dp * plan.cp, tensors)
    if kind == CollectiveKind.ALL_GATHER:
        return [*per, ("list_copies", copies)]
    return [("list_copies", copies), *per]


def _fsdp_items(
    chunk: Chunk, plan: ParallelPlan, counter: list[int], i: int, kind: CollectiveKind
) -> tuple[list, tuple[int, ...]]:
    """Slot ``i``'s ZeRO-3 collectives as items: asynchronous (comm stream, keyed) when
    the plan overlaps DP traffic, else blocking on the compute stream; DeepSpeed 0.3's
    list collectives when the framework says so (blocking, per tensor, with copies)."""
    nbytes = dtype_bytes(param_dtype(plan.dtype) if kind == CollectiveKind.ALL_GATHER
                         else plan.grad_reduce_dtype)
    comms = fsdp_comms(chunk, i, kind, nbytes)
    if framework_profile(plan.framework).zero3_list_collectives:
        return _list_fsdp_items(chunk, plan, i, kind, comms), ()
    if not plan.overlap_dp:
        return comms, ()
    keys = []
    out: list = []
    for c in comms:
        counter[1] += 1
        keys.append(FSDP_KEY + counter[1])
        out.append(("async", c, keys[-1]))
    return out, tuple(keys)


def recompute_for_slot(items: list, plan: ParallelPlan, slot: str) -> list:
    """The forward items re-run before slot ``slot``'s backward: the plan's policy for
    that slot (``--recompute-every`` leaves some layers without one), or with
    --recompute selective torchtitan's op-level policy when the framework runs it."""
    policy = plan.layer_recompute(slot)
    op_level = framework_profile(plan.framework).selective == "torchtitan-op"
    if policy == "selective" and op_level:
        return eager.op_sac_recompute(items, plan.tp)
    return L.recompute_items(items, policy, plan.recompute_modules)


def _copy_out(chunk: Chunk, plan: ParallelPlan, i: int, keys: tuple[int, ...]) -> tuple[list, tuple[int, ...]]:
    """FSDP2's all-gather copy-out of slot ``i`` (``FRAMEWORKS['torchtitan-eager']``):
    ``foreach_all_gather_copy_out`` splits the gathered flat buffer into the unsharded
    parameters on the compute stream once the gather is done, reading and writing every
    parameter of the unit. Returns the op (waiting for ``keys``) and the keys left."""
    if not framework_profile(plan.framework).fsdp2_copy_out:
        return [], keys
    numel = sum(chunk.slot_params[i])
    nbytes = 2.0 * numel * dtype_bytes(param_dtype(plan.dtype))
    op = Op("fsdp2.copy_out", OpKind.ELEMENTWISE, numel, {"hbm": nbytes}, plan.dtype,
            Unit.VECTOR, ElementwiseShape(numel))
    return _waiting([op], keys)


def _fsdp1_grad_passes(chunk: Chunk, plan: ParallelPlan, i: int) -> list[Op]:
    """FSDP1's post-backward passes over slot ``i``'s gradient (``fsdp1.grad_path_bytes``:
    cast to the reduce dtype, predivide, and on the shard postdivide, cast back and
    accumulate), one memory-bound op before its reduce-scatter; none for other
    frameworks. Dense parameters shard over cp x dp ranks, expert ones over cp x dp / ep."""
    if not framework_profile(plan.framework).fsdp1_grad_path:
        return []
    grad_b = 4.0 if plan.dtype == "fp32" else 2.0  # autograd's gradient: the compute dtype
    reduce_b = dtype_bytes(plan.grad_reduce_dtype)
    m = microbatches(plan)
    d, e = chunk.slot_params[i]
    dense_world = plan.cp * plan.dp
    expert_world = max(dense_world // plan.ep, 1)
    nbytes = (fsdp1.grad_path_bytes(d, dense_world, grad_b, reduce_b, m)
              + fsdp1.grad_path_bytes(e, expert_world, grad_b, reduce_b, m))
    if nbytes <= 0:
        return []
    numel = d + e
    return [Op("fsdp1.grad_passes", OpKind.ELEMENTWISE, numel, {"hbm": nbytes},
               plan.grad_reduce_dtype, Unit.VECTOR, ElementwiseShape(numel))]


def _waiting(items: list, keys: tuple[int, ...]) -> tuple[list, tuple[int, ...]]:
    """``items`` with their first compute op waiting for the collectives ``keys``, and
    the keys still to wait for (all of them when ``items`` has no compute op)."""
    if not keys:
        return items, ()
    out = list(items)
    for j, it in enumerate(out):
        if isinstance(it, Op):
            out[j] = ("wait", it, keys)
            return out, ()
    return out, keys


def _forward(chunk: Chunk, plan: ParallelPlan, fsdp: bool, pieces: list[Piece]) -> None:
    counter = [0, 0]
    ag = CollectiveKind.ALL_GATHER
    n = len(chunk.slots)
    pending: dict[int, tuple[int, ...]] = {}
    if fsdp:
        items, pending[0] = _fsdp_items(chunk, plan, counter, 0, ag)
        add_items(items, "fwd", chunk.slots[0][0], pieces)
    for i, (slot, items) in enumerate(chunk.slots):
        if fsdp and i + 1 < n:  # prefetch the next slot while this one computes
            pre, pending[i + 1] = _fsdp_items(chunk, plan, counter, i + 1, ag)
            add_items(pre, "fwd", slot, pieces)
        keys = pending.pop(i, ())
        if fsdp:
            copy, keys = _copy_out(chunk, plan, i, keys)
            add_items(copy, "fwd", slot, pieces)
        items, _ = _waiting(tp_overlap(items, plan, counter), keys)
        add_items(items, "fwd", slot, pieces)


def _backward(chunk: Chunk, plan: ParallelPlan, fsdp: bool, pieces: list[Piece]) -> None:
    counter = [0, 0]
    ag = CollectiveKind.ALL_GATHER
    n = len(chunk.slots)
    order = list(reversed(range(n)))
    pending: dict[int, tuple[int, ...]] = {}
    if fsdp:
        items, pending[order[0]] = _fsdp_items(chunk, plan, counter, order[0], ag)
        add_items(items, "bwd", chunk.slots[order[0]][0], pieces)
    for pos, i in enumerate(order):
        slot, items = chunk.slots[i]
        keys = pending.pop(i, ())
        if fsdp and pos + 1 < n:
            j = order[pos + 1]
            pre, pending[j] = _fsdp_items(chunk, plan, counter, j, ag)
            add_items(pre, "bwd", slot, pieces)
        if fsdp:
            copy, keys = _copy_out(chunk, plan, i, keys)
            add_items(copy, "bwd", slot, pieces)
        if slot not in ("embedding", "head"):
            redo = recompute_for_slot(items, plan, slot)
            redo, keys = _waiting(tp_overlap(redo, plan, counter), keys)
            add_items(redo, "recompute", slot, pieces)
        back = tp_overlap(L.backward_items(items, plan.sequence_parallel, main_grad_dtype(plan)),
                          plan, counter)
        add_items(_waiting(back, keys)[0], "bwd", slot, pieces)
        if fsdp:
            add_items(_fsdp1_grad_passes(chunk, plan, i), "bwd", slot, pieces)
            rs, _ = _fsdp_items(chunk, plan, counter, i, CollectiveKind.REDUCE_SCATTER)
            add_items(rs, "bwd", slot, pieces)
    accum = grad_accum_bytes_per_param(plan) * (chunk.dense_params + chunk.expert_params)
    if accum:
        # One add per parameter tensor in Megatron's hook; a single memory-bound op here.
        numel = chunk.dense_params + chunk.expert_params
        op = Op("grad_accum", OpKind.ELEMENTWISE, numel, {"hbm": accum}, plan.grad_reduce_dtype,
                Unit.VECTOR, ElementwiseShape(numel))
        add_items([op], "bwd", "grad_accum", pieces)


def unit_pieces(chunk: Chunk, kind: str, plan: ParallelPlan) -> list[Piece]:
    """The pieces of one forward (F) or backward (B) of a chunk, each run of ops frozen
    into its ``ir.Segment``.

    ZeRO-3 (FSDP) gathers each slot's parameters just before it runs and, in backward,
    reduce-scatters its gradients as soon as its backward ends (torchtitan applies
    ``fully_shard`` per transformer block; Megatron-FSDP and DeepSpeed ZeRO-3 also
    fetch per module). With ``overlap_dp`` the collectives run on the comm stream and
    slot i+1's all-gather is issued before slot i computes (FSDP2's implicit forward
    prefetch and explicit backward prefetch of one block; Zhao et al., VLDB 2023 s3.3),
    so only the first gather and the last reduce-scatter are necessarily exposed.
    """
    pieces: list[Piece] = []
    fsdp = plan.zero == 3 and bool(chunk.slot_params)
    if kind == "F":
        _forward(chunk, plan, fsdp, pieces)
    else:
        _backward(chunk, plan, fsdp, pieces)
    _share_copy_segments(pieces)
    prev: Segment | None = None  # the host runs ahead across the unit's runs (pricing)
    for p in pieces:
        if p.comm is None and p.segment is None:
            syncs = moe_dispatch_syncs(p.ops, p.phase, plan.framework)
            extra = segment_extra_host_s(p.ops, p.phase, plan.framework)
            p.segment = Segment(f"{p.phase}.{p.slot}", tuple(p.ops), p.phase,
                                host_syncs=syncs, host_extra_s=extra, after=prev)
        if p.segment is not None:
            prev = p.segment
    return pieces
