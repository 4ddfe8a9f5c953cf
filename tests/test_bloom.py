"""The BLOOM family (HF model_type "bloom"): parameter counts against the model cards,
FLOPs per token, and the two ops BLOOM adds to the lowering (the embedding LayerNorm
and, with unfused attention, ALiBi's bias pass). Every expected value is hand-computed
from the published architecture (bigscience/bloom, bigscience/bloom-7b1 config.json)."""

from __future__ import annotations

import pytest
from xpusim.sim.errors import InputError
from xpusim.sim.ir import OpKind
from xpusim.sim.models.counting import forward_flops_breakdown, param_counts
from xpusim.sim.models.hf_config import from_hf_config, load_model
from xpusim.sim.parallel import ParallelPlan, validate_plan
from xpusim.sim.training import layers as L
from xpusim.sim.training.backward import backward_op
from xpusim.sim.workloads.transformer import Sharding, embedding_forward

V = 250_880


def bloom_params(layers: int, h: int) -> int:
    """V·h (tied table) + 2h (word_embeddings_layernorm) + per layer 12h² weights
    (QKV 3h², dense h², MLP 8h²) and 13h (QKV 3h, dense h, MLP 4h + h biases, two
    LayerNorms 4h) + 2h (ln_f)."""
    return V * h + 2 * h + layers * (12 * h * h + 13 * h) + 2 * h


@pytest.mark.parametrize("name, layers, hidden, heads, published", [
    ("bloom-176b", 70, 14_336, 112, 176_247_271_424),  # bigscience/bloom model card
    ("bloom-7b1", 30, 4_096, 32, 7_069_016_064),  # bigscience/bloom-7b1 model card
])
def test_bloom_counts_match_the_model_cards(name, layers, hidden, heads, published):
    spec = load_model(name)
    assert (spec.layers, spec.hidden, spec.heads, spec.kv_heads, spec.vocab) == (
        layers, hidden, heads, heads, V)
    assert spec.ffn == 4 * hidden and not spec.gated_ffn and spec.norm == "layernorm"
    assert spec.alibi and spec.embed_norm and spec.tie_embeddings
    assert not spec.learned_positions
    counts = param_counts(spec)
    assert counts.total == bloom_params(layers, hidden) == published
    assert counts.position_embedding == 0 and counts.lm_head == 0
    assert counts.norms == (4 * layers + 4) * hidden


def test_bloom_forward_flops_per_token_by_hand():
    spec = load_model("bloom-176b")
    h, layers, seq = 14_336, 70, 2048
    flops = forward_flops_breakdown(spec, seq)
    # 2 x (12h² a layer + the tied head's V·h); causal scores and P·V: 2 x 2h x s/2 a layer.
    assert flops["matmul"] == 2.0 * (layers * 12 * h * h + V * h)
    assert flops["attention"] == layers * 2.0 * 2 * h * seq / 2


def test_bloom_config_keys_and_aliases():
    spec = from_hf_config({"model_type": "bloom", "n_embed": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 8}, "tiny")
    assert (spec.hidden, spec.layers, spec.heads, spec.head_dim, spec.vocab) == (64, 2, 8, 8, V)
    assert spec.family == "bloom" and spec.max_seq == 2048
    with pytest.raises(InputError, match="n_head"):
        from_hf_config({"model_type": "bloom", "hidden_size": 64, "n_layer": 2, "n_head": 7})


def _ctx(impl: str, tp: int = 8) -> L.SlotContext:
    spec = load_model("bloom-7b1")
    plan = validate_plan(spec, ParallelPlan(tp=tp, seq=2048, mbs=2, attention_impl=impl), tp)
    return L.SlotContext(spec, plan, float(plan.mbs * plan.seq), {}, {}, False)


def test_embedding_layernorm_follows_the_lookup():
    spec = load_model("bloom-7b1")
    items = embedding_forward(spec, 4096.0, Sharding(tp=8))
    names = [it.name for it in items]
    assert names == ["embedding", "embedding_reduce", "embedding_norm"]
    norm = items[-1]
    # ops.norm: 5 FLOPs an element, reads and writes tokens x hidden at bf16.
    assert norm.kind == OpKind.NORM and norm.flops == 5.0 * 4096 * 4096
    assert norm.main_bytes == 4096 * 4096 * 2 * 2


def test_alibi_pass_on_unfused_scores_only():
    ctx = _ctx("standard")
    items = L.layer_items(ctx, 0)
    alibi = [it for it in items if getattr(it, "name", "") == L.ALIBI]
    assert len(alibi) == 1
    # 2 sequences x 32/8 heads x 2048 x 2048 score pairs; one add, write + read at bf16.
    pairs = 2 * 4 * 2048 * 2048
    assert alibi[0].flops == pairs and alibi[0].main_bytes == pairs * 2 * 2
    assert backward_op(alibi[0]) == []  # a constant bias: the gradient passes through
    assert not any(getattr(it, "name", "") == L.ROTARY for it in items)  # no rotary
    fused = L.layer_items(_ctx("npu_fusion_attention"), 0)
    assert not any(getattr(it, "name", "") == L.ALIBI for it in fused)


def test_past_training_length_note_names_alibi():
    from xpusim.sim.api.train import past_positions_note
    spec = load_model("bloom-176b")
    assert past_positions_note(spec, 2048) is None
    assert "ALiBi" in (past_positions_note(spec, 4096) or "")
