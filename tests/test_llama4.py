"""Llama 4 Scout and Maverick: parameter counts against the published sizes, which layers
are MoE and chunked, and the chunked attention's pairs, FLOPs, lowering and KV cache.

Every expected value is hand-computed from the config's layer shapes (HF
modeling_llama4), not read back from the simulator.
"""

from __future__ import annotations

import pytest
from xpusim.sim.errors import InputError
from xpusim.sim.inference.kvcache import kv_layout
from xpusim.sim.ir import AttentionShape, attention_pairs, chunked_attention_pairs
from xpusim.sim.models.counting import attention_flops_per_token, flops_per_token, param_counts
from xpusim.sim.models.hf_config import from_hf_config, load_model
from xpusim.sim.workloads.transformer import (
    Sharding,
    StepShape,
    attention_core_op,
    chunked_step,
)

H, L, V, HD, HEADS, KV = 5120, 48, 202_048, 128, 40, 8
EXPERT, DENSE, CHUNK = 8192, 16384, 8192
ATTN = H * HEADS * HD + 2 * H * KV * HD + HEADS * HD * H  # q, k, v, o (no biases)
EXPERT_P = 3 * H * EXPERT  # gate, up, down of one SwiGLU expert
DENSE_P = 3 * H * DENSE
EMB = V * H  # embed_tokens; lm_head is as large (untied)
# Vision encoder + projector of the published checkpoint (not simulated): 34 ViT layers
# of 23,807,872 weights, embeddings, the adapter MLP and the projector, 871,932,416 in
# all (the per-module listing of Llama-4-Scout-17B-16E).
VISION = 871_932_416


def _moe_layer(experts: int) -> int:
    # routed experts + the shared expert + the bias-free router + two RMSNorms
    return ATTN + experts * EXPERT_P + EXPERT_P + H * experts + 2 * H


def test_scout_counts_match_published():
    c = param_counts(load_model("llama-4-scout"))
    total = 2 * EMB + L * _moe_layer(16) + H  # final norm
    assert c.total == total == 107_769_861_120
    # one routed expert of 16 per token
    assert c.activated == total - L * 15 * EXPERT_P == 17_172_894_720
    assert round(c.activated / 1e9) == 17  # "17B active"
    assert round((c.total + VISION) / 1e9) == 109  # "~109B total" with the vision encoder


def test_maverick_counts_match_published():
    c = param_counts(load_model("llama-4-maverick"))
    dense_layer = ATTN + DENSE_P + 2 * H
    total = 2 * EMB + 24 * _moe_layer(128) + 24 * dense_layer + H
    assert c.total == total == 400_711_848_960
    assert c.activated == total - 24 * 127 * EXPERT_P == 17_184_691_200
    assert round(c.activated / 1e9) == 17  # "17B active"
    assert round((c.total + VISION) / 1e9) in (400, 401, 402)  # "~400B" / "402B"


def test_scout_model_flops_match_nemo_table():
    # NeMo 25.07 performance summary, Llama 4 Scout on 64 GB200 at seq 8192 (row T39):
    # 13,783 tokens/s/GPU and 1,501 model TFLOP/s/GPU, i.e. 108.90 GFLOP a token (both
    # figures printed to 4 digits). Ours: 3 x (2 x 16.14B matmul weights a token incl. the
    # head + the chunked/full attention at 8192, where a chunk is the whole sequence).
    spec = load_model("llama-4-scout")
    ours = flops_per_token(spec, 8192, training=True)
    assert ours == pytest.approx(1501e12 / 13783, rel=5e-4)


def test_moe_and_chunked_layers():
    scout, maverick = load_model("llama-4-scout"), load_model("llama-4-maverick")
    assert all(scout.is_moe_layer(i) for i in range(L))
    # interleave_moe_layer_step 2: moe_layers = range(1, 48, 2), dense even layers
    assert [i for i in range(L) if maverick.is_moe_layer(i)] == list(range(1, L, 2))
    assert maverick.moe is not None and maverick.moe.dense_ffn == DENSE
    for spec in (scout, maverick):
        # NoPE every 4th layer (3, 7, ...) attends fully; the RoPE layers are chunked
        assert [spec.attention_chunk(i) for i in range(8)] == [CHUNK] * 3 + [0] + [CHUNK] * 3 + [0]
        assert sum(1 for i in range(L) if spec.attention_chunk(i)) == 36
        assert spec.layer_windows == ()


def test_chunked_pairs_hand_computed():
    c = CHUNK
    # two whole chunks: two independent causal chunks
    assert chunked_attention_pairs(2 * c, 2 * c, c) == 2 * c * (c + 1) / 2
    # inside the first chunk: plain causal attention
    assert chunked_attention_pairs(100, 100, c) == attention_pairs(100, 100, True)
    # decode at position 2c + 4: the 5 keys of its chunk so far
    assert chunked_attention_pairs(1, 2 * c + 5, c) == 5
    # 3 queries at positions c - 1, c, c + 1: 8192 + 1 + 2 keys
    assert chunked_attention_pairs(3, c + 2, c) == c + 1 + 2


def test_attention_flops_per_token_with_chunks():
    spec = load_model("llama-4-scout")
    width = 2.0 * (HEADS * HD + HEADS * HD)  # Q.K^T and P.V per key, forward
    s = 4 * CHUNK
    full = 12 * width * s / 2  # the NoPE layers see the whole causal context
    chunked = 36 * width * (CHUNK + 1) / 2  # mean keys per query of a whole chunk
    assert attention_flops_per_token(spec, s) == pytest.approx(full + chunked, rel=1e-12)


def test_chunked_step_shapes():
    # training / prefill of 2 whole chunks: 2 x batch sequences of one chunk
    assert chunked_step(StepShape(3, 2 * CHUNK, 2 * CHUNK), CHUNK) == StepShape(6, CHUNK, CHUNK)
    # decode: the keys of the current chunk only
    assert chunked_step(StepShape(5, 1, 2 * CHUNK + 5), CHUNK) == StepShape(5, 1, 5)
    # inside the first chunk: unchanged (T39's seq 8192)
    assert chunked_step(StepShape(1, CHUNK, CHUNK), CHUNK) == StepShape(1, CHUNK, CHUNK)
    # a prompt of 1.5 chunks: 2 pieces whose causal pairs are the chunked pairs
    s = 3 * CHUNK // 2
    v = chunked_step(StepShape(1, s, s), CHUNK)
    assert v.sequences == 2 and v.q_len == s / 2
    assert 2 * attention_pairs(v.q_len, v.kv_len, True) == pytest.approx(
        chunked_attention_pairs(s, s, CHUNK), rel=1e-12)


def test_lowering_chunked_vs_full_layer():
    spec = load_model("llama-4-scout")
    shape = StepShape(1, 4 * CHUNK, 4 * CHUNK)
    chunked = attention_core_op(spec, shape, Sharding(), "bf16", layer=0).shape
    full = attention_core_op(spec, shape, Sharding(), "bf16", layer=3).shape
    assert isinstance(chunked, AttentionShape) and isinstance(full, AttentionShape)
    assert (chunked.batch, chunked.q_len, chunked.kv_len) == (4, CHUNK, CHUNK)
    assert (full.batch, full.q_len, full.kv_len) == (1, 4 * CHUNK, 4 * CHUNK)
    # a decode step at context 2 x 8192 + 4: the chunked layer reads 5 keys, the full 16,389
    step = StepShape(4, 1, 2 * CHUNK + 5)
    chunked = attention_core_op(spec, step, Sharding(), "bf16", layer=0).shape
    full = attention_core_op(spec, step, Sharding(), "bf16", layer=3).shape
    assert isinstance(chunked, AttentionShape) and isinstance(full, AttentionShape)
    assert (chunked.batch, chunked.kv_len, full.kv_len) == (4, 5, 2 * CHUNK + 5)


def test_kv_layout_holds_one_chunk_on_chunked_layers():
    lay = kv_layout(load_model("llama-4-scout"), "window", block=16)
    # 12 full and 36 chunked layers: groups of gcd 12, 1 full + 3 chunked per group;
    # a chunked layer holds at most the 8192 / 16 blocks of its current chunk
    assert (lay.full, lay.sliding, lay.group, lay.cap) == (1, 3, 12, CHUNK // 16)
    assert lay.units(3 * CHUNK) == 3 * CHUNK // 16 + 3 * CHUNK // 16
    # a chunk that is not a whole number of blocks may straddle one more block
    assert kv_layout(load_model("llama-4-scout"), "window", block=24).cap == 342 + 1  # ceil(8192/24) + 1


def _text(**over):
    text = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 32,
            "intermediate_size_mlp": 128, "vocab_size": 100, "num_local_experts": 4,
            "interleave_moe_layer_step": 2, "attention_chunk_size": 8}
    text.update(over)
    return text


def test_parser_flat_text_config_and_defaults():
    spec = from_hf_config({"model_type": "llama4_text", **_text()})
    assert [spec.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert spec.layer_chunks == (8, 8, 8, 0)
    nested = from_hf_config({"model_type": "llama4", "text_config": _text()})
    assert nested.layer_chunks == spec.layer_chunks and nested.moe == spec.moe
    explicit = from_hf_config({"model_type": "llama4_text", **_text(
        layer_types=["full_attention", "chunked_attention"] * 2)})
    assert explicit.layer_chunks == (0, 8, 0, 8)
    assert from_hf_config({"model_type": "llama4_text",
                           **_text(attention_chunk_size=None)}).layer_chunks == ()


def test_parser_refuses_unsupported_moe_layers():
    with pytest.raises(InputError, match="moe_layers"):
        from_hf_config({"model_type": "llama4_text", **_text(moe_layers=[0, 1])})
    with pytest.raises(InputError, match="text_config"):
        from_hf_config({"model_type": "llama4"})


def test_context_parallel_with_chunks_refused(capsys):
    from xpusim.sim.cli.main import main

    rc = main(["train", "--model", "llama-4-scout", "--system", "gb200-nvl72", "--devices", "8",
               "--nodes", "1", "--tp", "1", "--cp", "2", "--ep", "4", "--dp", "4", "--mbs", "1",
               "--gbs", "8", "--seq", "16384"])
    assert rc != 0 and "chunked attention" in capsys.readouterr().err
