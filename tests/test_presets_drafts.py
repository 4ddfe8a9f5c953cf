"""Presets added for speculative-decoding drafts and current dense families: Llama 3.2
1B / 3B (the usual drafts of Llama 3.1 targets) and Qwen2.5 7B / 72B. Their counts are
computed here by hand from the published config shapes and checked against the model
cards' sizes (Llama 3.2: 1.23B / 3.21B; Qwen2.5: 7.61B / 72.7B)."""

import pytest
from xpusim.sim.models.counting import param_counts
from xpusim.sim.models.hf_config import load_model


def dense_params(h: int, inter: int, heads: int, kv: int, hd: int, layers: int, vocab: int,
                 tied: bool, qkv_bias: bool) -> int:
    attn = 2 * h * heads * hd + 2 * h * kv * hd  # q, o; k, v
    bias = (heads + 2 * kv) * hd if qkv_bias else 0
    mlp = 3 * h * inter  # gate, up, down
    tables = (1 if tied else 2) * vocab * h
    return tables + layers * (attn + bias + mlp + 2 * h) + h  # two norms a layer, final norm


@pytest.mark.parametrize(
    "name, shape, tied, bias, billions",
    [
        ("llama-3.2-1b", (2048, 8192, 32, 8, 64, 16, 128256), True, False, 1.24),
        ("llama-3.2-3b", (3072, 8192, 24, 8, 128, 28, 128256), True, False, 3.21),
        ("qwen2.5-7b", (3584, 18944, 28, 4, 128, 28, 152064), False, True, 7.62),
        ("qwen2.5-72b", (8192, 29568, 64, 8, 128, 80, 152064), False, True, 72.71),
    ],
)
def test_dense_preset_counts(name, shape, tied, bias, billions):
    spec = load_model(name)
    assert spec.tie_embeddings is tied
    assert spec.qkv_bias is bias
    total = param_counts(spec).total
    assert total == dense_params(*shape, tied, bias)
    assert round(total / 1e9, 2) == billions
