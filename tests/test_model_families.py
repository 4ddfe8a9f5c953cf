"""Families added to sim/models/hf_config.py: dense Qwen3 (and later Nemotron, ...).

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
