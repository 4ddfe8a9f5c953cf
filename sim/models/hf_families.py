"""Families read from HF ``config.json`` beyond the first set (``hf_config``): Nemotron,
GPT-J, Falcon, GPT-NeoX, BLOOM, Llama 4.

Each parser maps a config to a ``ModelSpec`` only where the spec expresses the
architecture faithfully; a variant it cannot express is refused with the key named.
The key mappings are documented in docs/models.md.
"""

from __future__ import annotations

from xpusim.sim.models.hf_reader import ConfigReader, attention_heads, layer_values
from xpusim.sim.models.spec import ModelSpec, MoESpec

# HF ACT2FN names of the elementwise, non-gated activations NemotronMLP may apply
# (transformers activations.py). The activation is an elementwise op: which one does
# not change parameter or FLOP counts (docs/models.md).
_NON_GATED_ACTS = ("relu2", "relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu")


def _non_gated_act(cfg: ConfigReader, key: str, default: str, why: str = "") -> str:
    """The activation of a two-matrix (non-gated) MLP, refused unless one we price."""
    act = cfg.str_(key, default)
    if act not in _NON_GATED_ACTS:
        raise cfg.error(key, f"must be one of {', '.join(_NON_GATED_ACTS)}{why}, got {act!r}")
    return act


def _dividing_heads(cfg: ConfigReader, key: str, hidden: int, hidden_key: str) -> int:
    """``key``'s head count, which must divide the hidden size (MHA: head_dim = hidden / heads)."""
    heads = cfg.int_(key)
    if hidden % heads:
        raise cfg.error(key, f"({heads}) must divide {hidden_key} ({hidden})")
    return heads


def parse_nemotron(cfg: ConfigReader, name: str) -> ModelSpec:
    """NVIDIA Nemotron-3/-4 and Minitron (HF modeling_nemotron, configuration_nemotron).

    NemotronMLP is up_proj -> act -> down_proj (two matrices, no gate), the act
    ``hidden_act`` ("relu2": squared ReLU, the default); NemotronLayerNorm1P is a
    LayerNorm (weight and bias, the weight stored minus one: the same parameters);
    q/k/v/o carry biases with ``attention_bias`` and up/down with ``mlp_bias`` (both
    false by default and in the releases). ``partial_rotary_factor`` (0.5) rotates half
    of each Q/K head: rotary is an elementwise pass that no FLOP count includes, and
    TransformerEngine's fused RoPE kernel writes the pass-through half too (the same
    bytes), so it is read and checked only. ``head_dim`` defaults to hidden / heads."""
    _non_gated_act(cfg, "hidden_act", "relu2", " (NemotronMLP is not gated)")
    cfg.float_("partial_rotary_factor", 0.5, 0.0, 1.0)
    attn_bias = cfg.bool_("attention_bias", False)
    mlp_bias = cfg.bool_("mlp_bias", False)
    if attn_bias != mlp_bias:
        # ModelSpec's linear_bias is o_proj's bias and the MLP's together (OPT).
        raise cfg.error("mlp_bias", f"({mlp_bias}) must equal attention_bias ({attn_bias}): "
                                    "one without the other is not supported")
    hidden = cfg.int_("hidden_size")
    heads, kv_heads, head_dim = attention_heads(cfg, hidden)
    return ModelSpec(
        name=name,
        family="nemotron",
        hidden=hidden,
        layers=cfg.int_("num_hidden_layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn=cfg.int_("intermediate_size"),
        vocab=cfg.int_("vocab_size"),
        max_seq=cfg.int_("max_position_embeddings", 4096),
        gated_ffn=False,
        norm="layernorm",
        tie_embeddings=cfg.bool_("tie_word_embeddings", False),  # NemotronConfig default
        qkv_bias=attn_bias,
        linear_bias=mlp_bias,
    )


def parse_gptj(cfg: ConfigReader, name: str) -> ModelSpec:
    """EleutherAI GPT-J (HF modeling_gptj; keys n_embd, n_layer, n_head, n_inner, n_positions,
    the GPTJConfig names). GPTJBlock is parallel: ``x + attn(ln_1(x)) + mlp(ln_1(x))`` with
    ONE LayerNorm a layer (``shared_norm``); q/k/v/out_proj have no bias, fc_in/fc_out do;
    the MLP is fc_in -> gelu_new -> fc_out, ``n_inner`` default 4 x n_embd; rotary on the
    first ``rotary_dim`` dims of each head (an uncounted elementwise pass, read only);
    untied lm_head with a bias. ``linear_bias`` counts the MLP biases and an out_proj bias
    GPT-J lacks (n_embd a layer), and the lm_head bias (vocab) is not counted: +64,288
    parameters on GPT-J 6B's 6.05B (0.001 %); biases are GEMM epilogues, not priced."""
    hidden = cfg.int_("n_embd")
    heads = _dividing_heads(cfg, "n_head", hidden, "n_embd")
    head_dim = hidden // heads
    rotary = cfg.int_("rotary_dim", head_dim)
    if rotary > head_dim:
        raise cfg.error("rotary_dim", f"({rotary}) must be <= the head dim ({head_dim})")
    _non_gated_act(cfg, "activation_function", "gelu_new")
    return ModelSpec(
        name=name,
        family="gptj",
        hidden=hidden,
        layers=cfg.int_("n_layer"),
        heads=heads,
        kv_heads=heads,
        head_dim=head_dim,
        ffn=cfg.int_("n_inner", 4 * hidden),
        vocab=cfg.int_("vocab_size"),
        max_seq=cfg.int_("n_positions", 2048),
        gated_ffn=False,
        norm="layernorm",
        tie_embeddings=cfg.bool_("tie_word_embeddings", False),  # GPTJConfig default
        qkv_bias=False,
        linear_bias=True,
        shared_norm=True,
    )


def _falcon_heads(cfg: ConfigReader, hidden: int, new_arch: bool) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim) of HF FalconAttention: new_decoder_architecture reads
    num_kv_heads; otherwise multi_query (default true) means one K/V head."""
    heads = _dividing_heads(cfg, "num_attention_heads", hidden, "hidden_size")
    if new_arch:
        kv_heads = cfg.int_("num_kv_heads", heads)
    else:
        kv_heads = 1 if cfg.bool_("multi_query", True) else heads
    if heads % kv_heads:
        raise cfg.error("num_kv_heads", f"({kv_heads}) must divide num_attention_heads ({heads})")
    return heads, kv_heads, hidden // heads


def parse_falcon(cfg: ConfigReader, name: str) -> ModelSpec:
    """TII Falcon (HF configuration_falcon / modeling_falcon FalconDecoderLayer).

    ``new_decoder_architecture`` (Falcon-40B/180B): GQA of ``num_kv_heads`` and two
    LayerNorms (ln_attn, ln_mlp) on the layer input, attention and MLP in parallel;
    else ``multi_query`` K/V heads and, with ``parallel_attn``, one input LayerNorm
    shared by both (``shared_norm``), without it a sequential block of two. ``bias``
    (default false) puts biases on query_key_value, dense and the MLP (``qkv_bias`` and
    ``linear_bias`` together, exact). MLP dense_h_to_4h -> GELU -> dense_4h_to_h of
    ``ffn_hidden_size`` (default 4 x hidden). ``alibi: true`` and
    ``num_ln_in_parallel_attn: 1`` with the new architecture are refused."""
    if cfg.bool_("alibi", False):
        raise cfg.error("alibi", "true is not supported (rotary Falcon configs only)")
    new_arch = cfg.bool_("new_decoder_architecture", False)
    if new_arch and cfg.int_("num_ln_in_parallel_attn", 2) != 2:
        raise cfg.error("num_ln_in_parallel_attn", "must be 2 with new_decoder_architecture "
                                                   "(one shared LayerNorm is not supported there)")
    _non_gated_act(cfg, "activation", "gelu")
    hidden = cfg.int_("hidden_size")
    heads, kv_heads, head_dim = _falcon_heads(cfg, hidden, new_arch)
    bias = cfg.bool_("bias", False)
    return ModelSpec(
        name=name,
        family="falcon",
        hidden=hidden,
        layers=cfg.int_("num_hidden_layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn=cfg.int_("ffn_hidden_size", 4 * hidden),
        vocab=cfg.int_("vocab_size"),
        max_seq=cfg.int_("max_position_embeddings", 2048),
        gated_ffn=False,
        norm="layernorm",
        # PretrainedConfig's default true; FalconForCausalLM ties lm_head to word_embeddings.
        tie_embeddings=cfg.bool_("tie_word_embeddings", True),
        qkv_bias=bias,
        linear_bias=bias,
        shared_norm=not new_arch and cfg.bool_("parallel_attn", True),
    )


def parse_gpt_neox(cfg: ConfigReader, name: str) -> ModelSpec:
    """EleutherAI GPT-NeoX / Pythia (HF modeling_gpt_neox GPTNeoXLayer). MHA whose
    query_key_value and dense carry biases with ``attention_bias`` (default true), an MLP
    dense_h_to_4h -> act -> dense_4h_to_h with biases (always), an input and a
    post-attention LayerNorm: with ``use_parallel_residual`` (default true) both read the
    layer input, ``x + attn(ln1(x)) + mlp(ln2(x))``, else the block is sequential; two
    norms either way, so the lowering is the same. ``rotary_pct`` (0.25) is read and
    checked only. embed_out is untied by default (``tie_word_embeddings`` false)."""
    if not cfg.bool_("attention_bias", True):
        # ModelSpec's linear_bias is the dense (o) bias and the MLP's together.
        raise cfg.error("attention_bias", "false is not supported (the MLP keeps its biases)")
    _non_gated_act(cfg, "hidden_act", "gelu")
    cfg.float_("rotary_pct", 0.25, 0.0, 1.0)
    hidden = cfg.int_("hidden_size")
    heads = _dividing_heads(cfg, "num_attention_heads", hidden, "hidden_size")
    return ModelSpec(
        name=name,
        family="gpt_neox",
        hidden=hidden,
        layers=cfg.int_("num_hidden_layers"),
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        ffn=cfg.int_("intermediate_size"),
        vocab=cfg.int_("vocab_size"),
        max_seq=cfg.int_("max_position_embeddings", 2048),
        gated_ffn=False,
        norm="layernorm",
        tie_embeddings=cfg.bool_("tie_word_embeddings", False),
        qkv_bias=True,
        linear_bias=True,
    )


def parse_bloom(cfg: ConfigReader, name: str) -> ModelSpec:
    """BigScience BLOOM (HF configuration_bloom, modeling_bloom BloomForCausalLM).

    BloomConfig names the width ``hidden_size`` (``n_embed`` accepted in its place), the
    depth ``n_layer`` and the heads ``n_head`` (its attribute_map aliases them to
    num_hidden_layers / num_attention_heads); vocab_size defaults to 250,880. BloomModel:
    word_embeddings, then ``word_embeddings_layernorm`` (``embed_norm``), BloomBlocks of
    input_layernorm -> MHA with a biased query_key_value and dense -> post_attention_layernorm
    -> BloomMLP (dense_h_to_4h, tanh GELU, dense_4h_to_h, both biased; always 4 x hidden,
    BloomMLP does not read ``n_inner``), ln_f; LayerNorms with bias; lm_head tied to
    word_embeddings (``tie_word_embeddings`` default true). No rotary and no position
    table: ALiBi, a per-head linear bias on the attention scores (``alibi``).
    ``apply_residual_connection_post_layernorm`` changes which tensor the residual adds, not
    the ops (read only). BloomConfig sets no position limit (ALiBi extrapolates):
    ``seq_length`` where given, else 2,048, BLOOM's training length (arXiv 2211.05100)."""
    hidden = cfg.int_(cfg.pick("hidden_size", "n_embed"))
    heads_key = cfg.pick("n_head", "num_attention_heads")
    heads = _dividing_heads(cfg, heads_key, hidden, "hidden_size")
    cfg.bool_("apply_residual_connection_post_layernorm", False)
    return ModelSpec(
        name=name,
        family="bloom",
        hidden=hidden,
        layers=cfg.int_(cfg.pick("n_layer", "num_hidden_layers")),
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        ffn=4 * hidden,
        vocab=cfg.int_("vocab_size", 250880),
        max_seq=cfg.int_("seq_length", 2048),
        gated_ffn=False,
        norm="layernorm",
        tie_embeddings=cfg.bool_("tie_word_embeddings", True),
        qkv_bias=True,
        linear_bias=True,
        alibi=True,
        embed_norm=True,
    )


def _llama4_text(cfg: ConfigReader) -> tuple[ConfigReader, bool]:
    """(the text model's keys, tie_word_embeddings): ``llama4`` (Llama4Config, the
    checkpoints' Llama4ForConditionalGeneration) nests the language model under
    ``text_config``; ``llama4_text`` (Llama4ForCausalLM) is flat. Only the text model is
    read: the vision encoder and projector are not part of a text workload."""
    tie = cfg.bool_("tie_word_embeddings", False)  # Llama4Config default
    if cfg.model_type != "llama4":
        return cfg, tie
    text = cfg.data.get("text_config")
    if not isinstance(text, dict):
        raise cfg.error("text_config", "must be an object holding the language model's keys")
    inner = ConfigReader(text, f"{cfg.source} text_config")
    return inner, inner.bool_("tie_word_embeddings", tie)


def _llama4_moe(cfg: ConfigReader, layers: int) -> MoESpec:
    """Llama4TextMoe: ``num_local_experts`` routed experts and one shared expert, both
    Llama4TextMLP of ``intermediate_size``; a bias-free router whose top-k logits pass a
    sigmoid (Llama4Router); MoE on ``moe_layers``, by default every
    ``interleave_moe_layer_step``-th layer from layer step - 1 (Llama4TextConfig:
    range(step - 1, layers, step)); the other layers are Llama4TextMLP of
    ``intermediate_size_mlp``."""
    experts = cfg.int_("num_local_experts", 16)
    top_k = cfg.int_("num_experts_per_tok", 1)
    if top_k > experts:
        raise cfg.error("num_experts_per_tok", f"({top_k}) must be <= num_local_experts ({experts})")
    step = cfg.int_("interleave_moe_layer_step", 1)
    pattern = list(range(step - 1, layers, step))
    given = cfg.data.get("moe_layers")
    if given is not None and given != pattern:
        raise cfg.error("moe_layers", f"must be every interleave_moe_layer_step-th layer "
                                      f"({pattern[:4]}...); another set is not supported")
    expert_ffn = cfg.int_("intermediate_size")
    return MoESpec(
        num_experts=experts,
        top_k=top_k,
        expert_ffn=expert_ffn,
        shared_experts=1,
        shared_ffn=expert_ffn,
        first_dense_layers=step - 1,
        layer_freq=step,
        dense_ffn=cfg.int_("intermediate_size_mlp", 16384),
        scoring="sigmoid",
        norm_topk_prob=False,
    )


def _llama4_chunks(cfg: ConfigReader, layers: int) -> tuple[int, ...]:
    """Each layer's attention chunk: Llama4TextConfig's ``layer_types`` ("chunked_attention"
    or "full_attention"), by default chunked where ``no_rope_layers`` is 1 (the RoPE
    layers), itself by default 1 except every ``no_rope_layer_interval``-th layer (the
    NoPE layers: 3, 7, ... with the interval 4). ``attention_chunk_size`` null: no layer
    is chunked."""
    if cfg.data.get("attention_chunk_size", 8192) is None:
        return ()
    chunk = cfg.int_("attention_chunk_size", 8192)
    types = cfg.data.get("layer_types")
    if types is None:
        rope = cfg.data.get("no_rope_layers") or [
            int((i + 1) % cfg.int_("no_rope_layer_interval", 4) != 0) for i in range(layers)]
        if not isinstance(rope, list) or len(rope) != layers or any(r not in (0, 1) for r in rope):
            raise cfg.error("no_rope_layers", f"must be a list of {layers} entries 0 or 1")
        types = ["chunked_attention" if r else "full_attention" for r in rope]
    return layer_values(cfg, types, layers, {"chunked_attention": chunk, "full_attention": 0})


def parse_llama4(cfg: ConfigReader, name: str) -> ModelSpec:
    """Meta Llama 4 Scout / Maverick (HF configuration_llama4, modeling_llama4): GQA
    attention with q/k/v/o biases only with ``attention_bias`` (false), an optional
    weight-free L2 norm of Q and K (``use_qk_norm``) and a NoPE temperature scale, both
    elementwise and uncounted; SwiGLU MLPs, RMSNorm; MoE layers with a shared expert
    (``_llama4_moe``); chunked local attention on the RoPE layers (``_llama4_chunks``).
    Rotary is priced on every layer (the NoPE layers skip it: one elementwise pass)."""
    text, tie = _llama4_text(cfg)
    act = text.str_("hidden_act", "silu")
    if act != "silu":
        raise text.error("hidden_act", f"must be 'silu' (Llama4TextMLP is SiLU-gated), got {act!r}")
    hidden = text.int_("hidden_size")
    layers = text.int_("num_hidden_layers")
    heads, kv_heads, head_dim = attention_heads(text, hidden)
    return ModelSpec(
        name=name,
        family="llama4",
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn=text.int_("intermediate_size_mlp", 16384),
        vocab=text.int_("vocab_size"),
        max_seq=text.int_("max_position_embeddings", 131072),
        gated_ffn=True,
        norm="rmsnorm",
        tie_embeddings=tie,
        qkv_bias=text.bool_("attention_bias", False),
        moe=_llama4_moe(text, layers),
        layer_chunks=_llama4_chunks(text, layers),
    )
