"""``ModelSpec``: the architecture of a transformer, independent of hardware and parallelism."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class MoESpec:
    """Routed + shared experts of an MoE FFN (DeepSeek/Qwen2-MoE/Mixtral/Pangu style)."""

    num_experts: int  # routed experts per MoE layer
    top_k: int  # routed experts per token
    expert_ffn: int  # intermediate size of one routed expert
    shared_experts: int = 0  # always-active experts
    shared_ffn: int = 0  # intermediate size of ONE shared expert
    first_dense_layers: int = 0  # leading layers with a dense FFN instead of MoE
    layer_freq: int = 1  # every layer_freq-th layer (after the dense ones) is MoE
    dense_ffn: int = 0  # intermediate size of the dense FFN layers (0: use ModelSpec.ffn)
    scoring: str = "softmax"  # "softmax" | "sigmoid"
    norm_topk_prob: bool = True
    n_group: int = 1  # group-limited routing (DeepSeek-V3): groups of experts
    topk_group: int = 1  # groups a token may route to
    shared_gate: bool = False  # Qwen2-MoE's sigmoid gate on the shared expert output


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3, Pangu Ultra MoE)."""

    q_lora_rank: int | None  # None: queries projected directly from hidden
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer.

    ``ffn`` is the dense FFN intermediate size; ``gated_ffn`` is True for SwiGLU
    (three matrices), False for GELU/ReLU MLPs (two matrices, OPT). With ``mla`` set,
    ``heads`` is the number of attention heads and ``head_dim`` is unused for
    projections (the MLA dims are). ``mtp_layers`` counts DeepSeek-style multi-token
    prediction modules (each one extra transformer layer plus a projection).
    """

    name: str
    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    max_seq: int = 4096
    gated_ffn: bool = True
    norm: str = "rmsnorm"
    tie_embeddings: bool = False
    qkv_bias: bool = False
    linear_bias: bool = False  # OPT: biases on every linear layer
    learned_positions: bool = False  # OPT: learned position embeddings
    moe: MoESpec | None = None
    mla: MLASpec | None = None
    mtp_layers: int = 0
    # OPT: token embeddings are ``embed_dim`` wide (word_embed_proj_dim) and mapped to
    # ``hidden`` by project_in/project_out matrices when the two differ; 0 means hidden.
    embed_dim: int = 0
    final_norm: bool = True  # False for OPT-350m (post-norm layers, no final norm)
    # Learned position tables hold max_seq + position_offset rows (OPT keeps 2 extra
    # rows from fairseq's padding offset; HF OPTLearnedPositionalEmbedding).
    position_offset: int = 0
    # gpt-oss (HF GptOssConfig): ``layer_windows[i]`` is layer i's sliding window in keys
    # per query (0: full causal context; empty: every layer full); a learned per-head
    # attention sink logit; a router bias; SwiGLU clamped at ``swiglu_limit`` (0: none).
    layer_windows: tuple[int, ...] = ()
    # Llama 4 (HF Llama4TextConfig ``layer_types``): ``layer_chunks[i]`` is layer i's
    # attention chunk (0: not chunked; empty: no layer chunked). A query of a chunked
    # layer sees only the keys of its own chunk of ``chunk`` positions, causally
    # (transformers masking_utils ``chunked_overlay``: kv // chunk == q // chunk).
    layer_chunks: tuple[int, ...] = ()
    attention_sinks: bool = False
    router_bias: bool = False
    swiglu_limit: float = 0.0
    # GPT-J (HF GPTJBlock) and Falcon without new_decoder_architecture but with
    # parallel_attn (FalconDecoderLayer): attention and MLP both read ONE LayerNorm of the
    # layer input, ``x + attn(ln(x)) + mlp(ln(x))``: one norm a layer, not two.
    shared_norm: bool = False
    # BLOOM (HF modeling_bloom): ALiBi positions, a per-head linear bias added to the
    # attention scores (Press et al. 2022, arXiv 2108.12409) instead of rotary or learned
    # positions; and ``word_embeddings_layernorm``, a LayerNorm right after the embedding.
    alibi: bool = False
    embed_norm: bool = False

    @property
    def norms_per_layer(self) -> int:
        """Norms inside one transformer layer (the final norm apart)."""
        return 1 if self.shared_norm else 2

    def attention_window(self, index: int) -> int:
        """Sliding window of layer ``index`` (0 = full attention; MTP layers are full)."""
        return self.layer_windows[index] if index < len(self.layer_windows) else 0

    def attention_chunk(self, index: int) -> int:
        """Attention chunk of layer ``index`` (0 = not chunked; MTP layers are not)."""
        return self.layer_chunks[index] if index < len(self.layer_chunks) else 0

    def layer_kind(self, index: int) -> tuple[bool, int, int]:
        """(MoE FFN?, attention window, attention chunk): layers of one kind lower to
        identical ops."""
        return self.is_moe_layer(index), self.attention_window(index), self.attention_chunk(index)

    def is_moe_layer(self, index: int) -> bool:
        """Whether layer ``index`` (0-based) has an MoE FFN."""
        if self.moe is None or index < self.moe.first_dense_layers:
            return False
        return (index - self.moe.first_dense_layers) % self.moe.layer_freq == 0

    @property
    def num_moe_layers(self) -> int:
        return sum(1 for i in range(self.layers) if self.is_moe_layer(i))


@lru_cache(maxsize=64)
def layer_runs(spec: ModelSpec, start: int,
               end: int) -> tuple[tuple[tuple[bool, int, int], int, int], ...]:
    """Layers ``start`` .. ``end`` - 1 as runs of consecutive layers of one kind
    (``ModelSpec.layer_kind``), in order: (kind, first layer of the run, layers in it).
    Kept per spec: a serving run lowers thousands of steps of one model."""
    runs: list[tuple[tuple[bool, int, int], int, int]] = []
    for layer in range(start, end):
        kind = spec.layer_kind(layer)
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((kind, layer, 1))
    return tuple(runs)
