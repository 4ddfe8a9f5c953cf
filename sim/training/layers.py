"""Forward items of one pipeline slot on one rank, as training runs them.

The forward comes from ``xpusim.sim.workloads.transformer`` (the FLOPs and bytes shared
with inference, each op with its ``Role``: output module, saved tensors, weight read).
This module places it on the plan: norms and residuals around each block, TP / SP / CP /
EP collectives on the plan's named groups, a low-precision recipe's casts, unfused
attention's score tensors, dropout. The backward and recompute are
``xpusim.sim.training.backward``; the memory read off the roles is
``xpusim.sim.training.saved`` (both re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType

from xpusim.sim import ops
from xpusim.sim.errors import InputError
from xpusim.sim.ir import (
    MAIN_MEMORY,
    AttentionShape,
    CollectiveKind,
    GemmShape,
    Op,
    OpKind,
    Role,
    Saved,
    Weight,
    dtype_bytes,
    is_low_precision,
)
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training import eager
from xpusim.sim.training.backward import (  # noqa: F401  (re-exported)
    ALIBI,
    ROTARY,
    backward_items,
    backward_op,
    recompute_items,
    recomputed,
)
from xpusim.sim.training.items import (  # noqa: F401  (re-exported)
    DROPOUT_MASK_BYTES,
    Comm,
    Item,
    SlotContext,
    act_dtype,
    gemm_dtype,
    quantize_op,
)
from xpusim.sim.training.lowprec import (
    HOPPER_DELAYED,
    NORM_FUSED_GEMMS,
    CastRecipe,
    SpFp8,
    amax_reduce,
    cast_ops,
    cast_recipe,
    scale_swizzle_ops,
    sp_fp8_collectives,
)
from xpusim.sim.training.megatron_experts import with_expert_passes
from xpusim.sim.training.megatron_loss import with_megatron_loss
from xpusim.sim.training.saved import activation_bytes, weight_params  # noqa: F401
from xpusim.sim.workloads.transformer import (
    CommNeed,
    MoELoad,
    Sharding,
    StepShape,
    attention_core_role,
    attention_ops,
    embedding_forward,
    ffn_items,
    linear_role,
    lm_head_forward,
    norm_role,
    uniform_moe_load,
)

# Weights a low-precision recipe leaves in 16 bits: Megatron's output layer and the MoE
# router are not TransformerEngine linears (DeepSeek-V3 report s3.3.1 likewise keeps the
# embedding, output head, gating and attention in higher precision).
_HIGH_PRECISION_WEIGHTS = (Weight.HEAD, Weight.ROUTER)


def low_precision_gemms(raw: Sequence, fmt: str, swizzle: bool = False,
                        recipe: CastRecipe = HOPPER_DELAYED) -> list:
    """Rewrite the 16-bit GEMMs of builder output for a low-precision recipe ``fmt``: each
    becomes a cast of its activation input (in both usages: the rowwise copy for this GEMM
    and the transposed/columnwise copy for the weight gradient, ``sim.training.lowprec``)
    plus the GEMM on ``fmt`` operands (priced at the
    device's ``fmt`` peak; output written in bf16; it keeps the cast input for its
    backward). Weights are cast once per step (see ``xpusim.sim.training.lowering``), so
    only the activation cast is per micro-batch. With ``swizzle`` (an NVIDIA device) a
    block-scaled format's GEMM is preceded by its two scale swizzles
    (``lowprec.scale_swizzle_ops``) and marked ``Role.swizzled_scales`` for its backward.
    ``recipe``: the casts' copies and amax pass (``lowprec.cast_ops``; the input of a
    LayerNormLinear GEMM has its amax from the norm), carried on the GEMM's role to the
    backward's output-gradient cast."""
    if not is_low_precision(fmt):
        return list(raw)
    out: list = []
    for item in raw:
        s = item.shape if isinstance(item, Op) else None
        if (isinstance(s, GemmShape) and item.kind == OpKind.GEMM
                and item.role.weight not in _HIGH_PRECISION_WEIGHTS):
            out += cast_ops(item.name, s.m * s.k * s.batch, fmt, recipe,
                            Role(expert=item.role.expert), item.name in NORM_FUSED_GEMMS)
            role = replace(item.role, cast_usages=recipe.usages, amax_pass=recipe.amax_pass)
            swz = scale_swizzle_ops(item.name, s.m, s.n, s.k, s.batch, fmt,
                                    Role(role.module, expert=role.expert)) if swizzle else []
            if swz:
                out += swz
                role = replace(role, swizzled_scales=True)
            out.append(ops.gemm(item.name, s.m, s.n, s.k, fmt, s.batch, out_dtype="bf16",
                                role=role))
        else:
            out.append(item)
    return out


def _tp_reduce_kind(plan: ParallelPlan) -> CollectiveKind:
    return CollectiveKind.REDUCE_SCATTER if plan.sequence_parallel else CollectiveKind.ALL_REDUCE


def training_items(raw: Sequence[Op | CommNeed], ctx: SlotContext, fmt: str = "") -> list[Item]:
    """Builder output as training items: collectives on the plan's groups (EP dispatched
    as the plan does it), GEMMs in the recipe's precision (``fmt``, default
    ``plan.dtype``: a transformer layer's ``items.gemm_dtype``), and attention keeping its
    score tensors when the plan's implementation materialises them."""
    out: list[Item] = []
    fmt = fmt or ctx.plan.dtype
    recipe = cast_recipe(fmt, ctx.plan.fp8_scaling, ctx.non_tn_fp8)
    for item in low_precision_gemms(raw, fmt, ctx.scale_swizzle, recipe):
        if isinstance(item, CommNeed):
            if item.group == "ep":
                out += _ep_comms(item, ctx)
            else:
                out.append(Comm(item.name, item.kind, item.nbytes, item.group, item.module))
        elif item.kind == OpKind.ATTENTION:
            out.append(_with_scores(item, ctx))
        else:
            out.append(item)
    return out


def _with_scores(op: Op, ctx: SlotContext) -> Op:
    """The attention op, keeping its score-sized tensors too when unfused."""
    if not is_unfused_attention(op, ctx):
        return op
    s = op.shape
    assert isinstance(s, AttentionShape)
    pairs = s.batch * s.heads * s.q_len * s.kv_len
    extra = Saved(pairs, "core_attn", bytes_per_element=_score_bytes_per_pair(op, ctx))
    return replace(op, role=replace(op.role, saves=(*op.role.saves, extra)))


def _score_bytes_per_pair(op: Op, ctx: SlotContext) -> float:
    """Softmax output; with dropout also its mask and the dropped output (see
    ``attention_scores_saved``)."""
    per_pair = dtype_bytes(op.dtype)
    if ctx.plan.dropout > 0:
        per_pair += DROPOUT_MASK_BYTES + dtype_bytes(op.dtype)
    return per_pair


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
    assert isinstance(s, AttentionShape)
    pairs = s.batch * s.heads * s.q_len * s.kv_len
    return pairs * _score_bytes_per_pair(op, ctx)


UNFUSED_IMPLS = ("standard", "fused_softmax")


def is_unfused_attention(op: Op, ctx: SlotContext) -> bool:
    """Whether an attention op materialises its scores: the plan's attention
    implementation keeps the scores in memory ("standard", eager PyTorch; "fused_softmax",
    Megatron-LM 2021-22), or the op says so."""
    impl = op.shape.impl if isinstance(op.shape, AttentionShape) else ""
    return (impl or ctx.plan.attention_impl) in UNFUSED_IMPLS


def attention_dropout(items: list[Item], ctx: SlotContext) -> list[Item]:
    """Unfused attention with dropout: a pass over the (full, masked) score matrix after
    the softmax that writes the dropped probabilities and a 1-byte mask (Megatron-LM's
    fused scale-mask-softmax is followed by ``attention_dropout``; Korthikanti et al.
    2022 §4.1). Fused kernels drop in-kernel from a regenerated RNG state. Its saved
    tensors are counted with the scores (``attention_scores_saved``)."""
    if ctx.plan.dropout <= 0:
        return items
    out: list[Item] = []
    for it in items:
        out.append(it)
        if isinstance(it, Op) and it.kind == OpKind.ATTENTION and is_unfused_attention(it, ctx):
            s = it.shape
            assert isinstance(s, AttentionShape)
            numel = s.batch * s.heads * s.q_len * s.kv_len
            op = ops.elementwise("attention_dropout", numel, act_dtype(ctx.plan), 2.0,
                                 role=Role("core_attn"))
            nbytes = op.main_bytes + numel * DROPOUT_MASK_BYTES
            out.append(replace(op, bytes=MappingProxyType({MAIN_MEMORY: nbytes})))
    return out


def _ep_comms(need: CommNeed, ctx: SlotContext) -> list[Comm]:
    """Flat all-to-all, or the hierarchical form when the EP group spans nodes.

    Hierarchical (Pangu Ultra MoE / MindSpeed hierarchical-alltoallv): tokens are
    all-gathered once per remote node over the inter-node EP ranks, and each node
    routes them to its local experts by an intra-node all-to-all. A token routed to
    several experts on one node crosses the network once instead of once per expert.
    """
    plan = ctx.plan
    module = need.module
    if not (plan.hierarchical_ep and ctx.ep_spans_nodes and plan.tp_extend_ep and plan.tp > 1):
        return [Comm(need.name, need.kind, need.nbytes, "ep", module, "pairwise")]
    k = ctx.spec.moe.top_k if ctx.spec.moe else 1
    token_bytes = need.nbytes / k  # this rank's tokens, one copy each
    gathered = token_bytes * plan.ep  # all-gather output over the inter-node EP ranks
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
    all-gather over the CP group (ring attention moves the same bytes). The op keeps
    its Q and O share and the gathered K/V for its backward.
    """
    plan = ctx.plan
    if plan.cp == 1:
        return items
    if any(0 < c < plan.seq for c in ctx.spec.layer_chunks):
        # A chunked layer's attention is a batch of per-chunk sequences
        # (workloads.transformer.chunked_step); how CP splits them is not modelled.
        raise InputError(f"context parallelism (cp={plan.cp}) with chunked attention layers "
                         f"(chunk {max(ctx.spec.layer_chunks)} < seq {plan.seq}) is not "
                         "modelled; use cp=1 or seq <= the chunk")
    out: list[Item] = []
    for it in items:
        if isinstance(it, Op) and it.kind == OpKind.ATTENTION:
            out += _cp_attention_op(it, ctx)
        else:
            out.append(it)
    return out


def _cp_attention_op(op: Op, ctx: SlotContext) -> list[Item]:
    plan, s = ctx.plan, op.shape
    assert isinstance(s, AttentionShape)
    vd = _v_dim(ctx.spec)
    full = ops.fused_attention("attention", s.batch, s.heads, plan.seq, plan.seq, s.head_dim,
                               act_dtype(plan), True, s.kv_heads, vd, window=s.window)
    kv_width = s.kv_heads * (s.head_dim + vd)
    kv_elements = s.batch * plan.seq * kv_width
    kv_bytes = kv_elements * ctx.b
    q_o_elements = s.batch * s.heads * s.q_len * (s.head_dim + vd)
    q_o = q_o_elements * ctx.b
    role = Role("core_attn", (Saved(q_o_elements + kv_elements, "attn"),))
    assert isinstance(full.shape, AttentionShape)
    cp_op = replace(
        full,
        flops=full.flops / plan.cp,
        bytes=MappingProxyType({MAIN_MEMORY: q_o + kv_bytes}),
        shape=replace(full.shape, q_len=s.q_len, cp=plan.cp),
        role=role,
    )
    gather = Comm("cp_kv_gather", CollectiveKind.ALL_GATHER, kv_bytes, "cp", "core_attn")
    return [gather, cp_op]


def rotary_width(spec: ModelSpec, tp: int) -> float:
    """Elements per token of this rank's Q and K that the rotary embedding rotates: every
    head dimension of Q and K, or MLA's decoupled rope part (per query head, plus the one
    K rope head shared by all heads, computed on every TP rank); 0 without rotary
    positions (learned position embeddings: GPT-3, OPT; ALiBi: BLOOM)."""
    if spec.learned_positions or spec.alibi:
        return 0.0
    if spec.mla is not None:
        return (spec.heads / tp + 1) * spec.mla.qk_rope_head_dim
    return (spec.heads + spec.kv_heads) * spec.head_dim / tp


def _with_rotary(items: list[Item], ctx: SlotContext) -> list[Item]:
    """The rotary embedding on Q and K, a pass of its own before the attention core.

    Megatron-Core's ``Attention.forward`` (megatron/core/transformer/attention.py, and
    ``MLASelfAttention`` for MLA) calls ``apply_rotary_pos_emb`` on the query and the key
    after the QKV projection and before the core attention; with ``apply_rope_fusion``
    that is TransformerEngine's ``FusedRoPEFunc`` (transformer_engine/pytorch/attention.py:
    ``tex.fused_rope_forward``, and ``tex.fused_rope_backward`` on the gradient), one
    kernel that reads the 16-bit tensor and writes the rotated one (2 + 2 B per element;
    the cos/sin table is per position, negligible). MindSpeed's fused
    ``npu_rotary_mul`` is the same pass. The cuDNN / flash kernels take Q and K already
    rotated, so the pass is not inside the attention op. Priced here at that fused
    minimum; the eager framework prices its unfused rotary itself (``eager.py``)."""
    width = rotary_width(ctx.spec, ctx.plan.tp)
    if width == 0 or eager.eager_passes_on(ctx):
        return items
    # ~3 FLOPs per element (two multiplies and an add of the rotated pair).
    rope = ops.elementwise(ROTARY, ctx.tokens * width, act_dtype(ctx.plan), 3.0,
                           role=Role("attn"))
    at = next((i for i, it in enumerate(items)
               if isinstance(it, Op) and it.kind == OpKind.ATTENTION), None)
    if at is None:
        return items
    if at > 0 and isinstance(items[at - 1], Comm):
        at -= 1  # before CP's K/V gather: the gathered keys are already rotated
    return [*items[:at], rope, *items[at:]]


def _with_alibi(items: list[Item], ctx: SlotContext) -> list[Item]:
    """ALiBi's bias on the scores of an unfused attention, a score-sized pass of its own.

    HF BloomAttention (and Megatron-DeepSpeed's BLOOM) compute the scores as
    ``alibi.baddbmm(q, k^T, beta, alpha)``: the per-head bias row is broadcast into the
    (b·heads, q, kv) output buffer, which the batched GEMM then reads with beta = 1, so one
    write and one read of the score matrix beyond the plain Q·K^T (2 + 2 B a pair at 16
    bits; the slopes x positions row itself is b·heads·kv, negligible) and one add a pair.
    The bias is a constant: its backward is the identity (``backward.ALIBI``). Fused
    (flash) kernels take a slope per head and add the bias in-kernel on the scores they
    already hold (flash-attn ``alibi_slopes``, Ascend ``npu_fusion_attention``'s
    generated pse): no bytes, one add among the softmax's, not priced separately."""
    if not ctx.spec.alibi:
        return items
    out: list[Item] = []
    for it in items:
        if isinstance(it, Op) and it.kind == OpKind.ATTENTION and is_unfused_attention(it, ctx):
            s = it.shape
            assert isinstance(s, AttentionShape)
            pairs = s.batch * s.heads * s.q_len * s.kv_len
            out.append(ops.elementwise(ALIBI, pairs, act_dtype(ctx.plan), 1.0,
                                       role=Role("core_attn")))
        out.append(it)
    return out


def _v_dim(spec: ModelSpec) -> float:
    return spec.mla.v_head_dim if spec.mla else spec.head_dim


def moe_load(ctx: SlotContext, layer: int, tokens: float, ep_ranks: int) -> MoELoad:
    assert ctx.spec.moe is not None
    base = uniform_moe_load(ctx.spec, tokens, ep_ranks)
    local = ctx.spec.moe.num_experts / ep_ranks
    return MoELoad(tokens=base.tokens * ctx.hot.get(layer, 1.0), active_experts=local)


def _norm(name: str, tokens: float, ctx: SlotContext, module: str = "norm") -> Op:
    """A norm over the residual stream; it keeps its input for its backward."""
    h = ctx.spec.hidden
    return ops.norm(name, tokens, h, act_dtype(ctx.plan), norm_role(module, tokens * h))


def _residual(name: str, tokens: float, ctx: SlotContext) -> Op:
    """The residual add closing a block. With dropout, Megatron's fused bias-dropout-add
    keeps a 1-byte mask per element of the block output (Korthikanti et al. 2022 §4.1:
    the "sbh" of each block)."""
    numel = tokens * ctx.spec.hidden
    saves = (Saved(numel, bytes_per_element=DROPOUT_MASK_BYTES),) if ctx.plan.dropout > 0 else ()
    return ops.elementwise(name, numel, act_dtype(ctx.plan), 1.0, inputs=2, role=Role(saves=saves))


def _block(
    name: str, norm_tokens: float, ctx: SlotContext, body: list[Item], reduce: bool = True,
    norm: bool = True,
) -> list[Item]:
    """norm -> (SP all-gather) -> body -> TP reduce -> residual, as layer_forward does.
    ``norm`` False: the block reads the previous block's normed input (``shared_norm``).
    Under a TransformerEngine per-tensor FP8 recipe the SP gathers of the dense linears
    move FP8 bytes, after an amax all-reduce under current scaling
    (``lowprec.sp_fp8_collectives``)."""
    plan, spec = ctx.plan, ctx.spec
    numel = ctx.tokens * spec.hidden
    act_bytes = numel * ctx.b
    sp = plan.tp > 1 and plan.sequence_parallel
    fp8 = sp_fp8_collectives(body, plan.framework, plan.fp8_scaling) if sp else SpFp8()
    items: list[Item] = [_norm(f"{name}_norm", norm_tokens, ctx)] if norm else []
    if sp and reduce and norm:
        if fp8.gather and fp8.amax:
            items.append(amax_reduce(f"{name}_sp_gather", "norm"))
        gathered = numel * fp8.gather if fp8.gather else act_bytes
        items.append(Comm(f"{name}_sp_gather", CollectiveKind.ALL_GATHER, gathered, "tp", "norm",
                          grad_nbytes=act_bytes))
    items += body
    if plan.tp > 1 and reduce:
        grad = numel * fp8.grad_gather if fp8.grad_gather else None
        items.append(Comm(f"{name}_tp_reduce", _tp_reduce_kind(plan), act_bytes, "tp",
                          grad_nbytes=grad, grad_amax=bool(grad) and fp8.amax))
    items.append(_residual(f"{name}_residual", norm_tokens, ctx))
    return items


def layer_items(ctx: SlotContext, layer: int) -> list[Item]:
    """Forward of transformer layer ``layer`` on one rank of the plan."""
    plan, spec = ctx.plan, ctx.spec
    seq_local = plan.seq / plan.cp
    shape = StepShape(plan.mbs, seq_local, seq_local, True)
    sh = Sharding(plan.tp, plan.ep, plan.sequence_parallel)
    t_norm = ctx.tokens / plan.tp if plan.sequence_parallel else ctx.tokens
    fmt = gemm_dtype(plan, layer, spec.layers)
    attn = _cp_attention(
        training_items(attention_ops(spec, shape, sh, act_dtype(plan), layer), ctx, fmt), ctx)
    attn = attention_dropout(_with_alibi(_with_rotary(attn, ctx), ctx), ctx)
    if eager.eager_passes_on(ctx):
        attn = [*eager.norm_passes("attn_norm", t_norm, ctx), *attn, *eager.attention_passes(ctx)]
    items = _block("attn", t_norm, ctx, attn)
    if not spec.is_moe_layer(layer):
        ffn = training_items(ffn_items(spec, layer, shape, sh, act_dtype(plan)), ctx, fmt)
        if eager.eager_passes_on(ctx):
            norm_passes = [] if spec.shared_norm else eager.norm_passes("ffn_norm", t_norm, ctx)
            ffn = [*norm_passes, *ffn, *eager.ffn_passes(ctx, layer)]
        return items + _block("ffn", t_norm, ctx, ffn, norm=not spec.shared_norm)
    if plan.tp_extend_ep and plan.tp > 1:
        return items + _extended_ep_ffn(ctx, layer, t_norm)
    load = moe_load(ctx, layer, ctx.tokens, plan.ep)
    raw = ffn_items(spec, layer, shape, sh, act_dtype(plan), load)
    body = _expert_tp(with_expert_passes(training_items(raw, ctx, fmt), ctx), plan.tp)
    return items + _block("ffn", t_norm, ctx, _scale_a2a(body, ctx.hot_comm.get(layer, 1.0)))


def _extended_ep_ffn(ctx: SlotContext, layer: int, t_norm: float) -> list[Item]:
    """TP-extend-EP: the TP x EP group shards the experts; each TP rank routes its 1/tp of
    the tokens (already sharded with SP; sliced from the replicated activations
    otherwise, then all-gathered back)."""
    plan, spec, t = ctx.plan, ctx.spec, ctx.tokens
    ep_ranks = plan.tp * plan.ep
    sub = StepShape(plan.mbs * (plan.seq / plan.cp) / plan.tp, 1, 1, True)
    load = moe_load(ctx, layer, t / plan.tp, ep_ranks)
    raw = ffn_items(spec, layer, sub, Sharding(1, ep_ranks, False), act_dtype(plan), load)
    fmt = gemm_dtype(plan, layer, spec.layers)
    body = _scale_a2a(with_expert_passes(training_items(raw, ctx, fmt), ctx),
                      ctx.hot_comm.get(layer, 1.0))
    if not plan.sequence_parallel:
        body.append(Comm("moe_tp_gather", CollectiveKind.ALL_GATHER, t * spec.hidden * ctx.b, "tp"))
    return [_norm("ffn_norm", t_norm, ctx), *body, _residual("ffn_residual", t_norm, ctx)]


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
    t, h = ctx.tokens, spec.hidden
    sh = Sharding(plan.tp, plan.ep, plan.sequence_parallel)
    raw: list = list(embedding_forward(spec, t, sh, act_dtype(plan)))
    raw += [
        _norm("mtp_enorm", t, ctx, "out"),
        _norm("mtp_hnorm", t, ctx, "out"),
        ops.gemm("mtp_eh_proj", t, h, 2 * h, act_dtype(plan),
                 role=linear_role("out", "out", t, h, 2 * h)),
    ]
    items = training_items(raw, ctx)
    items += layer_items(ctx, spec.layers - 1)
    items += head_items(ctx)
    return items


def embedding_items(ctx: SlotContext) -> list[Item]:
    sh = Sharding(ctx.plan.tp, 1, ctx.plan.sequence_parallel)
    return training_items(embedding_forward(ctx.spec, ctx.tokens, sh, act_dtype(ctx.plan)), ctx)


def head_items(ctx: SlotContext) -> list[Item]:
    plan = ctx.plan
    sh = Sharding(plan.tp, 1, plan.sequence_parallel)
    raw = lm_head_forward(ctx.spec, ctx.tokens, sh, act_dtype(plan))
    items = with_megatron_loss(training_items(raw, ctx), ctx)
    if plan.tp > 1:
        # Vocab-parallel cross-entropy (Megatron _VocabParallelCrossEntropy): all-reduces
        # over TP of the row max, the predicted logit and the sum of exps, fp32 per token.
        items += [
            Comm(f"loss_{what}", CollectiveKind.ALL_REDUCE, ctx.tokens * 4.0, "tp")
            for what in ("max", "target", "sumexp")
        ]
    if plan.tp > 1 and plan.sequence_parallel:
        gather = ctx.tokens * ctx.spec.hidden * ctx.b
        items.insert(1, Comm("head_sp_gather", CollectiveKind.ALL_GATHER, gather, "tp"))
    return items


def slot_items(ctx: SlotContext, slot: str) -> list[Item]:
    if slot == "noop":
        return []
    if slot.startswith("mtp"):
        return mtp_items(ctx, int(slot[3:]))
    return layer_items(ctx, int(slot[1:]))


__all__ = [
    "DROPOUT_MASK_BYTES",
    "Comm",
    "Item",
    "SlotContext",
    "act_dtype",
    "activation_bytes",
    "attention_core_role",
    "attention_dropout",
    "attention_scores_saved",
    "backward_items",
    "backward_op",
    "embedding_items",
    "head_items",
    "is_unfused_attention",
    "layer_items",
    "low_precision_gemms",
    "mtp_items",
    "quantize_op",
    "recompute_items",
    "recomputed",
    "slot_items",
    "training_items",
    "weight_params",
]
