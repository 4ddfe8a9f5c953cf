"""Families read from HF ``config.json`` beyond the first set (``hf_config``): Nemotron.

Each parser maps a config to a ``ModelSpec`` only where the spec expresses the
architecture faithfully; a variant it cannot express is refused with the key named.
The key mappings are documented in docs/models.md.
"""

from __future__ import annotations

from xpusim.sim.models.hf_reader import ConfigReader, attention_heads
from xpusim.sim.models.spec import ModelSpec

# HF ACT2FN names of the elementwise, non-gated activations NemotronMLP may apply
# (transformers activations.py). The activation is an elementwise op: which one does
# not change parameter or FLOP counts (docs/models.md).
_NON_GATED_ACTS = ("relu2", "relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu")


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
    act = cfg.str_("hidden_act", "relu2")
    if act not in _NON_GATED_ACTS:
        raise cfg.error("hidden_act", f"must be one of {', '.join(_NON_GATED_ACTS)} "
                                      f"(NemotronMLP is not gated), got {act!r}")
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
