"""gpt-oss (HF model_type "gpt_oss"): presets, config loading, counts and per-layer windows.

Expected counts are hand-computed from the published shapes (HF modeling_gpt_oss:
q/k/v/o with biases, one sink per head, experts with gate_up and down biases, a biased
router, two RMSNorms a layer, untied embedding and head).
"""

from __future__ import annotations

import json

import pytest
from xpusim.sim.errors import InputError
from xpusim.sim.ir import OpKind
from xpusim.sim.models.counting import attention_flops_per_token, param_counts
from xpusim.sim.models.hf_config import from_hf_config, load_model
from xpusim.sim.workloads.transformer import StepShape, layer_forward


def gpt_oss_params(layers: int, experts: int, top_k: int = 4, h: int = 2880, heads: int = 64,
                   kv: int = 8, d: int = 64, f: int = 2880, vocab: int = 201088):
    """(total, active excluding the input embedding) from the layer shapes."""
    attn = h * heads * d + 2 * h * kv * d + heads * d * h  # q, k, v, o
    attn += (heads + 2 * kv) * d + h + heads  # q/k/v/o biases, sinks
    expert = 3 * h * f + 2 * f + h  # gate_up, down, their biases
    router = h * experts + experts
    norms = 2 * h
    total = layers * (attn + experts * expert + router + norms) + 2 * vocab * h + h
    active = layers * (attn + top_k * expert + router + norms) + vocab * h + h
    return total, active


@pytest.mark.parametrize("name, layers, experts, total_b, active_b", [
    ("gpt-oss-120b", 36, 128, 116.8, 5.1),  # model card (arXiv 2508.10925) s2
    ("gpt-oss-20b", 24, 32, 20.9, 3.6),
])
def test_preset_counts_match_the_published_sizes(name, layers, experts, total_b, active_b):
    spec = load_model(name)
    counts = param_counts(spec)
    total, active = gpt_oss_params(layers, experts)
    assert counts.total == total
    assert counts.activated_excl_embedding == active
    # The model card's figures, as printed (one decimal): active excludes the input table.
    assert round(counts.total / 1e9, 1) == total_b
    assert round(counts.activated_excl_embedding / 1e9, 1) == active_b


def test_120b_exact_counts():
    counts = param_counts(load_model("gpt-oss-120b"))
    assert counts.total == 116_829_156_672
    assert counts.activated_excl_embedding == 5_132_849_472


def test_preset_layers_alternate_sliding_first():
    spec = load_model("gpt-oss-120b")
    assert spec.family == "gpt_oss"
    assert spec.layer_windows == (128, 0) * 18
    assert spec.moe is not None and (spec.moe.num_experts, spec.moe.top_k) == (128, 4)
    assert spec.swiglu_limit == 7.0 and spec.attention_sinks and spec.router_bias


SMALL = {
    "model_type": "gpt_oss", "hidden_size": 64, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
    "vocab_size": 100, "sliding_window": 8,
    "layer_types": ["sliding_attention", "full_attention", "full_attention", "sliding_attention"],
}


def test_small_config_from_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SMALL))
    spec = from_hf_config(path)
    assert spec.layer_windows == (8, 0, 0, 8)
    counts = param_counts(spec)
    # attention 3 x 4096 + q/k/v biases 128 + o bias 64 + sinks 4 = 12,484; an expert
    # 6,144 + 128 biases; router 256 + 4; norms 128. Four layers, tables 2 x 6,400, norm 64.
    layer = 12_484 + 4 * 6_272 + 260 + 128
    assert counts.total == 4 * layer + 12_800 + 64 == 164_704
    assert counts.activated == 4 * (12_484 + 2 * 6_272 + 260 + 128) + 12_800 + 64


def test_layer_types_default_alternates():
    cfg = {k: v for k, v in SMALL.items() if k != "layer_types"}
    assert from_hf_config(cfg).layer_windows == (8, 0, 8, 0)


@pytest.mark.parametrize("change, key", [
    ({"layer_types": ["sliding_attention"]}, "layer_types"),
    ({"layer_types": ["sliding_attention", "full", "full_attention", "full_attention"]},
     "layer_types"),
    ({"sliding_window": None}, "sliding_window"),
    ({"sliding_window": 0}, "sliding_window"),
    ({"swiglu_limit": "7"}, "swiglu_limit"),
    ({"num_experts_per_tok": 5}, "num_experts_per_tok"),
])
def test_malformed_config_names_the_field(change, key):
    with pytest.raises(InputError, match=f"'{key}'"):
        from_hf_config({**SMALL, **change})


def test_attention_flops_per_token_by_hand():
    spec = load_model("gpt-oss-120b")
    seq = 4096
    width = 2 * (64 * 64 + 64 * 64)  # 2 x (Q.K^T + P.V) widths
    full = width * seq / 2  # causal: mean context s/2
    # Sliding layers: 128*129/2 pairs over the first 128 queries, 128 for each later one.
    local = width * (128 * 129 / 2 + (seq - 128) * 128) / seq
    assert attention_flops_per_token(spec, seq) == pytest.approx(18 * full + 18 * local,
                                                                 rel=1e-12)


def test_layer_ops_carry_the_layer_window():
    spec = load_model("gpt-oss-20b")
    shape = StepShape(1, 1024, 1024, True)
    windows = []
    for layer in (0, 1):
        attn = [op for op in layer_forward(spec, layer, shape)
                if getattr(op, "kind", None) == OpKind.ATTENTION]
        windows.append(attn[0].shape.window)
    assert windows == [128, 0]
    assert spec.layer_kind(0) != spec.layer_kind(1)


def test_decode_step_groups_layers_by_window_and_reads_only_the_window():
    from xpusim.sim.inference.lowering import StepBatch, plan_for, step_blocks

    spec = load_model("gpt-oss-20b")
    blocks = step_blocks(spec, StepBatch.for_phase("decode", 2, 4095), plan_for(1, None))
    layers = blocks[1:-1]  # embedding first, LM head last
    # Sliding and full layers alternate: 24 blocks of one layer each, two distinct kinds.
    assert [count for _, count in layers] == [1] * 24
    assert len({id(block) for block, _ in layers}) == 2
    attn = [[op for op in block if getattr(op, "kind", None) == OpKind.ATTENTION][0]
            for block, _ in layers[:2]]
    # 2 sequences x 8 KV heads x (64 + 64) x 2 bytes per key; Q and O: 64 heads x 128 x 2.
    q_o = 2 * 64 * 128 * 2
    assert attn[0].main_bytes == q_o + 2 * 8 * 128 * 128 * 2  # window: 128 keys
    assert attn[1].main_bytes == q_o + 2 * 8 * 4096 * 128 * 2  # full: all 4,096
