"""Read a Hugging Face ``config.json`` (or a built-in preset) into a ``ModelSpec``.

Families and the ``model_type`` values that select them:

- ``llama``, ``mistral``: GQA attention, SwiGLU FFN, RMSNorm.
- ``qwen2``: as Llama, with biases on the Q/K/V projections.
- ``qwen2_moe``: Qwen2 attention; every ``decoder_sparse_step``-th layer is MoE with
  one gated shared expert of ``shared_expert_intermediate_size``.
- ``qwen3``: dense Qwen3, as ``qwen2`` but Q/K/V biases only with ``attention_bias``,
  ``head_dim`` default 128 (HF Qwen3Config) and a per-head Q/K RMSNorm, not counted
  (as for ``qwen3_moe``). ``use_sliding_window: true`` is refused.
- ``qwen3_moe``: as ``qwen2_moe`` without the shared expert; Q/K/V biases only with
  ``attention_bias``. Its per-head Q/K RMSNorm (2·head_dim weights a layer) is not counted.
- ``mixtral``: Llama attention; every layer is MoE with ``num_local_experts`` experts
  of ``intermediate_size``.
- ``deepseek_v2``, ``deepseek_v3``, ``pangu_ultra_moe``: MLA attention; the first
  ``first_k_dense_replace`` layers dense, then MoE with shared experts; MTP modules.
  Pangu's openPangu key names (``num_routed_experts``, ``num_shared_experts``,
  ``num_dense_layers``, ``num_mtp_layers``) are accepted as aliases.
- ``opt``: MHA with biases, ReLU MLP (two matrices), LayerNorm, learned positions.
- ``gpt_oss``: as ``mixtral`` with biases on q/k/v/o, the experts and the router, one
  attention-sink logit per head, clamped SwiGLU and alternating sliding-window layers.
- ``nemotron`` (``hf_families``): GQA, a two-matrix MLP with squared ReLU, LayerNorm,
  partial rotary (read, not priced differently).
- ``gptj``, ``falcon`` (``hf_families``): GELU MLPs, LayerNorm; GPT-J's and Falcon-7B's
  parallel block reads one LayerNorm (``shared_norm``); Falcon's new architecture has GQA.
- ``phi3``: as ``mistral`` (packed qkv / gate_up projections, the same weights);
  ``partial_rotary_factor`` read only.
- ``gpt_neox`` (``hf_families``): MHA with biases, GELU MLP with biases, two LayerNorms
  (parallel residual or not: the same ops); ``rotary_pct`` read only.
- ``bloom`` (``hf_families``): MHA with biases and ALiBi positions (no rotary, no position
  table), a LayerNorm after the embedding, 4h GELU MLP with biases, tied embeddings.
- ``llama4``, ``llama4_text`` (``hf_families``): the language model of Llama 4 (nested
  under ``text_config`` for ``llama4``): GQA, MoE layers with one shared expert every
  ``interleave_moe_layer_step``-th layer, dense ``intermediate_size_mlp`` layers between,
  chunked local attention (``attention_chunk_size``) on the RoPE layers.

The mapping of each key is in docs/models.md. Keys this module does not read
(dropout, rope scaling, token ids) do not change parameter or FLOP counts.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from xpusim.sim.errors import InputError
from xpusim.sim.inputs import read_json
from xpusim.sim.models.hf_families import (
    parse_bloom,
    parse_falcon,
    parse_gpt_neox,
    parse_gptj,
    parse_llama4,
    parse_nemotron,
)
from xpusim.sim.models.hf_reader import ConfigReader as _Config
from xpusim.sim.models.hf_reader import attention_heads as _attention_heads
from xpusim.sim.models.hf_reader import layer_values
from xpusim.sim.models.spec import MLASpec, ModelSpec, MoESpec

PRESET_DIR = Path(__file__).resolve().parent / "presets"


def _llama_like(
    cfg: _Config,
    name: str,
    *,
    qkv_bias: bool,
    moe: MoESpec | None = None,
    ffn_key: str = "intermediate_size",
) -> ModelSpec:
    """Llama-style decoder: pre-RMSNorm, rotary positions, SwiGLU FFN."""
    hidden = cfg.int_("hidden_size")
    heads, kv_heads, head_dim = _attention_heads(cfg, hidden)
    return ModelSpec(
        name=name,
        family=cfg.model_type,
        hidden=hidden,
        layers=cfg.int_("num_hidden_layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn=cfg.int_(ffn_key),
        vocab=cfg.int_("vocab_size"),
        max_seq=cfg.int_("max_position_embeddings", 4096),
        gated_ffn=True,
        norm="rmsnorm",
        tie_embeddings=cfg.bool_("tie_word_embeddings", False),
        qkv_bias=qkv_bias,
        moe=moe,
    )


def _parse_llama(cfg: _Config, name: str) -> ModelSpec:
    # Llama's attention_bias also adds an o_proj bias (hidden values per layer,
    # < 0.01 % of a layer's parameters); only the Q/K/V biases are counted.
    return _llama_like(cfg, name, qkv_bias=cfg.bool_("attention_bias", False))


def _uniform_window(cfg: _Config, spec: ModelSpec) -> ModelSpec:
    """Mistral / Mixtral ``sliding_window``: when set (an int, e.g. Mistral-7B-v0.1's 4096),
    every layer's queries see at most that many keys (HF MistralAttention / MixtralAttention
    pass ``config.sliding_window`` to every layer's mask); null or absent (Mistral v0.2+,
    Mixtral-8x7B) means full attention."""
    if cfg.data.get("sliding_window") is None:
        return spec
    window = cfg.int_("sliding_window")
    return dataclasses.replace(spec, layer_windows=(window,) * spec.layers)


def _parse_mistral(cfg: _Config, name: str) -> ModelSpec:
    return _uniform_window(cfg, _parse_llama(cfg, name))


def _parse_phi3(cfg: _Config, name: str) -> ModelSpec:
    """Microsoft Phi-3 / Phi-3.5 / Phi-4 (HF modeling_phi3): Llama's shape with q/k/v packed
    in one qkv_proj and gate/up in one gate_up_proj (the same weights), no attention or
    MLP biases (Phi3Attention / Phi3MLP take no bias flag), RMSNorm, SiLU-gated MLP.
    Phi3Attention passes ``config.sliding_window`` to every layer, as Mistral does
    (Phi-3-mini-4k: 2047). ``partial_rotary_factor`` (Phi-4-mini 0.75) is read and
    checked only: rotary is an uncounted elementwise pass. rope_scaling is not read."""
    cfg.float_("partial_rotary_factor", 1.0, 0.0, 1.0)
    act = cfg.str_("hidden_act", "silu")
    if act != "silu":
        raise cfg.error("hidden_act", f"must be 'silu' (Phi3MLP is SiLU-gated), got {act!r}")
    return _uniform_window(cfg, _llama_like(cfg, name, qkv_bias=False))


def _parse_qwen2(cfg: _Config, name: str) -> ModelSpec:
    return _llama_like(cfg, name, qkv_bias=True)  # Qwen2Attention: q/k/v Linear(bias=True)


def _parse_qwen3(cfg: _Config, name: str) -> ModelSpec:
    """Dense Qwen3 (HF modeling_qwen3): Qwen3Attention's q/k/v/o Linear(bias=attention_bias),
    False in the releases; q_norm/k_norm are RMSNorms over head_dim (2·head_dim weights a
    layer, left out as for qwen3_moe). HF Qwen3Config defaults head_dim to 128, not
    hidden / heads, and tie_word_embeddings to false (configuration_qwen3.py)."""
    if cfg.has("num_experts"):
        raise cfg.error("num_experts", "is not a dense Qwen3 key; use model_type qwen3_moe")
    if cfg.bool_("use_sliding_window", False):
        # Qwen3Config: layers i >= max_window_layers would slide; no released Qwen3 does.
        raise cfg.error("use_sliding_window", "true is not supported for qwen3 (only false, "
                                              "as in the released Qwen3 configs)")
    data = dict(cfg.data)
    if data.get("head_dim") is None:
        data["head_dim"] = 128
    dense = _Config(data, cfg.source)
    return _llama_like(dense, name, qkv_bias=dense.bool_("attention_bias", False))


def _check_top_k(cfg: _Config, experts_key: str, num_experts: int, top_k: int) -> None:
    if top_k > num_experts:
        raise cfg.error(
            "num_experts_per_tok", f"({top_k}) must be <= {experts_key} ({num_experts})"
        )


def _parse_qwen2_moe(cfg: _Config, name: str) -> ModelSpec:
    num_experts = cfg.int_("num_experts")
    top_k = cfg.int_("num_experts_per_tok")
    _check_top_k(cfg, "num_experts", num_experts, top_k)
    if cfg.data.get("mlp_only_layers"):
        raise cfg.error(
            "mlp_only_layers",
            "is not supported (only an empty list); express dense layers with decoder_sparse_step",
        )
    # HF Qwen2MoeDecoderLayer: layer i is sparse when (i + 1) % decoder_sparse_step == 0,
    # i.e. layers step-1, 2*step-1, ...: first_dense_layers = step - 1, layer_freq = step.
    step = cfg.int_("decoder_sparse_step", 1)
    shared_ffn = cfg.int_("shared_expert_intermediate_size", 0, minimum=0)
    moe = MoESpec(
        num_experts=num_experts,
        top_k=top_k,
        expert_ffn=cfg.int_("moe_intermediate_size"),
        shared_experts=1 if shared_ffn else 0,
        shared_ffn=shared_ffn,
        first_dense_layers=step - 1,
        layer_freq=step,
        dense_ffn=cfg.int_("intermediate_size"),
        scoring="softmax",
        norm_topk_prob=cfg.bool_("norm_topk_prob", False),
        shared_gate=bool(shared_ffn),  # sigmoid(Linear(hidden, 1)) scales the shared expert
    )
    return _llama_like(cfg, name, qkv_bias=True, moe=moe)


def _parse_qwen3_moe(cfg: _Config, name: str) -> ModelSpec:
    # HF Qwen3MoeDecoderLayer uses Qwen2-MoE's sparse-step rule but has no shared expert,
    # and Qwen3MoeAttention's q/k/v biases follow attention_bias (False in the releases).
    # Its q_norm/k_norm are RMSNorms over head_dim: 256 weights a layer, and elementwise
    # work, left out of parameter and FLOP counts.
    if cfg.has("shared_expert_intermediate_size"):
        raise cfg.error("shared_expert_intermediate_size", "is not a Qwen3-MoE key; use qwen2_moe")
    spec = _parse_qwen2_moe(cfg, name)
    return dataclasses.replace(spec, qkv_bias=cfg.bool_("attention_bias", False))


def _parse_mixtral(cfg: _Config, name: str) -> ModelSpec:
    num_experts = cfg.int_("num_local_experts")
    top_k = cfg.int_("num_experts_per_tok")
    _check_top_k(cfg, "num_local_experts", num_experts, top_k)
    expert_ffn = cfg.int_("intermediate_size")
    moe = MoESpec(
        num_experts=num_experts,
        top_k=top_k,
        expert_ffn=expert_ffn,
        dense_ffn=expert_ffn,
        scoring="softmax",
        norm_topk_prob=True,
    )
    return _uniform_window(cfg, _llama_like(cfg, name, qkv_bias=False, moe=moe))


def _layer_windows(cfg: _Config, layers: int) -> tuple[int, ...]:
    """gpt-oss ``layer_types``: "sliding_attention" layers get ``sliding_window`` keys per
    query, "full_attention" layers the whole context. Absent, HF GptOssConfig alternates,
    sliding first (layer i slides when (i + 1) % 2 == 1)."""
    window = cfg.int_("sliding_window")
    types = cfg.data.get("layer_types")
    if types is None:
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    return layer_values(cfg, types, layers, {"sliding_attention": window, "full_attention": 0})


def _parse_gpt_oss(cfg: _Config, name: str) -> ModelSpec:
    """OpenAI gpt-oss (HF modeling_gpt_oss): Llama-style GQA with biases on q/k/v/o
    (``attention_bias``, default true) and one learned sink logit per head; every layer
    MoE with ``num_local_experts`` experts of ``intermediate_size`` whose gate_up and
    down projections carry biases (GptOssExperts), a biased router (GptOssTopKRouter),
    and SwiGLU clamped at ``swiglu_limit``; alternating sliding-window layers."""
    spec = _parse_mixtral(cfg, name)
    limit = cfg.data.get("swiglu_limit", 7.0)  # GptOssConfig default
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0:
        raise cfg.error("swiglu_limit", f"must be a number > 0, got {limit!r}")
    bias = cfg.bool_("attention_bias", True)
    return dataclasses.replace(
        spec,
        qkv_bias=bias,
        # linear_bias: o_proj's bias (attention_bias) and the experts' gate_up/down biases,
        # which gpt-oss always has; counting.mlp_params adds 2 * inner + hidden per expert.
        linear_bias=True,
        max_seq=cfg.int_("max_position_embeddings", 131072),
        layer_windows=_layer_windows(cfg, spec.layers),
        attention_sinks=True,
        router_bias=True,
        swiglu_limit=float(limit),
    )


def _deepseek_moe(cfg: _Config, layers: int) -> MoESpec | None:
    experts_key = cfg.pick("n_routed_experts", "num_routed_experts")
    if not cfg.has(experts_key):
        return None  # no routed experts: every layer dense
    num_experts = cfg.int_(experts_key)
    top_k = cfg.int_("num_experts_per_tok")
    _check_top_k(cfg, experts_key, num_experts, top_k)
    first_key = cfg.pick("first_k_dense_replace", "num_dense_layers")
    first_dense = cfg.int_(first_key, 0, minimum=0)
    if first_dense > layers:
        raise cfg.error(first_key, f"({first_dense}) must be <= num_hidden_layers ({layers})")
    freq = cfg.int_("moe_layer_freq", 1)
    # HF DeepseekV2/V3: layer i is MoE when i >= first_k_dense_replace and
    # i % moe_layer_freq == 0. Start the MoE run at the first such layer so that
    # ModelSpec's (i - first_dense_layers) % layer_freq rule selects the same layers.
    first_moe = -(-first_dense // freq) * freq
    n_group = cfg.int_("n_group", 1)
    topk_group = cfg.int_("topk_group", 1)
    if topk_group > n_group:
        raise cfg.error("topk_group", f"({topk_group}) must be <= n_group ({n_group})")
    if num_experts % n_group:
        # HF DeepseekV3TopkRouter.get_topk_indices views the router scores as
        # (n_group, n_routed_experts // n_group): the groups must split the experts evenly.
        raise cfg.error("n_group", f"({n_group}) must divide the {num_experts} routed experts")
    scoring = cfg.str_("scoring_func", "softmax")
    if scoring not in ("softmax", "sigmoid"):
        raise cfg.error("scoring_func", f"must be 'softmax' or 'sigmoid', got {scoring!r}")
    expert_ffn = cfg.int_("moe_intermediate_size")
    return MoESpec(
        num_experts=num_experts,
        top_k=top_k,
        expert_ffn=expert_ffn,
        # DeepSeek's shared experts are n_shared_experts MLPs of moe_intermediate_size
        # (HF builds them as one MLP n_shared times as wide: the same parameters).
        shared_experts=cfg.int_(cfg.pick("n_shared_experts", "num_shared_experts"), 0, minimum=0),
        shared_ffn=expert_ffn,
        first_dense_layers=min(first_moe, layers),
        layer_freq=freq,
        dense_ffn=cfg.int_("intermediate_size"),
        scoring=scoring,
        norm_topk_prob=cfg.bool_("norm_topk_prob", False),
        n_group=n_group,
        topk_group=topk_group,
    )


def _parse_deepseek(cfg: _Config, name: str) -> ModelSpec:
    hidden = cfg.int_("hidden_size")
    layers = cfg.int_("num_hidden_layers")
    heads = cfg.int_("num_attention_heads")
    q_lora = cfg.data.get("q_lora_rank")  # null in DeepSeek-V2-Lite: q projected directly
    mla = MLASpec(
        q_lora_rank=cfg.int_("q_lora_rank") if q_lora is not None else None,
        kv_lora_rank=cfg.int_("kv_lora_rank"),
        qk_nope_head_dim=cfg.int_("qk_nope_head_dim"),
        qk_rope_head_dim=cfg.int_("qk_rope_head_dim", minimum=0),
        v_head_dim=cfg.int_("v_head_dim"),
    )
    return ModelSpec(
        name=name,
        family=cfg.model_type,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=cfg.int_("num_key_value_heads", heads),
        # With MLA, head_dim is the query/key width of one head (nope + rope): the
        # inner dimension of Q·K^T. V heads are mla.v_head_dim wide.
        head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim,
        ffn=cfg.int_("intermediate_size"),
        vocab=cfg.int_("vocab_size"),
        max_seq=cfg.int_("max_position_embeddings", 4096),
        gated_ffn=True,
        norm="rmsnorm",
        tie_embeddings=cfg.bool_("tie_word_embeddings", False),
        qkv_bias=cfg.bool_("attention_bias", False),
        moe=_deepseek_moe(cfg, layers),
        mla=mla,
        mtp_layers=cfg.int_(cfg.pick("num_nextn_predict_layers", "num_mtp_layers"), 0, minimum=0),
    )


def _parse_opt(cfg: _Config, name: str) -> ModelSpec:
    hidden = cfg.int_("hidden_size")
    heads = cfg.int_("num_attention_heads")
    if hidden % heads:
        raise cfg.error("num_attention_heads", f"({heads}) must divide hidden_size ({hidden})")
    act = cfg.str_("activation_function", "relu")
    if act not in ("relu", "gelu", "gelu_new"):
        raise cfg.error("activation_function", f"must be relu or gelu for OPT, got {act!r}")
    pre_norm = cfg.bool_("do_layer_norm_before", True)
    embed_dim = cfg.int_("word_embed_proj_dim", hidden)
    bias = cfg.bool_("enable_bias", True)
    return ModelSpec(
        name=name,
        family="opt",
        hidden=hidden,
        layers=cfg.int_("num_hidden_layers"),
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        ffn=cfg.int_("ffn_dim"),
        vocab=cfg.int_("vocab_size"),
        max_seq=cfg.int_("max_position_embeddings", 2048),
        gated_ffn=False,  # fc1 -> ReLU -> fc2
        norm="layernorm",
        # PretrainedConfig's default is True and OPTForCausalLM ties lm_head to embed_tokens.
        tie_embeddings=cfg.bool_("tie_word_embeddings", True),
        qkv_bias=bias,
        linear_bias=bias,
        learned_positions=True,
        # HF OPTDecoder: a final LayerNorm only for pre-norm models (OPT-350m is post-norm).
        final_norm=pre_norm and not cfg.bool_("_remove_final_layer_norm", False),
        embed_dim=0 if embed_dim == hidden else embed_dim,
        position_offset=2,
    )


FAMILIES: dict[str, Callable[[_Config, str], ModelSpec]] = {
    "llama": _parse_llama,
    "mistral": _parse_mistral,
    "qwen2": _parse_qwen2,
    "qwen2_moe": _parse_qwen2_moe,
    "qwen3": _parse_qwen3,
    "qwen3_moe": _parse_qwen3_moe,
    "mixtral": _parse_mixtral,
    "deepseek_v2": _parse_deepseek,
    "deepseek_v3": _parse_deepseek,
    "pangu_ultra_moe": _parse_deepseek,
    "opt": _parse_opt,
    "gpt_oss": _parse_gpt_oss,
    "nemotron": parse_nemotron,
    "gptj": parse_gptj,
    "falcon": parse_falcon,
    "phi3": _parse_phi3,
    "gpt_neox": parse_gpt_neox,
    "bloom": parse_bloom,
    "llama4": parse_llama4,
    "llama4_text": parse_llama4,
}


def read_config(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a config.json, or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    # sim.inputs: size cap, UTF-8, nesting depth, permissions (one reader for all inputs).
    data = read_json(path, "model config")
    if not isinstance(data, dict):
        # JSON's names for what it holds ("got NoneType" read like a crash)
        kind = {list: "an array", str: "a string", bool: "true/false", type(None): "null",
                int: "a number", float: "a number"}.get(type(data), type(data).__name__)
        raise InputError(f"{path}: expected a JSON object of config keys ({{...}}), got {kind}")
    return data


def _default_name(data: Mapping[str, Any], path: Path | None) -> str:
    given = data.get("_name_or_path")
    if isinstance(given, str) and given:
        return given.rstrip("/").split("/")[-1]
    if path is not None:
        path = path / "config.json" if path.is_dir() else path
        return path.parent.name if path.stem == "config" and path.parent.name else path.stem
    return str(data.get("model_type", "model"))


def from_hf_config(
    path_or_dict: str | Path | Mapping[str, Any], name: str | None = None
) -> ModelSpec:
    """A ``ModelSpec`` from a HF ``config.json`` path (or folder) or an already-parsed dict."""
    if isinstance(path_or_dict, Mapping):
        data, path = dict(path_or_dict), None
        source = f"model config '{name or data.get('model_type', '?')}'"
    else:
        path = Path(path_or_dict)
        data = read_config(path)
        source = str(path / "config.json" if path.is_dir() else path)
    cfg = _Config(data, source)
    if "model_type" not in data:
        raise InputError(
            f"{source}: missing required key 'model_type' (one of {', '.join(FAMILIES)})"
        )
    model_type = data["model_type"]
    parser = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if parser is None:
        close = difflib.get_close_matches(str(model_type), list(FAMILIES), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise InputError(
            f"{source}: key 'model_type' is {model_type!r}, which is not supported."
            f"{hint} Supported: {', '.join(FAMILIES)}"
        )
    return parser(cfg, name or _default_name(data, path))


def list_presets() -> list[str]:
    """Names of the built-in presets (``sim/models/presets/<name>.json``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def resolve_model(name_or_path: str | Path) -> tuple[Path, str | None]:
    """(config path, preset name or None) for a preset name or a path to a config."""
    candidate = Path(name_or_path)
    text = str(name_or_path)
    if candidate.suffix == ".json" or candidate.exists() or "/" in text or "\\" in text:
        return candidate, None
    preset = PRESET_DIR / f"{text}.json"
    if preset.exists():
        return preset, text
    names = list_presets()
    close = difflib.get_close_matches(text.lower(), names, n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise InputError(
        f"unknown model '{text}'.{hint} Presets: {', '.join(names)}; "
        "or pass a path to a Hugging Face config.json."
    )


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A preset by name (e.g. ``deepseek-v3``) or a HF config.json by path."""
    path, preset = resolve_model(name_or_path)
    return from_hf_config(path, name=preset)


def config_source(name_or_path: str | Path) -> str | None:
    """The ``_source`` note of a preset or config file (where its values come from)."""
    path, _ = resolve_model(name_or_path)
    source = read_config(path).get("_source")
    return str(source) if source is not None else None
