"""Forward ops of one transformer layer on one tensor-parallel rank.

Shared by training and inference lowering so that FLOPs and bytes are counted once.
A layer is a list of ``Op`` and ``CommNeed`` items in execution order; a
``CommNeed`` names the parallel group it runs on ("tp" or "ep") and the lowering
turns it into a ``Collective`` on concrete ranks.

Sharding follows Megatron-LM: Q/K/V and FFN-up columns and attention heads are
split over TP, the output and FFN-down rows are split and followed by an
all-reduce (or a reduce-scatter with sequence parallelism, which also adds an
all-gather before each block and shards norms/residuals over the sequence).
Routed experts are split over EP; tokens reach their experts by all-to-all.
MLA's down-projections (q_a, kv_a) are replicated over TP as in Megatron's MLA.
"""

from __future__ import annotations

from dataclasses import dataclass

from xpusim.sim import ops
from xpusim.sim.ir import CollectiveKind, Op, OpKind, dtype_bytes
from xpusim.sim.models.spec import ModelSpec


@dataclass(frozen=True)
class CommNeed:
    """A collective the layer needs on a parallel group, before ranks are known."""

    name: str
    kind: CollectiveKind
    nbytes: float  # per-rank buffer, as defined on sim.ir.Collective
    group: str  # "tp" | "ep"


@dataclass(frozen=True)
class StepShape:
    """The tokens one rank processes in one forward pass of a layer.

    ``sequences`` sequences (requests) each with ``q_len`` new tokens attending to
    ``kv_len`` positions (kv_len == q_len for training/prefill without cache,
    q_len == 1 for plain decode, gamma+1 for speculative verification).
    """

    sequences: float
    q_len: float
    kv_len: float
    causal: bool = True

    @property
    def tokens(self) -> float:
        return self.sequences * self.q_len


@dataclass(frozen=True)
class Sharding:
    tp: int = 1
    ep: int = 1
    sequence_parallel: bool = False


@dataclass(frozen=True)
class MoELoad:
    """What the routed experts of one EP rank see in one pass.

    ``tokens`` token-expert assignments arrive (T*k under uniform routing; more on
    a hot rank) spread over ``active_experts`` distinct local experts, whose weights
    must all be read.
    """

    tokens: float
    active_experts: float


def expected_active_experts(num_experts: int, top_k: int, tokens: float) -> float:
    """Expected distinct experts touched by ``tokens`` tokens under uniform top-k routing.

    Each token avoids a given expert with probability (1 - k/E), so
    E[distinct] = E * (1 - (1 - k/E)^tokens) (MoESD, Eq. 2).
    """
    if tokens <= 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


def uniform_moe_load(spec: ModelSpec, tokens_per_rank: float, ep: int) -> MoELoad:
    """Uniform routing: each EP rank receives tokens*k assignments over its E/ep experts."""
    assert spec.moe is not None
    moe = spec.moe
    global_tokens = tokens_per_rank * ep
    active = expected_active_experts(moe.num_experts, moe.top_k, global_tokens) / ep
    return MoELoad(tokens=tokens_per_rank * moe.top_k, active_experts=active)


def _div(x: float, parts: int) -> float:
    return x / parts


def attention_ops(spec: ModelSpec, shape: StepShape, sh: Sharding, dtype: str) -> list[Op]:
    """Projections and the attention core of one layer (no norms, no communication)."""
    t = shape.tokens
    tp = sh.tp
    heads = _div(spec.heads, tp)
    if spec.mla is None:
        kv_heads = max(1.0, _div(spec.kv_heads, tp))
        hd = spec.head_dim
        return [
            ops.gemm("qkv_proj", t, (heads + 2 * kv_heads) * hd, spec.hidden, dtype),
            ops.fused_attention("attention", shape.sequences, heads, shape.q_len, shape.kv_len,
                                hd, dtype, shape.causal, kv_heads),
            ops.gemm("o_proj", t, spec.hidden, heads * hd, dtype),
        ]
    mla = spec.mla
    qk_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    out: list[Op] = []
    if mla.q_lora_rank:
        out.append(ops.gemm("q_a_proj", t, mla.q_lora_rank, spec.hidden, dtype))
        out.append(ops.gemm("q_b_proj", t, heads * qk_dim, mla.q_lora_rank, dtype))
    else:
        out.append(ops.gemm("q_proj", t, heads * qk_dim, spec.hidden, dtype))
    out.append(ops.gemm("kv_a_proj", t, mla.kv_lora_rank + mla.qk_rope_head_dim, spec.hidden, dtype))
    if shape.q_len < shape.kv_len:
        # Decode with a latent KV cache (DeepSeek "weight absorption"): queries are
        # mapped into the latent space and attention runs as MQA over the cached
        # latents (kv_lora + rope wide); the output is mapped back per head.
        out.append(ops.gemm("q_absorb", t, mla.kv_lora_rank, mla.qk_nope_head_dim, dtype, batch=heads))
        out.append(ops.fused_attention("attention", shape.sequences, heads, shape.q_len,
                                       shape.kv_len, mla.kv_lora_rank + mla.qk_rope_head_dim,
                                       dtype, shape.causal, 1, mla.kv_lora_rank))
        out.append(ops.gemm("v_absorb", t, mla.v_head_dim, mla.kv_lora_rank, dtype, batch=heads))
    else:
        out.append(ops.gemm("kv_b_proj", t, heads * (mla.qk_nope_head_dim + mla.v_head_dim),
                            mla.kv_lora_rank, dtype))
        out.append(ops.fused_attention("attention", shape.sequences, heads, shape.q_len,
                                       shape.kv_len, qk_dim, dtype, shape.causal, heads,
                                       mla.v_head_dim))
    out.append(ops.gemm("o_proj", t, spec.hidden, heads * mla.v_head_dim, dtype))
    return out


def _mlp(name: str, tokens: float, hidden: float, inner: float, gated: bool, dtype: str,
         batch: float = 1) -> list[Op]:
    """An MLP (SwiGLU when gated: gate+up fused in one GEMM) over ``batch`` independent weights."""
    up_cols = 2 * inner if gated else inner
    act_flops = 4.0 if gated else 1.0  # silu(x)*y ~ 4 FLOPs/element; relu/gelu-approx ~ 1
    return [
        ops.gemm(f"{name}_up", tokens, up_cols, hidden, dtype, batch=batch),
        ops.elementwise(f"{name}_act", tokens * inner * batch, dtype, act_flops,
                        inputs=2 if gated else 1),
        ops.gemm(f"{name}_down", tokens, hidden, inner, dtype, batch=batch),
    ]


def ffn_items(
    spec: ModelSpec,
    layer: int,
    shape: StepShape,
    sh: Sharding,
    dtype: str,
    moe_load: MoELoad | None = None,
) -> list[Op | CommNeed]:
    """The FFN of ``layer``: dense MLP, or router + dispatch + experts + combine."""
    t = shape.tokens
    if not spec.is_moe_layer(layer):
        inner = spec.moe.dense_ffn if spec.moe and spec.moe.dense_ffn else spec.ffn
        return list(_mlp("mlp", t, spec.hidden, _div(inner, sh.tp), spec.gated_ffn, dtype))
    moe = spec.moe
    assert moe is not None
    load = moe_load or uniform_moe_load(spec, t, sh.ep)
    b = dtype_bytes(dtype)
    items: list[Op | CommNeed] = [
        ops.gemm("router", t, moe.num_experts, spec.hidden, dtype),
        ops.elementwise("topk", t * moe.num_experts, "fp32", 5.0, kind=OpKind.ROUTING),
    ]
    # Each token is sent once per chosen expert (flat dispatch); the EP study
    # (sim/network) models deduplicated hierarchical dispatch separately.
    a2a_bytes = t * moe.top_k * spec.hidden * b
    if sh.ep > 1:
        items.append(CommNeed("moe_dispatch", CollectiveKind.ALL_TO_ALL, a2a_bytes, "ep"))
    items.append(ops.memcpy("permute", load.tokens * spec.hidden * b))
    if load.active_experts > 0 and load.tokens > 0:
        per_expert = load.tokens / load.active_experts
        items += _mlp("experts", per_expert, spec.hidden, _div(moe.expert_ffn, sh.tp), True,
                      dtype, batch=load.active_experts)
    items.append(ops.memcpy("unpermute", load.tokens * spec.hidden * b))
    if sh.ep > 1:
        items.append(CommNeed("moe_combine", CollectiveKind.ALL_TO_ALL, a2a_bytes, "ep"))
    if moe.shared_experts:
        shared_inner = _div(moe.shared_ffn * moe.shared_experts, sh.tp)
        items += _mlp("shared_expert", t, spec.hidden, shared_inner, True, dtype)
    return items


def layer_forward(
    spec: ModelSpec,
    layer: int,
    shape: StepShape,
    sh: Sharding = Sharding(),
    dtype: str = "bf16",
    moe_load: MoELoad | None = None,
) -> list[Op | CommNeed]:
    """Forward of transformer layer ``layer`` (0-based) on one TP rank, in order."""
    b = dtype_bytes(dtype)
    t = shape.tokens
    act_bytes = t * spec.hidden * b
    t_norm = t / sh.tp if sh.sequence_parallel else t
    items: list[Op | CommNeed] = []
    for block in ("attn", "ffn"):
        items.append(ops.norm(f"{block}_norm", t_norm, spec.hidden, dtype))
        if sh.tp > 1 and sh.sequence_parallel:
            items.append(CommNeed(f"{block}_sp_gather", CollectiveKind.ALL_GATHER, act_bytes, "tp"))
        if block == "attn":
            items += attention_ops(spec, shape, sh, dtype)
        else:
            items += ffn_items(spec, layer, shape, sh, dtype, moe_load)
        if sh.tp > 1:
            kind = CollectiveKind.REDUCE_SCATTER if sh.sequence_parallel else CollectiveKind.ALL_REDUCE
            items.append(CommNeed(f"{block}_tp_reduce", kind, act_bytes, "tp"))
        items.append(ops.elementwise(f"{block}_residual", t_norm * spec.hidden, dtype, 1.0, inputs=2))
    return items


def embedding_forward(spec: ModelSpec, tokens: float, sh: Sharding, dtype: str = "bf16") -> list[Op | CommNeed]:
    """Vocab-parallel embedding lookup: gather rows, then all-reduce over TP."""
    b = dtype_bytes(dtype)
    items: list[Op | CommNeed] = [ops.embedding_lookup("embedding", tokens, spec.hidden, dtype)]
    if sh.tp > 1:
        items.append(CommNeed("embedding_reduce", CollectiveKind.ALL_REDUCE,
                              tokens * spec.hidden * b, "tp"))
    return items


def lm_head_forward(spec: ModelSpec, tokens: float, sh: Sharding, dtype: str = "bf16") -> list[Op | CommNeed]:
    """Final norm and the vocab-parallel output projection (logits over vocab/tp columns)."""
    return [
        ops.norm("final_norm", tokens, spec.hidden, dtype),
        ops.gemm("lm_head", tokens, _div(spec.vocab, sh.tp), spec.hidden, dtype),
        ops.softmax("logits_softmax", tokens, _div(spec.vocab, sh.tp), "fp32"),
    ]
