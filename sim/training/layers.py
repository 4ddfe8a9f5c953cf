"""Forward, backward and recompute items of one pipeline slot on one rank.

The forward comes from ``xpusim.sim.workloads.transformer`` (the FLOPs and bytes shared
with inference); this module adds what training needs:

* which tensor each op keeps for its backward (``saved_bytes``) and which module
  produced that tensor (``saved_by``), so a recompute policy can drop it;
* the module each op's *output* belongs to (``module``): recompute re-runs the ops
  whose output module is recomputed;
* the backward, derived op by op: a GEMM C = A.B becomes dA = dC.B^T (m x k, over n)
  and dB = A^T.dC (k x n, over m) — 2x forward FLOPs; fused attention backward is
  2.5x its forward FLOPs (FlashAttention-2 runs 5 matmuls in backward vs 2 forward)
  and reads Q, K, V, O, dO while writing dQ, dK, dV (~2x forward bytes);
  elementwise/norm/softmax backward moves ~2x the bytes and FLOPs; permutes are
  permuted back. Collectives are mirrored: all-reduce stays, all-gather <->
  reduce-scatter swap, all-to-all stays (dispatch <-> combine).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

from xpusim.sim import ops
from xpusim.sim.ir import (
    MAIN_MEMORY,
    CollectiveKind,
    Op,
    OpKind,
    Unit,
    dtype_bytes,
    is_low_precision,
)
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.workloads.transformer import (
    CommNeed,
    MoELoad,
    Sharding,
    StepShape,
    attention_ops,
    embedding_forward,
    ffn_items,
    lm_head_forward,
    uniform_moe_load,
)


@dataclass(frozen=True)
class Comp:
    """An op plus what training needs to know about it."""

    op: Op
    module: str  # module of the op's output (recompute re-runs ops of recomputed modules)
    saved_bytes: float = 0.0  # bytes kept for this op's backward
    saved_by: str = "checkpoint"  # module that produced the saved tensor; "checkpoint": always kept
    # Further tensors kept for the backward, each with the module whose recompute drops
    # it: (bytes, module). Unfused attention's scores ("core_attn") and dropout masks.
    extra_saved: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True)
class Comm:
    """A collective on a named group of the plan ("tp", "ep", "ep_inter", "ep_intra", "cp")."""

    name: str
    kind: CollectiveKind
    nbytes: float
    group: str
    module: str = "out"
    algorithm: str = "auto"


Item = Comp | Comm

# Output module of each forward op (by name). "out": never recomputed selectively.
_OUTPUT_MODULE = {
    "attn_norm": "norm",
    "ffn_norm": "norm",
    "attn_sp_gather": "norm",
    "ffn_sp_gather": "norm",
    "q_a_proj": "attn",
    "kv_a_proj": "attn",
    "q_b_proj": "attn",
    "kv_b_proj": "attn",
    "qkv_proj": "attn",
    "q_proj": "attn",
    "attention": "attn",
    "cp_kv_gather": "attn",
    "router": "router",
    "topk": "router",
    "moe_dispatch": "experts",
    "permute": "experts",
    "experts_up": "experts",
    "experts_act": "act",
    "mlp_up": "mlp",
    "mlp_act": "act",
    "shared_expert_up": "mlp",
    "shared_expert_act": "act",
}


@dataclass(frozen=True)
class SlotContext:
    """What the plan fixes for one rank's slots: tokens, sharding and routing."""

    spec: ModelSpec
    plan: ParallelPlan
    tokens: float  # tokens of one micro-batch on this rank: mbs * seq / cp
    hot: dict[
        int, float
    ]  # layer -> this rank's expert load / mean (the hottest rank's when representative)
    hot_comm: dict[
        int, float
    ]  # layer -> the hottest EP rank's load / mean: the all-to-all waits for it
    ep_spans_nodes: bool

    @property
    def b(self) -> float:
        """Bytes per element of activations (and of the collectives that move them)."""
        return dtype_bytes(act_dtype(self.plan))


def act_dtype(plan: ParallelPlan) -> str:
    """The dtype of activations, norms, attention and the collectives that carry them.

    A low-precision recipe (``plan.dtype`` fp8, mxfp8, hif8) casts only the inputs of
    the linear layers' GEMMs: TransformerEngine's FP8 training keeps activations,
    normalisations, softmax/attention and communication in bf16 (NVIDIA TransformerEngine
    docs, "Using FP8 with Transformer Engine"; Micikevicius et al. arXiv:2209.05433 s4),
    as do the NeMo/Megatron FP8 runs of the validation corpus.
    """
    return "bf16" if is_low_precision(plan.dtype) else plan.dtype


# GEMMs a low-precision recipe leaves in 16 bits: Megatron's output layer and the MoE
# router are not TransformerEngine linears (DeepSeek-V3 report s3.3.1 likewise keeps the
# embedding, output head, gating and attention in higher precision).
_HIGH_PRECISION_GEMMS = ("lm_head", "router")


def quantize_op(name: str, numel: float, fmt: str, src: str = "bf16") -> Op:
    """The cast of a ``src`` tensor to ``fmt`` before a low-precision GEMM: a memory-bound
    vector pass that reads ``src``, finds the scale (amax over the tensor, or per block for
    MX/NVFP4) and writes the ``fmt`` elements with their block scales (~3 FLOPs/element:
    abs-max, scale, convert). TransformerEngine fuses it with the producer only where a
    fused norm/activation kernel exists; it is priced here as its own pass."""
    nbytes = numel * (dtype_bytes(src) + dtype_bytes(fmt))
    return Op(f"{name}_quant", OpKind.ELEMENTWISE, 3.0 * numel,
              MappingProxyType({MAIN_MEMORY: nbytes}), src, Unit.VECTOR,
              MappingProxyType({"numel": numel}))


def low_precision_gemms(raw: list, fmt: str) -> list:
    """Rewrite the 16-bit GEMMs of builder output for a low-precision recipe ``fmt``: each
    becomes a cast of its activation input plus the GEMM on ``fmt`` operands (priced at the
    device's ``fmt`` peak; output written in bf16). Weights are cast once per step (see
    ``xpusim.sim.training.lowering``), so only the activation cast is per micro-batch."""
    if not is_low_precision(fmt):
        return raw
    out: list = []
    for item in raw:
        if (isinstance(item, Op) and item.kind == OpKind.GEMM
                and item.name not in _HIGH_PRECISION_GEMMS):
            s = item.shape
            batch = s.get("batch", 1)
            out.append(quantize_op(item.name, s["m"] * s["k"] * batch, fmt))
            out.append(ops.gemm(item.name, s["m"], s["n"], s["k"], fmt, batch, out_dtype="bf16"))
        else:
            out.append(item)
    return out


def _tp_reduce_kind(plan: ParallelPlan) -> CollectiveKind:
    return CollectiveKind.REDUCE_SCATTER if plan.sequence_parallel else CollectiveKind.ALL_REDUCE


def _wrap_ops(raw: list[Op | CommNeed], ctx: SlotContext) -> list[Item]:
    """Turn builder output into Comp/Comm with output modules and saved tensors."""
    out: list[Item] = []
    b = ctx.b
    norm_saved = False  # the normed input is shared by all its consumers: count it once
    plan = ctx.plan
    # With sequence parallelism a GEMM fed by the SP all-gather keeps only its sequence
    # shard of the input and re-gathers it for the backward (Korthikanti et al. 2022,
    # arXiv 2205.05198 §4.2.2; ``backward_items`` emits the re-gather).
    sp_shard = plan.tp if plan.sequence_parallel and plan.tp > 1 else 1
    raw = low_precision_gemms(raw, plan.dtype)
    for item in raw:
        if isinstance(item, CommNeed):
            out += (
                _ep_comms(item, ctx)
                if item.group == "ep"
                else [
                    Comm(
                        item.name,
                        item.kind,
                        item.nbytes,
                        item.group,
                        _OUTPUT_MODULE.get(item.name, "out"),
                    )
                ]
            )
            continue
        op = item
        name = op.name
        module = _OUTPUT_MODULE.get(name, "out")
        saved, by = 0.0, "checkpoint"
        shape = op.shape
        if op.kind == OpKind.NORM:
            saved, by = op.flops / 5.0 * b, "checkpoint"  # the residual-stream input
            norm_saved = False
        elif op.kind == OpKind.GEMM:
            # The input as the GEMM consumes it (a low-precision recipe saves the cast copy).
            a_bytes = shape["m"] * shape["k"] * shape.get("batch", 1) * dtype_bytes(op.dtype)
            if name in (
                "q_a_proj",
                "kv_a_proj",
                "qkv_proj",
                "q_proj",
                "router",
                "mlp_up",
                "shared_expert_up",
            ):
                if sp_shard > 1 and shape["m"] == ctx.tokens:
                    a_bytes /= sp_shard  # the gathered input: only the local shard is kept
                saved, by = (0.0 if norm_saved else a_bytes), "norm"
                norm_saved = True
            elif name in ("q_b_proj", "kv_b_proj", "o_proj"):
                saved, by = a_bytes, "attn"
            elif name == "experts_up":
                saved, by = a_bytes, "experts"
            elif name.endswith("_down"):
                saved, by = a_bytes, "act"
            elif name == "lm_head":
                if sp_shard > 1 and shape["m"] == ctx.tokens:
                    a_bytes /= sp_shard
                saved, by = a_bytes, "checkpoint"
            else:
                saved, by = a_bytes, module
        elif op.kind == OpKind.ATTENTION:
            # Q, K, V (O is the output projection's saved input: one tensor, counted
            # there) plus, for unfused attention, the score-sized tensors.
            saved, by = attention_saved(op, ctx), "attn"
            scores = attention_scores_saved(op, ctx)
            if scores:
                out.append(Comp(op, module, saved, by, ((scores, "core_attn"),)))
                continue
        elif name.endswith("_act"):
            gated = ctx.spec.gated_ffn or not name.startswith("mlp")
            saved = shape["numel"] * b * (2 if gated else 1)  # the up-projection output
            by = "experts" if name.startswith("experts") else "mlp"
        elif op.kind == OpKind.SOFTMAX:
            saved, by = op.main_bytes / 2.0, "checkpoint"  # fp32 probabilities for the loss
        elif name.endswith("_residual") and plan.dropout > 0:
            # Megatron's fused bias-dropout-add keeps a 1-byte mask per element of the
            # block output (Korthikanti et al. 2022 §4.1: the "sbh" of each block).
            saved, by = shape["numel"] * DROPOUT_MASK_BYTES, "checkpoint"
        out.append(Comp(op, module, saved, by))
    return out


DROPOUT_MASK_BYTES = 1.0  # a byte per element (torch bool / uint8 mask)


def attention_saved(op: Op, ctx: SlotContext) -> float:
    """Q, K and V of an attention op: what its backward needs besides the output."""
    s = op.shape
    vd = _v_dim(ctx.spec)
    o_bytes = s["batch"] * s["heads"] * s["q_len"] * vd * dtype_bytes(op.dtype)
    return max(0.0, op.main_bytes - o_bytes)


def attention_scores_saved(op: Op, ctx: SlotContext) -> float:
    """Score-sized tensors an unfused attention keeps for its backward.

    Megatron-LM's standard attention (Korthikanti et al. 2022 §4.1): the softmax output
    (2·a·s²·b bytes at 16 bits), and with attention dropout its mask (a·s²·b) and the
    dropout output that feeds the PV GEMM (2·a·s²·b): 5·a·s²·b. Fused (Flash)
    attention keeps none (it recomputes the scores in its backward).
    """
    if not is_unfused_attention(op, ctx):
        return 0.0
    s = op.shape
    pairs = s["batch"] * s["heads"] * s["q_len"] * s["kv_len"]
    per_pair = dtype_bytes(op.dtype)  # softmax output
    if ctx.plan.dropout > 0:
        per_pair += DROPOUT_MASK_BYTES + dtype_bytes(op.dtype)
    return pairs * per_pair


def is_unfused_attention(op: Op, ctx: SlotContext) -> bool:
    """Whether an attention op materialises its scores: the plan's attention
    implementation is "standard" (eager / Megatron-LM 2021), or the op says so."""
    impl = str(op.shape.get("impl", "")) or ctx.plan.attention_impl
    return impl == "standard"


def attention_dropout(items: list[Item], ctx: SlotContext) -> list[Item]:
    """Unfused attention with dropout: a pass over the (full, masked) score matrix after
    the softmax that writes the dropped probabilities and a 1-byte mask (Megatron-LM's
    fused scale-mask-softmax is followed by ``attention_dropout``; Korthikanti et al.
    2022 §4.1). Fused kernels drop in-kernel from a regenerated RNG state."""
    if ctx.plan.dropout <= 0:
        return items
    out: list[Item] = []
    for it in items:
        out.append(it)
        if isinstance(it, Comp) and it.op.kind == OpKind.ATTENTION and is_unfused_attention(
            it.op, ctx
        ):
            s = it.op.shape
            numel = s["batch"] * s["heads"] * s["q_len"] * s["kv_len"]
            op = ops.elementwise("attention_dropout", numel, act_dtype(ctx.plan), 2.0)
            op = replace(
                op,
                bytes=MappingProxyType(
                    {MAIN_MEMORY: op.main_bytes + numel * DROPOUT_MASK_BYTES}
                ),
            )
            out.append(Comp(op, "attn"))  # its saved tensors are counted with the scores
    return out


def _ep_comms(need: CommNeed, ctx: SlotContext) -> list[Comm]:
    """Flat all-to-all, or the hierarchical form when the EP group spans nodes.

    Hierarchical (Pangu Ultra MoE / MindSpeed hierarchical-alltoallv): tokens are
    all-gathered once per remote node over the inter-node EP ranks, and each node
    routes them to its local experts by an intra-node all-to-all. A token routed to
    several experts on one node crosses the network once instead of once per expert.
    """
    plan = ctx.plan
    if not (plan.hierarchical_ep and ctx.ep_spans_nodes and plan.tp_extend_ep and plan.tp > 1):
        return [
            Comm(
                need.name,
                need.kind,
                need.nbytes,
                "ep",
                _OUTPUT_MODULE.get(need.name, "out"),
                "pairwise",
            )
        ]
    k = ctx.spec.moe.top_k if ctx.spec.moe else 1
    token_bytes = need.nbytes / k  # this rank's tokens, one copy each
    gathered = token_bytes * plan.ep  # all-gather output over the inter-node EP ranks
    module = _OUTPUT_MODULE.get(need.name, "out")
    if need.name == "moe_dispatch":
        return [
            Comm("ep_allgather", CollectiveKind.ALL_GATHER, gathered, "ep_inter", module),
            Comm("ep_dispatch_local", CollectiveKind.ALL_TO_ALL, need.nbytes, "ep_intra", module),
        ]
    return [
        Comm("ep_combine_local", CollectiveKind.ALL_TO_ALL, need.nbytes, "ep_intra", module),
        Comm("ep_reducescatter", CollectiveKind.REDUCE_SCATTER, gathered, "ep_inter", module),
    ]


def _cp_attention(items: list[Item], ctx: SlotContext) -> list[Item]:
    """Context parallelism: each rank holds seq/cp queries and gathers all keys/values.

    Causal attention work is balanced over CP ranks (Megatron's zig-zag split), so each
    computes 1/cp of the full causal score matrix; K/V of the other ranks arrive by an
    all-gather over the CP group (ring attention moves the same bytes).
    """
    plan, spec = ctx.plan, ctx.spec
    if plan.cp == 1:
        return items
    out: list[Item] = []
    for it in items:
        if isinstance(it, Comp) and it.op.kind == OpKind.ATTENTION:
            s = it.op.shape
            full = ops.fused_attention(
                "attention",
                s["batch"],
                s["heads"],
                plan.seq,
                plan.seq,
                s["head_dim"],
                act_dtype(plan),
                True,
                s["kv_heads"],
                _v_dim(spec),
            )
            kv_width = s["kv_heads"] * (s["head_dim"] + _v_dim(spec))
            kv_bytes = s["batch"] * plan.seq * kv_width * ctx.b
            out.append(Comm("cp_kv_gather", CollectiveKind.ALL_GATHER, kv_bytes, "cp", "attn"))
            q_o = s["batch"] * s["heads"] * s["q_len"] * (s["head_dim"] + _v_dim(spec)) * ctx.b
            op = replace(
                full,
                flops=full.flops / plan.cp,
                bytes=MappingProxyType({MAIN_MEMORY: q_o + kv_bytes}),
                shape=MappingProxyType({**full.shape, "q_len": s["q_len"], "cp": plan.cp}),
            )
            out.append(Comp(op, "attn", q_o + kv_bytes, "attn"))
        else:
            out.append(it)
    return out


def _v_dim(spec: ModelSpec) -> float:
    return spec.mla.v_head_dim if spec.mla else spec.head_dim


def moe_load(ctx: SlotContext, layer: int, tokens: float, ep_ranks: int) -> MoELoad:
    base = uniform_moe_load(ctx.spec, tokens, ep_ranks)
    local = ctx.spec.moe.num_experts / ep_ranks
    return MoELoad(tokens=base.tokens * ctx.hot.get(layer, 1.0), active_experts=local)


def _block(
    name: str, norm_tokens: float, ctx: SlotContext, body: list[Item], reduce: bool = True
) -> list[Item]:
    """norm -> (SP all-gather) -> body -> TP reduce -> residual, as layer_forward does."""
    plan, spec = ctx.plan, ctx.spec
    act_bytes = ctx.tokens * spec.hidden * ctx.b
    items = _wrap_ops([ops.norm(f"{name}_norm", norm_tokens, spec.hidden, act_dtype(plan))], ctx)
    if plan.tp > 1 and plan.sequence_parallel and reduce:
        items.append(Comm(f"{name}_sp_gather", CollectiveKind.ALL_GATHER, act_bytes, "tp", "norm"))
    items += body
    if plan.tp > 1 and reduce:
        items.append(Comm(f"{name}_tp_reduce", _tp_reduce_kind(plan), act_bytes, "tp"))
    items += _wrap_ops(
        [ops.elementwise(f"{name}_residual", norm_tokens * spec.hidden, act_dtype(plan), 1.0, inputs=2)],
        ctx,
    )
    return items


def layer_items(ctx: SlotContext, layer: int) -> list[Item]:
    """Forward of transformer layer ``layer`` on one rank of the plan."""
    plan, spec = ctx.plan, ctx.spec
    t = ctx.tokens
    seq_local = plan.seq / plan.cp
    shape = StepShape(plan.mbs, seq_local, seq_local, True)
    sh = Sharding(plan.tp, plan.ep, plan.sequence_parallel)
    t_norm = t / plan.tp if plan.sequence_parallel else t
    attn = _cp_attention(_wrap_ops(attention_ops(spec, shape, sh, act_dtype(plan)), ctx), ctx)
    attn = attention_dropout(attn, ctx)
    items = _block("attn", t_norm, ctx, attn)
    if not spec.is_moe_layer(layer):
        ffn = _wrap_ops(ffn_items(spec, layer, shape, sh, act_dtype(plan)), ctx)
        return items + _block("ffn", t_norm, ctx, ffn)
    if plan.tp_extend_ep and plan.tp > 1:
        # TP-extend-EP: the TP x EP group shards the experts; each TP rank routes its
        # 1/tp of the tokens (already sharded with SP; sliced from the replicated
        # activations otherwise, then all-gathered back).
        ep_ranks = plan.tp * plan.ep
        sub = StepShape(plan.mbs * seq_local / plan.tp, 1, 1, True)
        load = moe_load(ctx, layer, t / plan.tp, ep_ranks)
        raw = ffn_items(spec, layer, sub, Sharding(1, ep_ranks, False), act_dtype(plan), load)
        body = _scale_a2a(_wrap_ops(raw, ctx), ctx.hot_comm.get(layer, 1.0))
        if not plan.sequence_parallel:
            body.append(
                Comm("moe_tp_gather", CollectiveKind.ALL_GATHER, t * spec.hidden * ctx.b, "tp")
            )
        block = _wrap_ops([ops.norm("ffn_norm", t_norm, spec.hidden, act_dtype(plan))], ctx)
        block += body
        block += _wrap_ops(
            [ops.elementwise("ffn_residual", t_norm * spec.hidden, act_dtype(plan), 1.0, inputs=2)], ctx
        )
        return items + block
    load = moe_load(ctx, layer, t, plan.ep)
    raw = ffn_items(spec, layer, shape, sh, act_dtype(plan), load)
    body = _expert_tp(_wrap_ops(raw, ctx), plan.tp)
    return items + _block("ffn", t_norm, ctx, _scale_a2a(body, ctx.hot_comm.get(layer, 1.0)))


def _expert_tp(items: list[Item], tp: int) -> list[Item]:
    """Experts split by TP (no TP-extend-EP), as Megatron-Core's all-to-all dispatcher does it.

    Each TP rank dispatches only its 1/tp share of the tokens over EP, then the TP
    group all-gathers what arrived (every TP rank holds a slice of every local
    expert); after the experts a reduce-scatter over TP precedes the combine.
    """
    if tp == 1:
        return items
    out: list[Item] = []
    for it in items:
        if isinstance(it, Comm) and it.name == "moe_dispatch":
            out.append(replace(it, nbytes=it.nbytes / tp))
            out.append(
                Comm("moe_tp_gather", CollectiveKind.ALL_GATHER, it.nbytes, "ep_tp", "experts")
            )
        elif isinstance(it, Comm) and it.name == "moe_combine":
            out.append(Comm("moe_tp_scatter", CollectiveKind.REDUCE_SCATTER, it.nbytes, "ep_tp"))
            out.append(replace(it, nbytes=it.nbytes / tp))
        else:
            out.append(it)
    return out


def _scale_a2a(items: list[Item], hot: float) -> list[Item]:
    """The hottest EP rank receives ``hot`` x the mean tokens; the all-to-all waits for it."""
    if hot == 1.0:
        return items
    return [
        replace(it, nbytes=it.nbytes * hot)
        if isinstance(it, Comm) and it.group.startswith("ep")
        else it
        for it in items
    ]


def mtp_items(ctx: SlotContext, index: int) -> list[Item]:
    """A DeepSeek-style MTP module: embed the shifted tokens, norm both inputs, project
    2h -> h, one transformer layer (like the last layer), and the shared output head."""
    plan, spec = ctx.plan, ctx.spec
    t = ctx.tokens
    sh = Sharding(plan.tp, plan.ep, plan.sequence_parallel)
    raw: list = list(embedding_forward(spec, t, sh, act_dtype(plan)))
    raw += [
        ops.norm("mtp_enorm", t, spec.hidden, act_dtype(plan)),
        ops.norm("mtp_hnorm", t, spec.hidden, act_dtype(plan)),
        ops.gemm("mtp_eh_proj", t, spec.hidden, 2 * spec.hidden, act_dtype(plan)),
    ]
    items = _wrap_ops(raw, ctx)
    items += layer_items(ctx, spec.layers - 1)
    items += head_items(ctx)
    return items


def embedding_items(ctx: SlotContext) -> list[Item]:
    sh = Sharding(ctx.plan.tp, 1, ctx.plan.sequence_parallel)
    return _wrap_ops(embedding_forward(ctx.spec, ctx.tokens, sh, act_dtype(ctx.plan)), ctx)


def head_items(ctx: SlotContext) -> list[Item]:
    plan = ctx.plan
    sh = Sharding(plan.tp, 1, plan.sequence_parallel)
    items = _wrap_ops(lm_head_forward(ctx.spec, ctx.tokens, sh, act_dtype(plan)), ctx)
    if plan.tp > 1:
        # Vocab-parallel cross-entropy (Megatron _VocabParallelCrossEntropy): all-reduces
        # over TP of the row max, the predicted logit and the sum of exps, fp32 per token.
        items += [
            Comm(f"loss_{what}", CollectiveKind.ALL_REDUCE, ctx.tokens * 4.0, "tp")
            for what in ("max", "target", "sumexp")
        ]
    if plan.tp > 1 and plan.sequence_parallel:
        items.insert(
            1,
            Comm(
                "head_sp_gather",
                CollectiveKind.ALL_GATHER,
                ctx.tokens * ctx.spec.hidden * ctx.b,
                "tp",
            ),
        )
    return items


def slot_items(ctx: SlotContext, slot: str) -> list[Item]:
    if slot == "noop":
        return []
    if slot.startswith("mtp"):
        return mtp_items(ctx, int(slot[3:]))
    return layer_items(ctx, int(slot[1:]))


# ---------------------------------------------------------------- backward

_MIRROR = {
    CollectiveKind.ALL_GATHER: CollectiveKind.REDUCE_SCATTER,
    CollectiveKind.REDUCE_SCATTER: CollectiveKind.ALL_GATHER,
}


def backward_op(op: Op) -> list[Op]:
    """The backward ops of one forward op (see the module docstring for the rules)."""
    s = op.shape
    if op.kind == OpKind.GEMM:
        m, n, k, batch = s["m"], s["n"], s["k"], s.get("batch", 1)
        if is_low_precision(op.dtype):
            # dC arrives in bf16 and is cast once (E5M2 in the hybrid FP8 recipe), then
            # feeds both backward GEMMs, which read the saved low-precision A and B.
            return [
                quantize_op(f"{op.name}_dgrad", m * n * batch, op.dtype),
                ops.gemm(f"{op.name}_dgrad", m, k, n, op.dtype, batch, out_dtype="bf16"),
                ops.gemm(f"{op.name}_wgrad", k, n, m, op.dtype, batch, out_dtype="bf16"),
            ]
        return [
            ops.gemm(f"{op.name}_dgrad", m, k, n, op.dtype, batch),
            ops.gemm(f"{op.name}_wgrad", k, n, m, op.dtype, batch),
        ]
    if op.kind == OpKind.ATTENTION:
        return [
            Op(
                f"{op.name}_bwd",
                op.kind,
                2.5 * op.flops,
                MappingProxyType({MAIN_MEMORY: 2.0 * op.main_bytes}),
                op.dtype,
                op.unit,
                MappingProxyType({**s, "backward": 1.0}),
            )
        ]
    if op.kind in (OpKind.MEMCPY, OpKind.EMBEDDING) or op.unit == Unit.DMA:
        return [replace(op, name=f"{op.name}_bwd")]
    return [
        Op(
            f"{op.name}_bwd",
            op.kind,
            2.0 * op.flops,
            MappingProxyType({MAIN_MEMORY: 2.0 * op.main_bytes}),
            op.dtype,
            op.unit,
            MappingProxyType({**s, "backward": 1.0}),
        )
    ]


def backward_items(items: list[Item], sequence_parallel: bool) -> list[Op | Comm]:
    """Backward of a forward item list, in reverse order, collectives mirrored.

    With sequence parallelism the saved GEMM inputs are the sequence shards, so the
    backward re-gathers them over TP before the weight gradient (Korthikanti et al. 2022).
    """
    out: list[Op | Comm] = []
    for it in reversed(items):
        if isinstance(it, Comm):
            out.append(replace(it, name=f"{it.name}_bwd", kind=_MIRROR.get(it.kind, it.kind)))
            if sequence_parallel and it.name.endswith("_sp_gather"):
                out.append(replace(it, name=f"{it.name}_regather"))
        else:
            out += backward_op(it.op)
    return out


def recompute_items(items: list[Item], policy: str, modules: tuple[str, ...]) -> list[Item]:
    """Forward items re-run before the backward: all (full) or those of recomputed modules."""
    if policy == "full":
        return list(items)
    if policy == "selective":
        return [it for it in items if _recomputed(it, modules)]
    return []


def _recomputed(it: Item, modules: tuple[str, ...]) -> bool:
    """``core_attn`` (Megatron's selective recompute) re-runs only the attention core:
    the score computation, not the projections around it."""
    if it.module in modules:
        return True
    if "core_attn" in modules and it.module == "attn":
        core = ("attention_dropout", "cp_kv_gather")
        if isinstance(it, Comp):
            return it.op.kind == OpKind.ATTENTION or it.op.name in core
        return it.name in core
    return False


def activation_bytes(
    items: list[Item], policy: str, modules: tuple[str, ...], input_bytes: float
) -> float:
    """Bytes one micro-batch leaves alive in this slot until its backward."""
    if not items:
        return 0.0
    if policy == "full":
        return input_bytes  # only the slot input is checkpointed
    dropped = set(modules) if policy == "selective" else set()
    if "attn" in dropped:
        dropped.add("core_attn")  # recomputing the attention module re-runs its core too
    total = 0.0
    for it in items:
        if not isinstance(it, Comp):
            continue
        if it.saved_by not in dropped:
            total += it.saved_bytes
        total += sum(nbytes for nbytes, by in it.extra_saved if by not in dropped)
    return total


def weight_params(items: list[Item]) -> tuple[float, float]:
    """(dense, expert) weight elements on this rank, read off the GEMMs' B operands."""
    dense = expert = 0.0
    for it in items:
        if isinstance(it, Comp) and it.op.kind == OpKind.GEMM:
            s = it.op.shape
            w = s["k"] * s["n"] * s.get("batch", 1)
            if it.op.name.startswith("experts_"):
                expert += w
            else:
                dense += w
        elif isinstance(it, Comp) and it.op.kind == OpKind.EMBEDDING:
            pass  # counted by the caller (table rows are not a GEMM)
    return dense, expert
