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

Each op carries its ``Role`` (sim.ir): the module its output belongs to, the tensor it
keeps for the backward (training's memory rules read these, not op names) and the
weight it reads. The GEMMs that read a block's normed input name that tensor
("attn_norm" / "ffn_norm") so it is kept once; with sequence parallelism they keep
only their sequence shard of it (the backward re-gathers it: Korthikanti et al. 2022,
arXiv 2205.05198 s4.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from xpusim.sim import ops
from xpusim.sim.ir import (
    CollectiveKind,
    Op,
    OpKind,
    Role,
    Saved,
    Weight,
    chunked_attention_pairs,
    dtype_bytes,
)
from xpusim.sim.models.spec import ModelSpec


@dataclass(frozen=True)
class CommNeed:
    """A collective the layer needs on a parallel group, before ranks are known."""

    name: str
    kind: CollectiveKind
    nbytes: float  # per-rank buffer, as defined on sim.ir.Collective
    group: str  # "tp" | "ep"
    module: str = "out"  # module of its output (sim.ir.Role.module)


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


def chunked_step(shape: StepShape, chunk: int) -> StepShape:
    """The attention of a chunked layer (Llama 4) as one batch of virtual sequences.

    Each chunk a sequence's queries touch is an independent causal attention over the
    keys of that chunk, as vLLM runs it (``make_local_attention_virtual_batches``: one
    virtual sequence per chunk, one varlen kernel call). The n chunks touched become n
    sequences of q_len / n queries each, whose keys are set so that the causal pairs of
    the virtual batch equal ``chunked_attention_pairs`` (FLOPs exact). Exact shapes when
    the queries fill whole chunks from a chunk start (training and prefill of
    n x chunk tokens: n sequences of chunk) or stay inside one chunk (decode: the keys
    of the current chunk); a query run crossing a chunk edge part-way gets the mean
    piece (its key reads within a few percent)."""
    q, kv = shape.q_len, shape.kv_len
    first, last = (kv - q) // chunk, (kv - 1) // chunk
    pieces = last - first + 1
    if pieces == 1 and first == 0:
        return shape  # the queries stay inside the first chunk: plain causal attention
    q_piece = q / pieces
    pairs = chunked_attention_pairs(q, kv, chunk) / pieces
    # A causal piece of q' queries over kv' keys scores q' (kv' - q') + q' (q' + 1) / 2
    # pairs (sim.ir.attention_pairs); solved for kv'.
    kv_piece = pairs / q_piece + (q_piece - 1) / 2
    return StepShape(shape.sequences * pieces, q_piece, kv_piece, shape.causal)


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


def _sp_shard(sh: Sharding) -> float:
    """How many ranks share a normed block input: with sequence parallelism each GEMM
    reading the all-gathered input keeps only its 1/tp sequence shard."""
    return sh.tp if sh.sequence_parallel and sh.tp > 1 else 1


def linear_role(
    module: str,
    by: str,
    m: float,
    n: float,
    k: float,
    batch: float = 1,
    weight: Weight = Weight.DENSE,
    tensor: str = "",
    shard: float = 1,
    expert: bool = False,
) -> Role:
    """The role of a linear layer's GEMM (m x k input, k x n weight): it keeps its input
    (dropped by recomputing ``by``) and reads its ``weight``."""
    saved = Saved(m * k * batch, by, shard=shard, tensor=tensor)
    return Role(module, (saved,), weight, k * n * batch, expert)


def _normed_role(module: str, t: float, n: float, k: float, sh: Sharding, block: str,
                 weight: Weight = Weight.DENSE) -> Role:
    """A GEMM reading the block's normed input (shared by its readers: kept once)."""
    return linear_role(module, "norm", t, n, k, 1, weight, f"{block}_norm", _sp_shard(sh))


def attention_core_role(batch: float, heads: float, q_len: float, kv_len: float,
                        head_dim: float, kv_heads: float, v_head_dim: float) -> Role:
    """The attention core keeps Q, K and V for its backward (O is the output
    projection's saved input: one tensor, counted there)."""
    qkv = batch * (heads * q_len * head_dim + kv_heads * kv_len * (head_dim + v_head_dim))
    return Role("core_attn", (Saved(qkv, "attn"),))


def _attention(name: str, shape: StepShape, heads: float, head_dim: float, dtype: str,
               kv_heads: float, v_head_dim: float, window: int = 0) -> Op:
    role = attention_core_role(shape.sequences, heads, shape.q_len, shape.kv_len, head_dim,
                               kv_heads, v_head_dim)
    return ops.fused_attention(name, shape.sequences, heads, shape.q_len, shape.kv_len,
                               head_dim, dtype, shape.causal, kv_heads, v_head_dim, role,
                               window)


def _gemm(name: str, m: float, n: float, k: float, dtype: str, role: Role,
          batch: float = 1) -> Op:
    return ops.gemm(name, m, n, k, dtype, batch, role=role)


def attention_ops(spec: ModelSpec, shape: StepShape, sh: Sharding, dtype: str,
                  layer: int = 0) -> list[Op]:
    """Projections and the attention core of layer ``layer`` (no norms, no communication).

    A sliding-window layer (gpt-oss) scores at most its window of keys per query. Its
    learned sink logit (one per head) adds one term to each softmax denominator: one
    exp and add per query row, against 2 x window x head_dim FLOPs of that row's scores
    (< 0.1 %), so it adds no op. The q/k/v/o biases ride in the GEMM epilogues (not
    priced, as for Qwen2 and OPT)."""
    t = shape.tokens
    tp = sh.tp
    heads = _div(spec.heads, tp)
    h = spec.hidden
    if spec.mla is None:
        kv_heads = max(1.0, _div(spec.kv_heads, tp))
        hd = spec.head_dim
        qkv = (heads + 2 * kv_heads) * hd
        return [
            _gemm("qkv_proj", t, qkv, h, dtype, _normed_role("attn", t, qkv, h, sh, "attn")),
            _mha_core(spec, shape, tp, dtype, layer),
            _gemm("o_proj", t, h, heads * hd, dtype,
                  linear_role("out", "attn", t, h, heads * hd)),
        ]
    return _mla_ops(spec, shape, sh, dtype, heads)


def attention_core_op(spec: ModelSpec, shape: StepShape, sh: Sharding, dtype: str,
                      layer: int = 0) -> Op:
    """The attention core of ``attention_ops`` (the same op), without building the
    projections around it: a serving step re-priced at another context changes only
    its cores (``sim.inference.priced_step``)."""
    if spec.mla is None:
        return _mha_core(spec, shape, sh.tp, dtype, layer)
    cores = [op for op in _mla_ops(spec, shape, sh, dtype, _div(spec.heads, sh.tp))
             if op.kind == OpKind.ATTENTION]
    assert len(cores) == 1, f"expected one attention core, got {len(cores)}"
    return cores[0]


def _mha_core(spec: ModelSpec, shape: StepShape, tp: int, dtype: str, layer: int) -> Op:
    """The attention core of a multi-head (MHA/GQA/MQA) layer on one of ``tp`` ranks."""
    heads = _div(spec.heads, tp)
    kv_heads = max(1.0, _div(spec.kv_heads, tp))
    hd = spec.head_dim
    chunk = spec.attention_chunk(layer)
    if chunk:
        shape = chunked_step(shape, chunk)
    return _attention("attention", shape, heads, hd, dtype, kv_heads, hd,
                      spec.attention_window(layer))


def _mla_ops(spec: ModelSpec, shape: StepShape, sh: Sharding, dtype: str,
             heads: float) -> list[Op]:
    """Multi-head latent attention (DeepSeek-V2/V3) on one TP rank."""
    mla = spec.mla
    assert mla is not None
    t, h = shape.tokens, spec.hidden
    qk_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    out: list[Op] = []
    if mla.q_lora_rank:
        r = mla.q_lora_rank
        out.append(_gemm("q_a_proj", t, r, h, dtype, _normed_role("attn", t, r, h, sh, "attn")))
        out.append(_gemm("q_b_proj", t, heads * qk_dim, r, dtype,
                         linear_role("attn", "attn", t, heads * qk_dim, r)))
    else:
        out.append(_gemm("q_proj", t, heads * qk_dim, h, dtype,
                         _normed_role("attn", t, heads * qk_dim, h, sh, "attn")))
    kv_a = mla.kv_lora_rank + mla.qk_rope_head_dim
    out.append(_gemm("kv_a_proj", t, kv_a, h, dtype, _normed_role("attn", t, kv_a, h, sh, "attn")))
    if shape.q_len < shape.kv_len:
        # Decode with a latent KV cache (DeepSeek "weight absorption"): queries are
        # mapped into the latent space and attention runs as MQA over the cached
        # latents (kv_lora + rope wide); the output is mapped back per head.
        lora, nope, vd = mla.kv_lora_rank, mla.qk_nope_head_dim, mla.v_head_dim
        out.append(_gemm("q_absorb", t, lora, nope, dtype,
                         linear_role("out", "out", t, lora, nope, heads), batch=heads))
        out.append(_attention("attention", shape, heads, kv_a, dtype, 1, lora))
        out.append(_gemm("v_absorb", t, vd, lora, dtype,
                         linear_role("out", "out", t, vd, lora, heads), batch=heads))
    else:
        kv_b = heads * (mla.qk_nope_head_dim + mla.v_head_dim)
        out.append(_gemm("kv_b_proj", t, kv_b, mla.kv_lora_rank, dtype,
                         linear_role("attn", "attn", t, kv_b, mla.kv_lora_rank)))
        out.append(_attention("attention", shape, heads, qk_dim, dtype, heads, mla.v_head_dim))
    o_in = heads * mla.v_head_dim
    out.append(_gemm("o_proj", t, h, o_in, dtype, linear_role("out", "attn", t, h, o_in)))
    return out


def _mlp(name: str, tokens: float, hidden: float, inner: float, gated: bool, dtype: str,
         batch: float = 1, sh: Sharding | None = None, clamp: bool = False) -> list[Op]:
    """An MLP (SwiGLU when gated: gate+up fused in one GEMM) over ``batch`` independent weights.

    ``clamp``: gpt-oss's clamped SwiGLU, a few more FLOPs in the same elementwise pass
    (memory-bound either way). Biases (gpt-oss experts, OPT) are added in the GEMM
    epilogue and not priced as ops, as for the attention biases.

    ``name`` "experts": the routed experts (their own modules and weights); otherwise the
    up projection reads the block's normed input (``sh``: its sharding).
    """
    up_cols = 2 * inner if gated else inner
    act_flops = 4.0 if gated else 1.0  # silu(x)*y ~ 4 FLOPs/element; relu/gelu-approx ~ 1
    if gated and clamp:
        # gpt-oss (GptOssExperts._apply_gate): gate.clamp(max), up.clamp(min, max), the
        # sigmoid's alpha multiply and (up + 1): four more FLOPs on the same pass.
        act_flops += 4.0
    experts = name == "experts"
    weight = Weight.EXPERT if experts else Weight.DENSE
    if experts:
        up_role = linear_role("experts", "experts", tokens, up_cols, hidden, batch, weight,
                              expert=True)
    else:
        up_role = _normed_role("mlp", tokens, up_cols, hidden, sh or Sharding(), "ffn")
    act_numel = tokens * inner * batch
    # The activation keeps the up projection's output: both halves when gated.
    act_role = Role("act", (Saved(act_numel * (2 if gated else 1),
                                  "experts" if experts else "mlp"),), expert=experts)
    down_role = linear_role("out", "act", tokens, hidden, inner, batch, weight, expert=experts)
    return [
        ops.gemm(f"{name}_up", tokens, up_cols, hidden, dtype, batch=batch, role=up_role),
        ops.elementwise(f"{name}_act", act_numel, dtype, act_flops,
                        inputs=2 if gated else 1, role=act_role),
        ops.gemm(f"{name}_down", tokens, hidden, inner, dtype, batch=batch, role=down_role),
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
        return list(_mlp("mlp", t, spec.hidden, _div(inner, sh.tp), spec.gated_ffn, dtype,
                         sh=sh))
    moe = spec.moe
    assert moe is not None
    load = moe_load or uniform_moe_load(spec, t, sh.ep)
    b = dtype_bytes(dtype)
    e, h = moe.num_experts, spec.hidden
    items: list[Op | CommNeed] = [
        _gemm("router", t, e, h, dtype,
              _normed_role("router", t, e, h, sh, "ffn", Weight.ROUTER)),
        ops.elementwise("topk", t * e, "fp32", 5.0, kind=OpKind.ROUTING, role=Role("router")),
    ]
    # Each token is sent once per chosen expert (flat dispatch); the EP study
    # (sim/network) models deduplicated hierarchical dispatch separately.
    a2a_bytes = t * moe.top_k * spec.hidden * b
    if sh.ep > 1:
        items.append(CommNeed("moe_dispatch", CollectiveKind.ALL_TO_ALL, a2a_bytes, "ep",
                              "experts"))
    items.append(ops.memcpy("permute", load.tokens * spec.hidden * b, Role("experts")))
    if load.active_experts > 0 and load.tokens > 0:
        per_expert = load.tokens / load.active_experts
        items += _mlp("experts", per_expert, spec.hidden, _div(moe.expert_ffn, sh.tp), True,
                      dtype, batch=load.active_experts, clamp=spec.swiglu_limit > 0)
    items.append(ops.memcpy("unpermute", load.tokens * spec.hidden * b))
    if sh.ep > 1:
        items.append(CommNeed("moe_combine", CollectiveKind.ALL_TO_ALL, a2a_bytes, "ep"))
    if moe.shared_experts:
        shared_inner = _div(moe.shared_ffn * moe.shared_experts, sh.tp)
        items += _mlp("shared_expert", t, spec.hidden, shared_inner, True, dtype, sh=sh)
    return items


def layer_forward(
    spec: ModelSpec,
    layer: int,
    shape: StepShape,
    sh: Sharding = Sharding(),
    dtype: str = "bf16",
    moe_load: MoELoad | None = None,
) -> list[Op | CommNeed]:
    """Forward of transformer layer ``layer`` (0-based) on one TP rank, in order.

    With ``spec.shared_norm`` (GPT-J, Falcon's parallel_attn) the MLP reads the attention's
    normed (and, with SP, gathered) input: no second norm or gather. Each block still
    reduces over TP and adds its output, as TensorRT-LLM's FalconDecoderLayer / GPTJ
    layer do (Attention and MLP each end in a RowLinear with its own all-reduce)."""
    b = dtype_bytes(dtype)
    t = shape.tokens
    act_bytes = t * spec.hidden * b
    t_norm = t / sh.tp if sh.sequence_parallel else t
    items: list[Op | CommNeed] = []
    for block in ("attn", "ffn"):
        if block == "attn" or not spec.shared_norm:
            items.append(ops.norm(f"{block}_norm", t_norm, spec.hidden, dtype,
                                  norm_role("norm", t_norm * spec.hidden)))
            if sh.tp > 1 and sh.sequence_parallel:
                items.append(CommNeed(f"{block}_sp_gather", CollectiveKind.ALL_GATHER, act_bytes,
                                      "tp", "norm"))
        if block == "attn":
            items += attention_ops(spec, shape, sh, dtype, layer)
        else:
            items += ffn_items(spec, layer, shape, sh, dtype, moe_load)
        if sh.tp > 1:
            kind = CollectiveKind.REDUCE_SCATTER if sh.sequence_parallel else CollectiveKind.ALL_REDUCE
            items.append(CommNeed(f"{block}_tp_reduce", kind, act_bytes, "tp"))
        items.append(ops.elementwise(f"{block}_residual", t_norm * spec.hidden, dtype, 1.0, inputs=2))
    return items


def norm_role(module: str, numel: float) -> Role:
    """A norm keeps its input (the residual stream) for its backward, whatever recomputes."""
    return Role(module, (Saved(numel),))


def embedding_forward(spec: ModelSpec, tokens: float, sh: Sharding, dtype: str = "bf16") -> list[Op | CommNeed]:
    """Vocab-parallel embedding lookup: gather rows, then all-reduce over TP. BLOOM's
    ``word_embeddings_layernorm`` (HF BloomModel: applied to the looked-up rows before the
    first block) follows, on the reduced rows every TP rank holds."""
    b = dtype_bytes(dtype)
    table = Role(weight=Weight.TABLE, weight_elements=spec.vocab / sh.tp * spec.hidden)
    items: list[Op | CommNeed] = [
        ops.embedding_lookup("embedding", tokens, spec.hidden, dtype, table)
    ]
    if sh.tp > 1:
        items.append(CommNeed("embedding_reduce", CollectiveKind.ALL_REDUCE,
                              tokens * spec.hidden * b, "tp"))
    if spec.embed_norm:
        items.append(ops.norm("embedding_norm", tokens, spec.hidden, dtype,
                              norm_role("out", tokens * spec.hidden)))
    return items


def lm_head_forward(spec: ModelSpec, tokens: float, sh: Sharding, dtype: str = "bf16") -> list[Op | CommNeed]:
    """Final norm and the vocab-parallel output projection (logits over vocab/tp columns).
    The head keeps its (sequence-sharded) input; the loss keeps the fp32 probabilities."""
    v, h = _div(spec.vocab, sh.tp), spec.hidden
    head = linear_role("out", "checkpoint", tokens, v, h, 1, Weight.HEAD, shard=_sp_shard(sh))
    return [
        ops.norm("final_norm", tokens, h, dtype, norm_role("out", tokens * h)),
        ops.gemm("lm_head", tokens, v, h, dtype, role=head),
        ops.softmax("logits_softmax", tokens, v, "fp32", Role(saves=(Saved(tokens * v),))),
    ]


def logits_gather(spec: ModelSpec, rows: float, sh: Sharding) -> list[CommNeed]:
    """Serving only: a vocab-parallel LM head leaves each TP rank vocab/tp columns of the
    logits, and the sampler needs whole rows, so the engine gathers them over TP, at 16
    bits (a GEMM's output) for each of the ``rows`` sampled positions. TensorRT-LLM's head
    is a ``ColumnLinear(..., gather_output=True)`` whose ``collect_and_bias`` calls
    ``allgather(x, tp_group, gather_dim=-1)`` (tensorrt_llm/layers/linear.py); vLLM's
    ``LogitsProcessor._gather_logits`` calls ``tensor_model_parallel_gather`` (to rank 0; an
    all-gather where ``use_all_gather``), which moves the same bytes into its root as an
    all-gather into each rank; SGLang's ``LogitsProcessor`` calls
    ``tensor_model_parallel_all_gather`` when ``do_tensor_parallel_all_gather`` (TP > 1).
    Priced as an all-gather of the gathered output. Training's vocab-parallel loss needs
    no gather (``lm_head_forward`` is shared with it)."""
    if sh.tp <= 1:
        return []
    out = rows * _div(spec.vocab, sh.tp) * sh.tp * dtype_bytes("fp16")
    return [CommNeed("logits_gather", CollectiveKind.ALL_GATHER, out, "tp")]
