"""Model specs from HF config.json, presets, parameter/FLOP/weight accounting, `xpusim model`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.models.counting import (
    flops_per_token,
    forward_flops_breakdown,
    model_flops_per_token,
    param_counts,
    weight_bytes,
)
from xpusim.sim.models.hf_config import from_hf_config, list_presets, load_model

DATA = Path(__file__).parent / "data"


def rel(value: float, expected: float) -> float:
    return abs(value - expected) / expected


# --- hand-computed toy configs -------------------------------------------------------


def test_toy_llama_every_term_by_hand():
    spec = load_model(DATA / "toy_llama_config.json")
    assert (spec.hidden, spec.heads, spec.kv_heads, spec.head_dim) == (64, 4, 2, 16)
    c = param_counts(spec)
    assert c.embedding == 100 * 64
    assert c.lm_head == 100 * 64
    # q 64x64 + k 64x32 + v 64x32 + o 64x64 per layer, 2 layers
    assert c.attention == 2 * (4096 + 2048 + 2048 + 4096)
    assert c.dense_ffn == 2 * 3 * 64 * 128  # SwiGLU: gate, up, down
    assert c.norms == 2 * 2 * 64 + 64  # two RMSNorms per layer + final
    assert c.routed_experts == c.shared_experts == c.router == c.mtp == 0
    assert c.total == 6400 + 6400 + 24576 + 49152 + 320 == 86848
    assert c.activated == c.total
    assert c.activated_excl_embedding == c.total - 6400
    # forward at seq 10, causal: 2 x (attn 24576 + ffn 49152 + head 6400) matmul FLOPs
    # + 2 layers x 2 x (q.k width 64 + p.v width 64) x mean context 5
    fwd = forward_flops_breakdown(spec, 10)
    assert fwd["matmul"] == 2 * 80128
    assert fwd["attention"] == 2 * 2 * 128 * 5
    assert flops_per_token(spec, 10) == 162816
    assert flops_per_token(spec, 10, training=True) == 3 * 162816
    assert model_flops_per_token(spec, 10) == 3 * 162816
    assert flops_per_token(spec, 10, causal=False) == 160256 + 5120
    assert weight_bytes(spec, "bf16") == 2 * 86848
    assert weight_bytes(spec, "fp8") == 86848


def test_toy_mla_moe_every_term_by_hand():
    spec = load_model(DATA / "toy_mla_moe_config.json")
    assert spec.moe is not None and spec.mla is not None
    assert [spec.is_moe_layer(i) for i in range(3)] == [False, True, True]
    assert spec.head_dim == 6 and spec.mtp_layers == 1
    c = param_counts(spec)
    # MLA per layer: q_a 32x16, q_a_norm 16, q_b 16x(2x6), kv_a 32x(8+2), kv_a_norm 8,
    # kv_b 8x(2x(4+4)), o (2x4)x32
    attn_matmul = 512 + 192 + 320 + 128 + 256
    assert c.attention == 3 * (attn_matmul + 16 + 8)
    assert c.dense_ffn == 3 * 32 * 64  # layer 0
    expert = 3 * 32 * 8
    assert c.routed_experts == 2 * 4 * expert
    assert c.activated_routed_experts == 2 * 2 * expert
    assert c.shared_experts == 2 * expert
    assert c.router == 2 * 32 * 4
    assert c.norms == 3 * 2 * 32 + 32
    assert c.total == 1600 + 1600 + 4296 + 6144 + 6144 + 1536 + 256 + 224 == 21800
    assert c.activated == 21800 - 6144 + 3072
    assert c.activated_excl_embedding == c.activated - 1600
    # MTP: enorm + hnorm, eh_proj 64x32, block (attn + 2 norms + MoE FFN of 4 experts
    # + shared + router), head norm; embedding and head shared
    assert c.mtp == 64 + 2048 + (1432 + 64 + 3072 + 768 + 128) + 32 == 7608
    assert c.total_with_mtp == 21800 + 7608
    # forward at seq 8, causal: matmuls head 1600 + attn 3x1408 + dense 6144
    # + 2 MoE layers x (2 experts + shared + router)
    matmul = 1600 + 3 * attn_matmul + 6144 + 2 * (2 * expert + expert + 128)
    assert matmul == 16832
    attention = 3 * 2 * (2 * 6 + 2 * 4) * 4
    assert flops_per_token(spec, 8) == 2 * matmul + attention == 34144
    mtp_matmul = 2048 + attn_matmul + (2 * expert + expert + 128) + 1600
    assert flops_per_token(spec, 8, include_mtp=True) == 2 * (matmul + mtp_matmul) + 4 * 2 * 20 * 4
    assert weight_bytes(spec, "fp32", include_mtp=True) == 4 * (21800 + 7608)


def test_toy_opt_every_term_by_hand():
    spec = load_model(DATA / "toy_opt_config.json")
    assert not spec.gated_ffn and spec.tie_embeddings and not spec.final_norm
    c = param_counts(spec)
    assert c.embedding == 20 * 8
    assert c.position_embedding == (8 + 2) * 16  # OPT's learned table has 2 extra rows
    assert c.embed_projection == 2 * 8 * 16  # project_in, project_out
    assert c.attention == 2 * (4 * 16 * 16 + 4 * 16)  # q, k, v, out with biases
    assert c.dense_ffn == 2 * (16 * 32 + 32 + 32 * 16 + 16)  # fc1, fc2 with biases
    assert c.norms == 2 * 2 * (2 * 16)  # LayerNorm weight+bias, no final norm (post-norm)
    assert c.lm_head == 0  # tied
    assert c.total == 160 + 160 + 256 + 2176 + 2144 + 128 == 5024
    # tied table stays in the excl-embedding count: it is the output head
    assert c.activated_excl_embedding == 5024 - 160
    # matmuls: proj in/out 256 + head 20x8 + attention 4x256 x2 + ffn 2x512 x2
    assert forward_flops_breakdown(spec, 4)["matmul"] == 2 * (256 + 160 + 2048 + 2048)


# --- published figures --------------------------------------------------------------


def test_presets_all_load_with_sources():
    names = list_presets()
    assert {
        "llama-2-7b",
        "llama-3-8b",
        "qwen2-0.5b",
        "qwen2-57b-a14b",
        "mixtral-8x7b",
        "deepseek-v3",
        "opt-350m",
        "opt-30b",
        "pangu-ultra-moe",
    } <= set(names)
    for name in names:
        path = Path(__file__).parents[1] / "sim" / "models" / "presets" / f"{name}.json"
        assert json.loads(path.read_text())["_source"]
        assert load_model(name).name == name


@pytest.mark.parametrize(
    "name, exact",
    [
        # counts of the released checkpoints (HF model pages / modelling code)
        ("llama-2-7b", 6_738_415_616),
        ("llama-3-8b", 8_030_261_248),
        ("mixtral-8x7b", 46_702_792_704),
        ("qwen2-0.5b", 494_032_768),
        ("opt-350m", 331_196_416),
    ],
)
def test_exact_checkpoint_counts(name, exact):
    assert param_counts(load_model(name)).total == exact


@pytest.mark.parametrize(
    "name, exact",
    [
        # The ModelLink / MindSpeed-LLM scripts' model arguments (S9 rows, 2026-12-06), by
        # hand: 2 x vocab x h (untied) + L x (4h^2 [+ 3h qkv bias] + 3 h ffn + 2h norms) + h.
        # llama-65b: 2*32000*8192 + 80*(4*8192^2 + 3*8192*22016 + 2*8192) + 8192
        ("llama-65b", 65_285_660_672),
        # qwen1.5-7b: 2*151936*4096 + 32*(4*4096^2 + 3*4096 + 3*4096*11008 + 2*4096) + 4096
        ("qwen1.5-7b", 7_721_324_544),
        # qwen1.5-72b: 2*152064*8192 + 80*(4*8192^2 + 3*8192 + 3*8192*24576 + 2*8192) + 8192
        ("qwen1.5-72b", 72_287_920_128),
    ],
)
def test_modellink_presets_counts(name, exact):
    assert param_counts(load_model(name)).total == exact


def test_pangu_ultra_moe_718b_39b():
    # arXiv 2505.04519: 718B total, 39B activated (input embedding excluded)
    c = param_counts(load_model("pangu-ultra-moe"))
    assert rel(c.total, 718e9) < 0.02
    assert rel(c.activated_excl_embedding, 39e9) < 0.02
    assert c.total_with_mtp > c.total


def test_pangu_training_flops_match_reference_arithmetic():
    # Independent arithmetic (6 x 39.2B + causal MLA attention, 61 layers, 4K) gives
    # ~266 GFLOP per trained token; the MTP module adds ~12 GFLOP.
    spec = load_model("pangu-ultra-moe")
    assert rel(model_flops_per_token(spec, 4096), 266e9) < 0.02
    assert rel(model_flops_per_token(spec, 4096, include_mtp=True), 278e9) < 0.03


def test_deepseek_v3_671b_37b():
    # DeepSeek-V3 report: 671B total, 37B activated per token, MTP module excluded.
    c = param_counts(load_model("deepseek-v3"))
    assert rel(c.total, 671e9) < 0.002
    assert rel(c.activated_excl_embedding, 37e9) < 0.02
    assert rel(c.activated, 37e9) < 0.02
    # The HF checkpoint (685B) also stores the MTP module with its own copies of the
    # embedding and the output head.
    assert rel(c.total_with_mtp + c.embedding + c.lm_head, 685e9) < 0.005


def test_deepseek_v2_lite_15_7b_2_4b():
    c = param_counts(load_model(DATA / "deepseek_v2_lite_config.json"))
    assert rel(c.total, 15.7e9) < 0.005
    assert rel(c.activated_excl_embedding, 2.4e9) < 0.025  # 2.45B; published figure rounded


def test_qwen2_57b_a14b():
    c = param_counts(load_model("qwen2-57b-a14b"))
    assert rel(c.total, 57e9) < 0.02
    assert rel(c.activated, 14e9) < 0.02  # Qwen counts embeddings in "A14B"


def test_mixtral_46_7b_12_9b():
    c = param_counts(load_model("mixtral-8x7b"))
    assert rel(c.total, 46.7e9) < 0.001
    assert rel(c.activated, 12.9e9) < 0.005


def test_opt_30b():
    assert rel(param_counts(load_model("opt-30b")).total, 30e9) < 0.01


def test_llama_training_flops_close_to_6n():
    # For a dense model at short sequence, training FLOPs ~ 6 x non-embedding params.
    spec = load_model("llama-2-7b")
    c = param_counts(spec)
    six_n = 6 * c.activated_excl_embedding
    assert rel(flops_per_token(spec, 1, training=True), six_n) < 0.001


# --- parsing details ----------------------------------------------------------------


def _deepseek_dict(**over):
    data = json.loads((DATA / "toy_mla_moe_config.json").read_text())
    data.update(over)
    return data


@pytest.mark.parametrize("first_k, freq", [(0, 1), (1, 2), (3, 2), (2, 3), (4, 4)])
def test_deepseek_moe_layer_rule_matches_hf(first_k, freq):
    spec = from_hf_config(
        _deepseek_dict(num_hidden_layers=12, first_k_dense_replace=first_k, moe_layer_freq=freq)
    )
    hf = [i >= first_k and i % freq == 0 for i in range(12)]
    assert [spec.is_moe_layer(i) for i in range(12)] == hf


@pytest.mark.parametrize("step", [1, 2, 3])
def test_qwen2_moe_sparse_step_matches_hf(step):
    data = json.loads(
        (Path(__file__).parents[1] / "sim/models/presets/qwen2-57b-a14b.json").read_text()
    )
    data["decoder_sparse_step"] = step
    spec = from_hf_config(data)
    assert [spec.is_moe_layer(i) for i in range(28)] == [(i + 1) % step == 0 for i in range(28)]


def test_pangu_openpangu_alias_keys():
    data = _deepseek_dict(model_type="pangu_ultra_moe")
    for hf_key, alias in (
        ("n_routed_experts", "num_routed_experts"),
        ("n_shared_experts", "num_shared_experts"),
        ("first_k_dense_replace", "num_dense_layers"),
        ("num_nextn_predict_layers", "num_mtp_layers"),
    ):
        data[alias] = data.pop(hf_key)
    assert from_hf_config(data) == from_hf_config(_deepseek_dict(model_type="pangu_ultra_moe"))


def test_q_lora_null_projects_queries_directly():
    spec = from_hf_config(_deepseek_dict(q_lora_rank=None))
    assert spec.mla.q_lora_rank is None
    # q_proj 32 x (2 x 6) replaces q_a 32x16 + q_a_norm 16 + q_b 16x12
    delta = (
        param_counts(load_model(DATA / "toy_mla_moe_config.json")).attention
        - param_counts(spec).attention
    )
    assert delta == 3 * ((512 + 16 + 192) - 384)


def test_dense_deepseek_without_routed_experts():
    data = _deepseek_dict()
    del data["n_routed_experts"]
    spec = from_hf_config(data)
    assert spec.moe is None and param_counts(spec).dense_ffn == 3 * 3 * 32 * 64


def test_name_from_folder_and_name_or_path(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text((DATA / "toy_llama_config.json").read_text())
    assert load_model(folder / "config.json").name == "my-model"
    assert from_hf_config(folder).name == "my-model"
    assert load_model("opt-30b").name == "opt-30b"
    assert from_hf_config(DATA / "toy_llama_config.json", name="x").name == "x"


# --- errors ---------------------------------------------------------------------------


def test_missing_key_names_file_and_key(tmp_path):
    data = json.loads((DATA / "toy_llama_config.json").read_text())
    del data["intermediate_size"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"config\.json: missing required key 'intermediate_size'"):
        load_model(path)


@pytest.mark.parametrize(
    "over, key",
    [
        ({"hidden_size": "4096"}, "hidden_size"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    ],
)
def test_bad_values_name_the_key(over, key):
    data = json.loads((DATA / "toy_llama_config.json").read_text())
    data.update(over)
    with pytest.raises(InputError, match=key):
        from_hf_config(data)


def test_moe_value_checks():
    with pytest.raises(InputError, match="num_experts_per_tok"):
        from_hf_config(_deepseek_dict(num_experts_per_tok=5))
    with pytest.raises(InputError, match="topk_group"):
        from_hf_config(_deepseek_dict(topk_group=3))
    with pytest.raises(InputError, match="scoring_func"):
        from_hf_config(_deepseek_dict(scoring_func="relu"))


def test_unknown_model_type_and_name():
    with pytest.raises(InputError, match="model_type.*'lama'.*llama"):
        from_hf_config({"model_type": "lama"})
    with pytest.raises(InputError, match="missing required key 'model_type'"):
        from_hf_config({"hidden_size": 8})
    with pytest.raises(InputError, match="Did you mean: deepseek-v3"):
        load_model("deepseek-v4")
    with pytest.raises(InputError, match="not found"):
        load_model("no/such/config.json")


def test_bad_dtype_and_seq():
    spec = load_model("qwen2-0.5b")
    with pytest.raises(InputError, match="dtype"):
        weight_bytes(spec, "fp7")
    with pytest.raises(InputError, match="sequence length"):
        flops_per_token(spec, 0)


# --- properties -----------------------------------------------------------------------

dims = st.integers(min_value=1, max_value=8)


@settings(max_examples=60, deadline=None)
@given(
    h=dims,
    heads=dims,
    group=dims,
    layers=dims,
    ffn=dims,
    vocab=dims,
    experts=dims,
    top=dims,
    first=st.integers(0, 4),
    freq=st.integers(1, 3),
    shared=st.integers(0, 2),
    seq=st.integers(1, 4096),
    mla=st.booleans(),
    tie=st.booleans(),
)
def test_count_invariants(
    h, heads, group, layers, ffn, vocab, experts, top, first, freq, shared, seq, mla, tie
):
    top = min(top, experts)
    first = min(first, layers)
    kv = heads
    heads = heads * group
    base = {
        "hidden_size": 8 * h * heads,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": 16 * ffn,
        "vocab_size": 10 * vocab,
        "tie_word_embeddings": tie,
    }
    if mla:
        data = {
            **base,
            "model_type": "deepseek_v3",
            "kv_lora_rank": 8,
            "q_lora_rank": 16,
            "qk_nope_head_dim": 4,
            "qk_rope_head_dim": 2,
            "v_head_dim": 4,
            "n_routed_experts": experts,
            "num_experts_per_tok": top,
            "moe_intermediate_size": 8 * ffn,
            "n_shared_experts": shared,
            "first_k_dense_replace": first,
            "moe_layer_freq": freq,
        }
    else:
        data = {
            **base,
            "model_type": "mixtral",
            "num_local_experts": experts,
            "num_experts_per_tok": top,
        }
    spec = from_hf_config(data)
    c = param_counts(spec)
    parts = c.as_dict()
    assert c.total == sum(
        parts[k]
        for k in (
            "embedding",
            "position_embedding",
            "embed_projection",
            "attention",
            "dense_ffn",
            "routed_experts",
            "shared_experts",
            "router",
            "norms",
            "lm_head",
        )
    )
    assert c.activated_excl_embedding <= c.activated <= c.total
    assert (c.activated == c.total) == (c.routed_experts == c.activated_routed_experts)
    assert weight_bytes(spec, "bf16") == 2 * weight_bytes(spec, "fp8") == c.total * 2
    causal = flops_per_token(spec, seq)
    assert flops_per_token(spec, seq, causal=False) > causal
    assert flops_per_token(spec, seq + 1) > causal
    assert model_flops_per_token(spec, seq) == 3 * causal
    # forward matmul FLOPs are 2 per weight a token multiplies with, which never exceeds
    # the activated parameters plus a tied head
    assert forward_flops_breakdown(spec, seq)["matmul"] <= 2 * (c.activated + c.embedding)


# --- CLI --------------------------------------------------------------------------------


def test_cli_show_json(capsys):
    assert main(["model", "show", "deepseek-v3", "--seq", "4096", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "name",
        "total_params",
        "activated_params",
        "flops_per_token_forward",
        "flops_per_token_training",
        "weight_bytes",
        "breakdown",
        "source",
    ):
        assert key in out
    spec = load_model("deepseek-v3")
    assert out["name"] == "deepseek-v3"
    assert out["total_params"] == param_counts(spec).total
    assert out["flops_per_token_forward"] == flops_per_token(spec, 4096)
    assert out["flops_per_token_training"] == 3 * out["flops_per_token_forward"]
    assert set(out["weight_bytes"]) == {"bf16", "fp16", "fp8", "fp32"}
    assert out["weight_bytes"]["fp8"] == out["total_params"]
    assert out["architecture"]["mla"]["kv_lora_rank"] == 512


def test_cli_show_text_and_path(capsys):
    assert main(["model", "show", str(DATA / "toy_opt_config.json"), "--seq", "16"]) == 0
    text = capsys.readouterr().out
    assert "5,024" in text and "position_embedding" in text and "training" in text
    assert main(["model", "show", "pangu-ultra-moe", "--include-mtp", "--no-causal"]) == 0
    assert "MTP modules" in capsys.readouterr().out


def test_cli_list(capsys):
    assert main(["model", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["presets"]
    assert {r["name"] for r in rows} == set(list_presets())
    assert main(["model", "list"]) == 0
    assert "pangu-ultra-moe" in capsys.readouterr().out


def test_cli_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "llama",')
    assert main(["model", "show", str(bad)]) == 2
    assert f"{bad}: not valid JSON" in capsys.readouterr().err
    bad.write_text('{"model_type": "llama", "hidden_size": 64}')
    assert main(["model", "show", str(bad)]) == 2
    assert "missing required key 'num_attention_heads'" in capsys.readouterr().err
    assert main(["model", "show", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: file not found" in capsys.readouterr().err
    assert main(["model", "show", "llama-2-7", "--json"]) == 2
    assert "Did you mean: llama-2-7b" in capsys.readouterr().err
    assert main(["model", "show", "llama-2-7b", "--seq", "0"]) == 2
