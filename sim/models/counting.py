"""Parameter, FLOP and weight-byte accounting of a ``ModelSpec``.

Conventions (docs/models.md has the derivations and the published checks):

- ``total`` is the main model without MTP modules: DeepSeek-V3's "671B" and Pangu
  Ultra MoE's "718B" exclude them (DeepSeek-V3 report §4: "671B ... plus 14B of the
  MTP module"). A tied embedding/output table is counted once.
- ``activated`` is what one token uses: ``total`` minus the routed experts it does
  not visit (top_k of num_experts per MoE layer), embeddings included (the
  convention of Mixtral's 12.9B and Qwen2-57B-A14B's 14B). ``activated_excl_embedding``
  drops the input token/position tables, which are lookups, not matmuls (the
  convention of DeepSeek's 37B/2.4B and Pangu Ultra MoE's 39B). A tied table stays:
  it is the output head's matmul.
- Forward FLOPs per token = 2 x (matmul weights the token passes through, the output
  head included even when tied) + attention scores and P·V. Attention over a
  sequence of s tokens costs 2·s·(heads·qk_dim) for Q·K^T and 2·s·(heads·v_dim) for
  P·V per token per layer; causal masking halves the average context to s/2.
  Norms, biases, activations and softmax are left out (< 0.1 % of the total).
- Training (model) FLOPs = 3 x forward (backward = 2 x forward), no recompute: the
  MFU convention of PaLM (Chowdhery et al. 2022, App. B: 6N + 12·L·H·Q·T per token,
  which is this with causal=False).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from xpusim.sim.errors import InputError
from xpusim.sim.ir import attention_pairs, chunked_attention_pairs, dtype_bytes
from xpusim.sim.models.spec import ModelSpec


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by component, summed over all layers."""

    embedding: int  # token embedding table (vocab x embed width); the output head too when tied
    position_embedding: int  # learned position table (OPT)
    embed_projection: int  # OPT project_in + project_out (word_embed_proj_dim != hidden)
    attention: int  # projections, their biases, MLA's internal q_a/kv_a norms
    dense_ffn: int  # FFNs of dense layers
    routed_experts: int  # every routed expert of every MoE layer
    shared_experts: int  # always-active experts
    router: int  # gate matrices (hidden x experts) and Qwen2-MoE's shared-expert gate
    norms: int  # two norms per layer (one with shared_norm), the final and BLOOM's embedding norm
    lm_head: int  # output projection; 0 when tied to the embedding
    mtp: int  # multi-token-prediction modules, NOT in total (shared embedding/head excluded)
    activated_routed_experts: int  # the top_k routed experts one token visits, all layers

    @property
    def total(self) -> int:
        return (
            self.embedding
            + self.position_embedding
            + self.embed_projection
            + self.attention
            + self.dense_ffn
            + self.routed_experts
            + self.shared_experts
            + self.router
            + self.norms
            + self.lm_head
        )

    @property
    def total_with_mtp(self) -> int:
        return self.total + self.mtp

    @property
    def activated(self) -> int:
        return self.total - self.routed_experts + self.activated_routed_experts

    @property
    def activated_excl_embedding(self) -> int:
        # A tied table is also the output head (a matmul every token), so it stays.
        lookup = 0 if self.lm_head == 0 else self.embedding
        return self.activated - lookup - self.position_embedding

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "total": self.total,
            "total_with_mtp": self.total_with_mtp,
            "activated": self.activated,
            "activated_excl_embedding": self.activated_excl_embedding,
        }


def _norm(spec: ModelSpec, width: int) -> int:
    return width * (2 if spec.norm == "layernorm" else 1)  # LayerNorm has a bias


def embed_norm_params(spec: ModelSpec) -> int:
    """BLOOM's ``word_embeddings_layernorm`` (weight and bias of hidden), else 0."""
    return _norm(spec, spec.hidden) if spec.embed_norm else 0


def embed_width(spec: ModelSpec) -> int:
    """Width of the token embedding rows (OPT's word_embed_proj_dim, else hidden)."""
    return spec.embed_dim or spec.hidden


def attention_widths(spec: ModelSpec) -> tuple[int, int]:
    """(heads x qk head dim, heads x v head dim): the inner sizes of Q·K^T and P·V."""
    if spec.mla is not None:
        qk = spec.mla.qk_nope_head_dim + spec.mla.qk_rope_head_dim
        return spec.heads * qk, spec.heads * spec.mla.v_head_dim
    return spec.heads * spec.head_dim, spec.heads * spec.head_dim


def attention_matmul_params(spec: ModelSpec) -> int:
    """Projection weights of one attention layer (no biases)."""
    h = spec.hidden
    mla = spec.mla
    if mla is None:
        q = h * spec.heads * spec.head_dim
        kv = 2 * h * spec.kv_heads * spec.head_dim
        return q + kv + spec.heads * spec.head_dim * h
    qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    if mla.q_lora_rank:
        q = h * mla.q_lora_rank + mla.q_lora_rank * spec.heads * qk  # q_a_proj, q_b_proj
    else:
        q = h * spec.heads * qk  # q_proj
    kv_a = h * (mla.kv_lora_rank + mla.qk_rope_head_dim)  # kv_a_proj_with_mqa
    kv_b = mla.kv_lora_rank * spec.heads * (mla.qk_nope_head_dim + mla.v_head_dim)
    o = spec.heads * mla.v_head_dim * h
    return q + kv_a + kv_b + o


def attention_params(spec: ModelSpec) -> int:
    """All parameters of one attention layer: projections, biases, MLA norms."""
    n = attention_matmul_params(spec)
    mla = spec.mla
    if mla is not None:
        n += _norm(spec, mla.kv_lora_rank) + (
            _norm(spec, mla.q_lora_rank) if mla.q_lora_rank else 0
        )
    if spec.qkv_bias:
        if mla is None:
            n += (spec.heads + 2 * spec.kv_heads) * spec.head_dim
        else:  # DeepSeek attention_bias: on q (or q_a) and kv_a
            n += mla.q_lora_rank or spec.heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim)
            n += mla.kv_lora_rank + mla.qk_rope_head_dim
    if spec.linear_bias:
        n += spec.hidden  # o_proj bias (OPT out_proj, gpt-oss o_proj)
    if spec.attention_sinks:
        n += spec.heads  # gpt-oss GptOssAttention.sinks: one logit per head
    return n


def mlp_matmul_params(spec: ModelSpec, inner: int) -> int:
    """Weights of one MLP of intermediate size ``inner``: 3 matrices if gated (SwiGLU), else 2."""
    return (3 if spec.gated_ffn else 2) * spec.hidden * inner


def mlp_params(spec: ModelSpec, inner: int) -> int:
    bias = (inner * (2 if spec.gated_ffn else 1) + spec.hidden) if spec.linear_bias else 0
    return mlp_matmul_params(spec, inner) + bias


def dense_ffn_width(spec: ModelSpec) -> int:
    """Intermediate size of the dense (non-MoE) layers."""
    return spec.moe.dense_ffn if spec.moe and spec.moe.dense_ffn else spec.ffn


def _router_params(spec: ModelSpec) -> int:
    """Router of one MoE layer (gpt-oss's has a bias of E values). DeepSeek-V3's
    e_score_correction_bias (E values) is left out."""
    moe = spec.moe
    assert moe is not None
    bias = moe.num_experts if spec.router_bias else 0
    return spec.hidden * moe.num_experts + bias + (spec.hidden if moe.shared_gate else 0)


def _ffn_params(spec: ModelSpec, layer: int) -> dict[str, int]:
    """FFN parameters of layer ``layer`` by component (all experts, and those one token uses)."""
    if not spec.is_moe_layer(layer):
        return {"dense_ffn": mlp_params(spec, dense_ffn_width(spec))}
    moe = spec.moe
    assert moe is not None
    expert = mlp_params(spec, moe.expert_ffn)
    return {
        "routed_experts": moe.num_experts * expert,
        "activated_routed_experts": moe.top_k * expert,
        "shared_experts": moe.shared_experts * mlp_params(spec, moe.shared_ffn),
        "router": _router_params(spec),
    }


def _mtp_module_params(spec: ModelSpec, index: int) -> int:
    """One DeepSeek-V3 MTP module (report §2.2): norms of the hidden state and of the next
    token's embedding, a 2h -> h projection, one transformer block (MoE if the layer
    rule says so) and the head's norm. The embedding and output head are shared."""
    layer = spec.layers + index
    ffn = _ffn_params(spec, layer)
    ffn_all = sum(v for k, v in ffn.items() if k != "activated_routed_experts")
    block = attention_params(spec) + spec.norms_per_layer * _norm(spec, spec.hidden) + ffn_all
    return (
        2 * _norm(spec, spec.hidden)
        + 2 * spec.hidden * spec.hidden
        + block
        + _norm(spec, spec.hidden)
    )


def param_counts(spec: ModelSpec) -> ParamCounts:
    """Parameters of ``spec`` by component (see the module docstring for conventions)."""
    ew = embed_width(spec)
    parts = {
        "dense_ffn": 0,
        "routed_experts": 0,
        "activated_routed_experts": 0,
        "shared_experts": 0,
        "router": 0,
    }
    for layer in range(spec.layers):
        for key, value in _ffn_params(spec, layer).items():
            parts[key] += value
    norms = spec.layers * spec.norms_per_layer * _norm(spec, spec.hidden) + (
        _norm(spec, spec.hidden) if spec.final_norm else 0
    ) + embed_norm_params(spec)
    return ParamCounts(
        embedding=spec.vocab * ew,
        position_embedding=(spec.max_seq + spec.position_offset) * spec.hidden
        if spec.learned_positions
        else 0,
        embed_projection=2 * ew * spec.hidden
        if spec.embed_dim and spec.embed_dim != spec.hidden
        else 0,
        attention=spec.layers * attention_params(spec),
        norms=norms,
        lm_head=0 if spec.tie_embeddings else spec.vocab * ew,
        mtp=sum(_mtp_module_params(spec, i) for i in range(spec.mtp_layers)),
        **parts,
    )


def stage_param_counts(spec: ModelSpec, start: int, end: int) -> tuple[int, int]:
    """(parameters other than routed experts, routed-expert parameters) of a pipeline
    stage holding layers [start, end): its layers, the embedding (and OPT's project_in)
    on the stage that starts at layer 0, the final norm and LM head (and project_out)
    on the stage that ends at the last layer. A tied table is held by both the first
    and the last stage when they differ: vLLM's LlamaModel builds ``embed_tokens`` on
    the first rank and, with ``tie_word_embeddings``, on the last rank too, where the
    LM head ties to it (vllm/model_executor/models/llama.py, v0.6). One stage of the
    whole model gives ``param_counts``' total."""
    counts = param_counts(spec)
    dense = routed = 0
    for layer in range(start, end):
        ffn = _ffn_params(spec, layer)
        routed += ffn.get("routed_experts", 0)
        dense += attention_params(spec) + spec.norms_per_layer * _norm(spec, spec.hidden) + sum(
            v for k, v in ffn.items() if k not in ("routed_experts", "activated_routed_experts")
        )
    first, last = start == 0, end == spec.layers
    if first:
        dense += counts.embedding + counts.position_embedding + counts.embed_projection // 2
        dense += embed_norm_params(spec)
    if last:
        dense += counts.lm_head + counts.embed_projection - counts.embed_projection // 2
        dense += _norm(spec, spec.hidden) if spec.final_norm else 0
        if spec.tie_embeddings and not first:
            dense += counts.embedding
    return dense, routed


def _ffn_matmul_per_token(spec: ModelSpec, layer: int) -> int:
    """FFN weights one token multiplies with in layer ``layer`` (router included)."""
    if not spec.is_moe_layer(layer):
        return mlp_matmul_params(spec, dense_ffn_width(spec))
    moe = spec.moe
    assert moe is not None
    return (
        moe.top_k * mlp_matmul_params(spec, moe.expert_ffn)
        + moe.shared_experts * mlp_matmul_params(spec, moe.shared_ffn)
        + _router_params(spec)
    )


def matmul_params_per_token(spec: ModelSpec, include_mtp: bool = False) -> int:
    """Weights one token multiplies with in a forward pass (2 FLOPs each).

    The output head (vocab x embed width) counts even when tied; embedding lookups do
    not. Each MTP module adds its 2h x h projection, its block and one more head.
    """
    ew = embed_width(spec)
    head = spec.vocab * ew
    proj = 2 * ew * spec.hidden if spec.embed_dim and spec.embed_dim != spec.hidden else 0
    n = proj + head + spec.layers * attention_matmul_params(spec)
    n += sum(_ffn_matmul_per_token(spec, i) for i in range(spec.layers))
    if include_mtp:
        for i in range(spec.mtp_layers):
            n += (
                2 * spec.hidden * spec.hidden
                + attention_matmul_params(spec)
                + _ffn_matmul_per_token(spec, spec.layers + i)
                + head
            )
    return n


def _check_seq(seq_len: float) -> None:
    if seq_len <= 0:
        raise InputError(f"sequence length must be > 0, got {seq_len}")


def _chunked_keys_per_query(seq_len: float, chunk: int, causal: bool) -> float:
    """Mean keys a query of a chunked layer sees over a sequence of ``seq_len``: causal,
    (p mod chunk) + 1 at position p (``sim.ir.chunked_attention_pairs``); without the
    causal mask (PaLM's MFU convention) every key of its own chunk."""
    if causal:
        return chunked_attention_pairs(seq_len, seq_len, chunk) / seq_len
    whole, rest = divmod(seq_len, chunk)
    return (whole * chunk * chunk + rest * rest) / seq_len


def attention_flops_per_token(
    spec: ModelSpec, seq_len: float, causal: bool = True, include_mtp: bool = False
) -> float:
    """Forward Q·K^T and P·V FLOPs per token, averaged over a sequence of ``seq_len``."""
    _check_seq(seq_len)
    qk, v = attention_widths(spec)
    context = seq_len / 2 if causal else seq_len  # causal: position i sees i keys, mean s/2
    layers = spec.layers + (spec.mtp_layers if include_mtp else 0)
    kinds = [(spec.attention_window(i), spec.attention_chunk(i)) for i in range(layers)]
    full = sum(1 for w, c in kinds if not w and not c)
    flops = full * 2.0 * (qk + v) * context
    for w, chunk in kinds:
        if chunk:  # Llama 4 chunked layer: the mean keys per query of its chunks
            flops += 2.0 * (qk + v) * _chunked_keys_per_query(seq_len, chunk, causal)
        elif w:  # sliding window: the mean keys per query over the sequence (sim.ir)
            flops += 2.0 * (qk + v) * attention_pairs(seq_len, seq_len, causal, w) / seq_len
    return flops


def forward_flops_breakdown(
    spec: ModelSpec, seq_len: float, causal: bool = True, include_mtp: bool = False
) -> dict[str, float]:
    """Forward FLOPs per token: matmuls with weights, attention core, and their sum."""
    matmul = 2.0 * matmul_params_per_token(spec, include_mtp)
    attn = attention_flops_per_token(spec, seq_len, causal, include_mtp)
    return {"matmul": matmul, "attention": attn, "total": matmul + attn}


def flops_per_token(
    spec: ModelSpec,
    seq_len: float,
    training: bool = False,
    causal: bool = True,
    include_mtp: bool = False,
) -> float:
    """FLOPs per token at sequence length ``seq_len``: forward, or x3 when ``training``."""
    forward = forward_flops_breakdown(spec, seq_len, causal, include_mtp)["total"]
    return 3.0 * forward if training else forward


def model_flops_per_token(
    spec: ModelSpec, seq_len: float, causal: bool = True, include_mtp: bool = False
) -> float:
    """Model FLOPs per trained token for MFU: forward + backward = 3 x forward, no recompute.

    With ``causal=False`` and a dense MHA model this is PaLM's 6N + 12·L·H·Q·T
    (N = matmul weights incl. the output head).
    """
    return flops_per_token(spec, seq_len, training=True, causal=causal, include_mtp=include_mtp)


def weight_bytes(spec: ModelSpec, dtype: str = "bf16", include_mtp: bool = False) -> float:
    """Bytes of all weights stored in ``dtype`` (norms and biases too, for simplicity)."""
    counts = param_counts(spec)
    params = counts.total_with_mtp if include_mtp else counts.total
    return params * dtype_bytes(dtype)
