"""Families added to sim/models/hf_config.py: dense Qwen3, Nemotron.

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
