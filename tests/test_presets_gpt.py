"""Parameter counts of the presets the validation corpus needs, against published sizes.

Every expected value is hand-computed from the published architecture (not read back
from the simulator): the GPT family from Megatron-LM's eq. 2, the Llama and Qwen3
family from the layer shapes of their config.json.
"""

from __future__ import annotations

import pytest
from xpusim.sim.models.counting import param_counts
from xpusim.sim.models.hf_config import load_model

V_MEGATRON, S_MEGATRON = 51_200, 2_048


def megatron_params(layers: int, hidden: int, vocab: int = V_MEGATRON, seq: int = S_MEGATRON):
    """Narayanan et al. (SC'21) eq. 2: P = 12lh^2 (1 + 13/12h + (V + s)/12lh), in integers.

    12lh^2 weights, 13h biases and LayerNorm weights per layer, word and position
    embeddings (tied head)."""
    return 12 * layers * hidden**2 + 13 * layers * hidden + (vocab + seq) * hidden


# Table 1 of arXiv 2104.04473 (and Table 2 for the 174.6B model): name, printed
# billions, heads, hidden, layers.
TABLE1 = [
    ("gpt3-1.7b", 1.7, 24, 2304, 24),
    ("gpt3-3.6b", 3.6, 32, 3072, 30),
    ("gpt3-7.5b", 7.5, 32, 4096, 36),
    ("gpt3-18b", 18.4, 48, 6144, 40),
    ("gpt3-39b", 39.1, 64, 8192, 48),
    ("gpt3-76b", 76.1, 80, 10240, 60),
    ("gpt3-145b", 145.6, 96, 12288, 80),
    ("gpt3-175b", 174.6, 96, 12288, 96),
    ("gpt3-310b", 310.1, 128, 16384, 96),
    ("gpt3-530b", 529.6, 128, 20480, 105),
    ("gpt3-1t", 1008.0, 160, 25600, 128),
]


@pytest.mark.parametrize("name, billions, heads, hidden, layers", TABLE1)
def test_megatron_table1_gpt_counts(name, billions, heads, hidden, layers):
    spec = load_model(name)
    assert (spec.heads, spec.hidden, spec.layers, spec.vocab) == (heads, hidden, layers, 51_200)
    assert spec.ffn == 4 * hidden and not spec.gated_ffn and spec.learned_positions
    total = param_counts(spec).total
    # The OPT layout adds what eq. 2 leaves out: the final LayerNorm (2h) and the two
    # extra position rows of OPT's learned-position offset (2h).
    assert total == megatron_params(layers, hidden) + 4 * hidden
    # The paper prints billions to one decimal.
    assert round(total / 1e9, 1) == billions


@pytest.mark.parametrize(
    "name, layers, hidden, billions", [("gpt3-1.3b", 24, 2048, 1.3), ("gpt3-2.7b", 32, 2560, 2.7)]
)
def test_fa2_gpt3_counts(name, layers, hidden, billions):
    # Brown et al. (2020) Table 2.1 shapes with the GPT-2 vocabulary (50,257).
    total = param_counts(load_model(name)).total
    assert total == megatron_params(layers, hidden, vocab=50_257) + 4 * hidden
    assert round(total / 1e9, 1) == billions


def llama_params(h: int, inter: int, heads: int, kv: int, layers: int, vocab: int) -> int:
    head_dim = h // heads
    attn = 2 * h * h + 2 * h * kv * head_dim  # q, o; k, v
    mlp = 3 * h * inter  # gate, up, down
    return 2 * vocab * h + layers * (attn + mlp + 2 * h) + h  # untied head, 2 norms, final


@pytest.mark.parametrize(
    "name, shape, published",
    [
        # published checkpoint sizes (HF model pages): 13.0B, 69.0B, 70.6B, 8.03B, 405.9B
        ("llama-2-13b", (5120, 13824, 40, 40, 40, 32000), 13_015_864_320),
        ("llama-2-70b", (8192, 28672, 64, 8, 80, 32000), 68_976_648_192),
        ("llama-3-70b", (8192, 28672, 64, 8, 80, 128256), 70_553_706_496),
        ("llama-3.1-70b", (8192, 28672, 64, 8, 80, 128256), 70_553_706_496),
        ("llama-3.1-8b", (4096, 14336, 32, 8, 32, 128256), 8_030_261_248),
        ("llama-3.1-405b", (16384, 53248, 128, 8, 126, 128256), 405_853_388_800),
    ],
)
def test_llama_counts(name, shape, published):
    assert llama_params(*shape) == published
    assert param_counts(load_model(name)).total == published


def test_qwen3_235b_a22b():
    # 94 layers, hidden 4096, 64 query heads and 4 KV heads of 128, 128 experts of 1536,
    # top-8, no shared expert, vocabulary 151,936 untied. Published: 235B total, 22B active.
    h, hd, layers, vocab, e_ffn = 4096, 128, 94, 151_936, 1536
    attn = 2 * h * 64 * hd + 2 * h * 4 * hd
    router = h * 128
    expert = 3 * h * e_ffn
    per_layer_fixed = attn + router + 2 * h
    total = 2 * vocab * h + layers * (per_layer_fixed + 128 * expert) + h
    active = 2 * vocab * h + layers * (per_layer_fixed + 8 * expert) + h
    spec = load_model("qwen3-235b-a22b")
    assert not spec.qkv_bias and spec.moe.shared_experts == 0
    c = param_counts(spec)
    assert c.total == total
    assert round(c.total / 1e9) == 235
    assert c.activated == active
    assert round(c.activated / 1e9) == 22


def test_qwen3_30b_a3b():
    # 48 layers, hidden 2048, 32 query heads and 4 KV heads of 128, 128 experts of 768,
    # top-8, no shared expert, vocabulary 151,936 untied. Published: 30.5B total, 3.3B active.
    h, hd, layers, vocab, e_ffn = 2048, 128, 48, 151_936, 768
    attn = 2 * h * 32 * hd + 2 * h * 4 * hd
    per_layer_fixed = attn + h * 128 + 2 * h  # attention, router, two norms
    expert = 3 * h * e_ffn
    total = 2 * vocab * h + layers * (per_layer_fixed + 128 * expert) + h
    active = 2 * vocab * h + layers * (per_layer_fixed + 8 * expert) + h
    assert (total, active) == (30_532_110_336, 3_353_020_416)
    spec = load_model("qwen3-30b-a3b")
    assert not spec.qkv_bias and spec.moe.shared_experts == 0 and spec.moe.top_k == 8
    c = param_counts(spec)
    assert c.total == total and round(c.total / 1e8) == 305
    assert c.activated == active and round(c.activated / 1e8) == 34


@pytest.mark.parametrize(
    "name, layers, hidden, heads", [("gpt3-nemo-5b", 24, 4096, 32), ("gpt3-nemo-20b", 44, 6144, 48)]
)
def test_nemo_gpt3_counts(name, layers, hidden, heads):
    # NeMo 2.0 GPTConfig5B / GPTConfig20B (ffn 4h), GPT-2 BPE padded to 50,304.
    spec = load_model(name)
    assert (spec.heads, spec.hidden, spec.layers, spec.vocab) == (heads, hidden, layers, 50_304)
    assert spec.ffn == 4 * hidden and not spec.gated_ffn and spec.learned_positions
    total = param_counts(spec).total
    assert total == megatron_params(layers, hidden, vocab=50_304) + 4 * hidden
    # 5,047,566,336 and 20,256,522,240: the "5B" and "20B" of the names.
    assert round(total / 1e9) == {"gpt3-nemo-5b": 5, "gpt3-nemo-20b": 20}[name]


# MosaicML llm-foundry's benchmark MPT models (scripts/train/benchmarking/README.md @ 061f2c7,
# the NumParams column at seq 2048): name, d_model, n_heads, n_layers, NumParams.
MPT_BENCH = [
    ("mpt-bench-125m", 768, 12, 12, 125_311_488),
    ("mpt-bench-350m", 1024, 16, 24, 355_985_408),
    ("mpt-bench-760m", 1536, 12, 24, 760_470_528),
    ("mpt-bench-1b", 2048, 16, 24, 1_315_950_592),
    ("mpt-bench-3b", 2560, 20, 32, 2_651_837_440),
    ("mpt-bench-7b", 4096, 32, 32, 6_658_859_008),
    ("mpt-bench-13b", 5120, 40, 40, 12_853_954_560),
    ("mpt-bench-30b", 7168, 56, 48, 29_975_214_080),
    ("mpt-bench-70b", 8192, 64, 80, 64_862_437_376),
]


@pytest.mark.parametrize("name, hidden, heads, layers, published", MPT_BENCH)
def test_mpt_bench_counts(name, hidden, heads, layers, published):
    spec = load_model(name)
    assert (spec.hidden, spec.heads, spec.layers, spec.vocab) == (hidden, heads, layers, 50_368)
    assert spec.ffn == 4 * hidden and not spec.gated_ffn and spec.tie_embeddings
    # The README's count is eq. 2's layout plus the final LayerNorm (2h) with V = 50,368 and
    # a 2,048-row position table; the OPT layout adds OPT's two offset rows (2h).
    assert published == megatron_params(layers, hidden, vocab=50_368) + 2 * hidden
    assert param_counts(spec).total == published + 2 * hidden
