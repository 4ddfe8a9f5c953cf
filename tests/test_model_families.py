"""Families added to sim/models/hf_config.py: dense Qwen3, Nemotron, GPT-J, Falcon, Phi-3,
GPT-NeoX.

Every expected count is hand-computed from the published layer shapes (not read back
from the simulator) and checked against the model card's stated size.
"""

from __future__ import annotations

import json

import pytest
from xpusim.sim.errors import InputError
from xpusim.sim.models.counting import param_counts
from xpusim.sim.models.hf_config import PRESET_DIR, from_hf_config, load_model


def _preset(name: str) -> dict:
    return json.loads((PRESET_DIR / f"{name}.json").read_text())


def qwen3_params(h: int, inter: int, heads: int, kv: int, layers: int, vocab: int) -> int:
    """Dense Qwen3: q/o of heads x 128, k/v of kv x 128, SwiGLU, two RMSNorms a layer, a
    final norm, untied head. The per-head q/k RMSNorm (2 x 128 a layer) is not counted."""
    hd = 128
    attn = 2 * h * heads * hd + 2 * h * kv * hd
    return 2 * vocab * h + layers * (attn + 3 * h * inter + 2 * h) + h


@pytest.mark.parametrize(
    "name, shape, billions, non_embedding",
    [
        # Qwen3-8B model card: 8.2B parameters, 6.95B non-embedding.
        ("qwen3-8b", (4096, 12288, 32, 8, 36, 151_936), 8.2, 6.95),
        # Qwen3-32B model card: 32.8B parameters, 31.2B non-embedding.
        ("qwen3-32b", (5120, 25600, 64, 8, 64, 151_936), 32.8, 31.2),
    ],
)
def test_qwen3_dense_counts(name, shape, billions, non_embedding):
    expected = qwen3_params(*shape)
    assert expected == {"qwen3-8b": 8_190_726_144, "qwen3-32b": 32_762_106_880}[name]
    spec = load_model(name)
    assert spec.family == "qwen3" and spec.gated_ffn and not spec.qkv_bias
    assert spec.head_dim == 128 and not spec.tie_embeddings
    c = param_counts(spec)
    assert c.total == expected
    assert round(c.total / 1e9, 1) == billions
    digits = 2 if non_embedding == 6.95 else 1
    assert round((c.total - c.embedding - c.lm_head) / 1e9, digits) == non_embedding


def test_qwen3_head_dim_defaults_to_128_and_bias_follows_attention_bias():
    cfg = {k: v for k, v in _preset("qwen3-8b").items() if k != "head_dim"}
    cfg["hidden_size"] = 2048  # 2048 / 32 = 64, but Qwen3Config's default head_dim is 128
    spec = from_hf_config(cfg)
    assert spec.head_dim == 128
    biased = from_hf_config({**cfg, "attention_bias": True})
    diff = param_counts(biased).attention - param_counts(spec).attention
    assert diff == 36 * (32 + 2 * 8) * 128  # q/k/v biases, 36 layers


def test_qwen3_missing_key_names_file_and_key(tmp_path):
    cfg = _preset("qwen3-8b")
    del cfg["intermediate_size"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"config\.json: missing required key "
                                         r"'intermediate_size' for model_type 'qwen3'"):
        from_hf_config(path)


def test_qwen3_unsupported_variants_refused():
    cfg = _preset("qwen3-8b")
    with pytest.raises(InputError, match="use_sliding_window.*not supported"):
        from_hf_config({**cfg, "use_sliding_window": True})
    with pytest.raises(InputError, match="num_experts.*qwen3_moe"):
        from_hf_config({**cfg, "num_experts": 8})


def nemotron_params(h: int, inter: int, heads: int, kv: int, layers: int, head_dim: int) -> int:
    """Nemotron: q/o of heads x head_dim, k/v of kv x head_dim, no biases; up/down MLP
    (squared ReLU, not gated); two LayerNorms (weight + bias) a layer and a final one;
    untied 256,000-row embedding and head."""
    vocab = 256_000
    attn = 2 * h * heads * head_dim + 2 * h * kv * head_dim
    return 2 * vocab * h + layers * (attn + 2 * h * inter + 4 * h) + 2 * h


@pytest.mark.parametrize(
    "name, shape, total, non_embedding",
    [
        # Nemotron-4 15B report (arXiv 2402.16819 §2): 3.2B embedding (3.15 here: 2 x
        # 256,000 x 6,144, printed rounded up) and 12.5B non-embedding parameters.
        ("nemotron-4-15b", (6144, 24576, 48, 8, 32, 128), 15_628_775_424, 12.5),
        # Nemotron-4 340B report (arXiv 2406.11704): 9.4B embedding, 331.6B non-embedding.
        ("nemotron-4-340b", (18432, 73728, 96, 8, 96, 192), 341_029_195_776, 331.6),
        # NeMo Nemotron3Config8B / 22B (MHA); no stated size beyond the names.
        ("nemotron-3-8b", (4096, 16384, 32, 32, 32, 128), 8_540_135_424, 6.4),
        ("nemotron-3-22b", (6144, 24576, 48, 48, 40, 128), 21_266_116_608, 18.1),
    ],
)
def test_nemotron_counts(name, shape, total, non_embedding):
    assert nemotron_params(*shape) == total
    spec = load_model(name)
    assert spec.family == "nemotron" and not spec.gated_ffn and spec.norm == "layernorm"
    assert not (spec.qkv_bias or spec.linear_bias or spec.tie_embeddings)
    c = param_counts(spec)
    assert c.total == total
    assert round((c.total - c.embedding - c.lm_head) / 1e9, 1) == non_embedding


def test_nemotron_340b_embedding_and_flops_match_the_reports():
    c = param_counts(load_model("nemotron-4-340b"))
    assert round(c.embedding * 2 / 1e9, 1) == 9.4  # input table + untied head
    # NeMo 24.07 performance summary, Nemotron-340B: 678 model TFLOP/s/GPU at 322
    # tokens/s/GPU = 2,105 GFLOP/token; 6N + 12*L*h*s (non-causal) with N the matmul
    # weights (the head included): 6 * 336.31e9 + 12 * 96 * 18432 * 4096.
    from xpusim.sim.models.counting import model_flops_per_token

    flops = model_flops_per_token(load_model("nemotron-4-340b"), 4096, causal=False)
    n = 96 * (2 * 18432**2 + 2 * 18432 * 1536 + 2 * 18432 * 73728) + 256_000 * 18432
    assert flops == pytest.approx(6 * n + 12 * 96 * 18432 * 4096, rel=1e-12)
    assert flops * 322 / 1e12 == pytest.approx(678, abs=1)


def test_nemotron_variants_refused_and_missing_key(tmp_path):
    cfg = _preset("nemotron-4-15b")
    with pytest.raises(InputError, match="hidden_act.*not gated.*'swiglu'"):
        from_hf_config({**cfg, "hidden_act": "swiglu"})
    with pytest.raises(InputError, match="mlp_bias.*must equal attention_bias"):
        from_hf_config({**cfg, "mlp_bias": True})
    with pytest.raises(InputError, match=r"partial_rotary_factor.*\(0, 1\]"):
        from_hf_config({**cfg, "partial_rotary_factor": 1.5})
    biased = from_hf_config({**cfg, "mlp_bias": True, "attention_bias": True})
    extra = param_counts(biased).total - param_counts(from_hf_config(cfg)).total
    # q/k/v and o biases, up and down biases, per layer.
    assert extra == 32 * ((48 + 2 * 8) * 128 + 6144 + 24576 + 6144)
    del cfg["num_hidden_layers"]
    path = tmp_path / "nemotron.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"nemotron\.json: missing required key "
                                         r"'num_hidden_layers' for model_type 'nemotron'"):
        from_hf_config(path)


def test_gptj_6b_count():
    # GPT-J 6B: 28 layers of 4h^2 attention (no biases) + 2*4h*h MLP with biases (4h + h)
    # + ONE LayerNorm (2h); untied 50,400 x 4096 table and head; final LayerNorm.
    h, layers, vocab = 4096, 28, 50_400
    true_arch = 2 * vocab * h + layers * (4 * h * h + 8 * h * h + 5 * h + 2 * h) + 2 * h + vocab
    # linear_bias also counts an out_proj bias (h a layer) GPT-J lacks; the lm_head bias
    # (vocab) is not counted: +64,288.
    expected = true_arch + layers * h - vocab
    assert expected - true_arch == 64_288
    spec = load_model("gpt-j-6b")
    assert spec.family == "gptj" and spec.shared_norm and not spec.gated_ffn
    assert (spec.heads, spec.kv_heads, spec.head_dim, spec.ffn) == (16, 16, 256, 4 * h)
    c = param_counts(spec)
    assert c.total == expected == 6_050_947_072
    assert c.norms == layers * 2 * h + 2 * h  # one LayerNorm (weight + bias) a layer
    # EleutherAI's model card: 6,053,381,344 parameters; within 0.05 %.
    assert abs(c.total / 6_053_381_344 - 1) < 5e-4


def test_falcon_180b_count():
    # 80 layers: q/o 14848^2 each, k/v 14848 x 8 x 64 each, MLP 2 x 14848 x 59392, two
    # LayerNorms (2 x 2h); untied 65,024-row table and head, final LayerNorm.
    h, layers, vocab = 14848, 80, 65_024
    per_layer = 2 * h * h + 2 * h * 8 * 64 + 2 * h * 4 * h + 4 * h
    expected = 2 * vocab * h + layers * per_layer + 2 * h
    spec = load_model("falcon-180b")
    assert spec.family == "falcon" and not spec.shared_norm and spec.kv_heads == 8
    assert not (spec.qkv_bias or spec.linear_bias or spec.tie_embeddings)
    c = param_counts(spec)
    assert c.total == expected == 179_522_565_120
    assert round(c.total / 1e9) == 180  # the published "180B"


def _falcon_7b() -> dict:
    # tiiuae/falcon-7b's shape (HF FalconConfig keys): 32 layers, 4544 wide, 71 heads of
    # 64, multi-query, parallel attention with one input LayerNorm, no biases.
    return {"model_type": "falcon", "hidden_size": 4544, "num_attention_heads": 71,
            "num_hidden_layers": 32, "vocab_size": 65_024, "multi_query": True,
            "parallel_attn": True, "new_decoder_architecture": False, "bias": False}


def test_falcon_old_architecture_shares_one_norm():
    h, layers, vocab = 4544, 32, 65_024
    spec = from_hf_config(_falcon_7b())
    assert spec.shared_norm and spec.kv_heads == 1 and spec.tie_embeddings
    qkv = h * (h + 2 * 64)  # query_key_value: 71 query heads + 1 K + 1 V head of 64
    per_layer = qkv + h * h + 2 * h * 4 * h + 2 * h  # dense, MLP, one LayerNorm
    assert param_counts(spec).total == vocab * h + layers * per_layer + 2 * h == 6_921_720_704
    sequential = from_hf_config({**_falcon_7b(), "parallel_attn": False})
    assert not sequential.shared_norm
    assert param_counts(sequential).total - param_counts(spec).total == layers * 2 * h
    biased = from_hf_config({**_falcon_7b(), "bias": True})
    # query_key_value (h + 128), dense (h), dense_h_to_4h (4h), dense_4h_to_h (h).
    assert param_counts(biased).total - param_counts(spec).total == layers * (h + 128 + 6 * h)


def test_shared_norm_lowering_drops_the_second_norm_only():
    from xpusim.sim.workloads.transformer import Sharding, StepShape, layer_forward

    shared = from_hf_config(_falcon_7b())
    sequential = from_hf_config({**_falcon_7b(), "parallel_attn": False})
    shape = StepShape(1, 128, 128, True)
    names = [it.name for it in layer_forward(shared, 0, shape, Sharding(2, 1, True))]
    seq_names = [it.name for it in layer_forward(sequential, 0, shape, Sharding(2, 1, True))]
    assert set(seq_names) - set(names) == {"ffn_norm", "ffn_sp_gather"}
    # Both blocks still reduce over TP and add to the residual (TensorRT-LLM's Falcon
    # Attention and MLP each end in an all-reduce).
    for name in ("attn_tp_reduce", "ffn_tp_reduce", "attn_residual", "ffn_residual"):
        assert name in names


def test_gptj_falcon_refusals_and_missing_keys(tmp_path):
    cfg = _preset("falcon-180b")
    with pytest.raises(InputError, match="alibi"):
        from_hf_config({**cfg, "alibi": True})
    with pytest.raises(InputError, match="num_ln_in_parallel_attn"):
        from_hf_config({**cfg, "num_ln_in_parallel_attn": 1})
    with pytest.raises(InputError, match="num_kv_heads.*must divide"):
        from_hf_config({**cfg, "num_kv_heads": 7})
    gptj = _preset("gpt-j-6b")
    with pytest.raises(InputError, match="rotary_dim"):
        from_hf_config({**gptj, "rotary_dim": 512})
    with pytest.raises(InputError, match="activation_function"):
        from_hf_config({**gptj, "activation_function": "swiglu"})
    del gptj["n_embd"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(gptj))
    with pytest.raises(InputError, match=r"config\.json: missing required key 'n_embd' "
                                         r"for model_type 'gptj'"):
        from_hf_config(path)


def test_phi3_mini_count_and_window():
    # 32 layers of MHA 32 x 96 (4h^2), SwiGLU 3 x 3072 x 8192, two RMSNorms; untied
    # 32,064-row table and head; final norm. Published: 3.8B.
    h, layers, vocab = 3072, 32, 32_064
    expected = 2 * vocab * h + layers * (4 * h * h + 3 * h * 8192 + 2 * h) + h
    spec = load_model("phi-3-mini-4k")
    assert spec.family == "phi3" and spec.gated_ffn and not spec.qkv_bias
    assert spec.head_dim == 96 and spec.layer_windows == (2047,) * layers
    c = param_counts(spec)
    assert c.total == expected == 3_821_079_552 and round(c.total / 1e9, 1) == 3.8
    unwindowed = from_hf_config({**_preset("phi-3-mini-4k"), "sliding_window": None})
    assert unwindowed.layer_windows == ()
    with pytest.raises(InputError, match="partial_rotary_factor"):
        from_hf_config({**_preset("phi-3-mini-4k"), "partial_rotary_factor": 0})
    with pytest.raises(InputError, match="hidden_act.*SiLU-gated"):
        from_hf_config({**_preset("phi-3-mini-4k"), "hidden_act": "gelu"})


def _neox_20b() -> dict:
    # EleutherAI/gpt-neox-20b's shape (HF GPTNeoXConfig keys).
    return {"model_type": "gpt_neox", "hidden_size": 6144, "num_attention_heads": 64,
            "num_hidden_layers": 44, "intermediate_size": 24576, "vocab_size": 50_432,
            "rotary_pct": 0.25, "use_parallel_residual": True, "max_position_embeddings": 2048,
            "tie_word_embeddings": False}


def test_gpt_neox_20b_count():
    # Per layer: query_key_value 3h^2 + 3h, dense h^2 + h, MLP 2 x h x 4h + 4h + h, two
    # LayerNorms 4h; untied 50,432-row embed_in and embed_out; final LayerNorm 2h.
    # Published (HF model card): 20,554,567,680.
    h, layers, vocab = 6144, 44, 50_432
    per_layer = 4 * h * h + 4 * h + 8 * h * h + 5 * h + 4 * h
    expected = 2 * vocab * h + layers * per_layer + 2 * h
    spec = from_hf_config(_neox_20b())
    assert spec.family == "gpt_neox" and not spec.shared_norm and not spec.gated_ffn
    assert param_counts(spec).total == expected == 20_554_567_680
    sequential = from_hf_config({**_neox_20b(), "use_parallel_residual": False})
    assert param_counts(sequential).total == expected  # two norms either way
    with pytest.raises(InputError, match="attention_bias"):
        from_hf_config({**_neox_20b(), "attention_bias": False})
    with pytest.raises(InputError, match="missing required key 'intermediate_size' for "
                                         "model_type 'gpt_neox'"):
        from_hf_config({k: v for k, v in _neox_20b().items() if k != "intermediate_size"})
