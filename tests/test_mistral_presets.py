"""Presets mistral-7b (Mistral-7B-v0.1) and mixtral-8x22b (Mixtral-8x22B-v0.1), added for the
TensorRT-LLM v0.17 perf-overview rows (I21, sim/data/validation/serving.toml).

Expected counts are hand-computed from the published shapes (not read back from the
simulator) and checked against the published sizes: Mistral 7B "7.24B" (the HF model card's
safetensors size), Mixtral 8x22B "141B total, 39B active" (Mistral AI's announcement).
"""

from __future__ import annotations

from xpusim.sim.models.counting import param_counts
from xpusim.sim.models.hf_config import load_model


def _attn(h: int, heads: int, kv: int, head_dim: int = 128) -> int:
    # q and o are heads x head_dim wide, k and v kv x head_dim; no biases
    return 2 * h * heads * head_dim + 2 * h * kv * head_dim


def test_mistral_7b_v01_count_and_window():
    h, layers, vocab, inter = 4096, 32, 32_000, 14_336
    per_layer = _attn(h, 32, 8) + 3 * h * inter + 2 * h  # SwiGLU, two RMSNorms
    expected = 2 * vocab * h + layers * per_layer + h  # untied table and head, final norm
    spec = load_model("mistral-7b")
    assert spec.family == "mistral" and spec.gated_ffn and not spec.qkv_bias
    # v0.1's sliding_window: 4096 on every layer (the cost model windows attention with it)
    assert spec.layer_windows == (4096,) * layers
    c = param_counts(spec)
    assert c.total == expected == 7_241_732_096
    assert round(c.total / 1e9, 2) == 7.24


def test_mixtral_8x22b_counts():
    h, layers, vocab, inter, experts = 6144, 56, 32_000, 16_384, 8
    attn = _attn(h, 48, 8)
    expert = 3 * h * inter
    router = h * experts
    per_layer = attn + experts * expert + router + 2 * h
    expected_total = 2 * vocab * h + layers * per_layer + h
    expected_active = expected_total - layers * (experts - 2) * expert  # top-2
    spec = load_model("mixtral-8x22b")
    assert spec.family == "mixtral" and spec.layer_windows == ()  # no sliding_window key
    c = param_counts(spec)
    assert c.total == expected_total == 140_620_634_112
    assert c.activated == expected_active == 39_152_031_744
    assert round(c.total / 1e9) == 141 and round(c.activated / 1e9) == 39
