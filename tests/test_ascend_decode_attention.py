"""Ascend decode: attention (CANN IncreFlashAttention) with one work unit per (sequence, KV
head) with the group's query heads as rows, and flash decode's key split for few units
(sim.cost.attention_ascend.ascend_decode_units); speculative decoding's rejection per EP group."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_device
from xpusim.sim.attention_model import derive_tiling, fast_attention_cost
from xpusim.sim.cost.attention_ascend import IFA_MAX_QUERY, ascend_decode_units
from xpusim.sim.cost.attention_impl import AttnShape, attention_cost
from xpusim.sim.ir import attention_pairs

NPU = load_device("ascend-910b2")


def test_prefill_keeps_one_unit_per_query_head():
    shape = AttnShape(batch=2, heads=16, q_len=4096, kv_len=4096, head_dim=128, kv_heads=4)
    assert ascend_decode_units(shape, 24) == (32, 4096, 4096)


def test_mqa_decode_packs_the_group_as_rows():
    # MLA's absorbed decode: 128 query heads over one 576-wide latent. 48 sequences =
    # 48 units >= 0.4 x 24 cores: no key split.
    shape = AttnShape(batch=48, heads=128, q_len=1, kv_len=4224, head_dim=576, kv_heads=1)
    assert ascend_decode_units(shape, 24) == (48, 128, 4224)
    # A verify step of 2 tokens: 256 rows per unit.
    assert ascend_decode_units(AttnShape(48, 128, 2, 4226, 576, kv_heads=1), 24)[1] == 256


def test_flash_decode_splits_the_keys_of_few_units():
    # 4 units < 9.6 and GQA with >= 2048 keys: 24 // 4 = 6 parts of ceil(4224 / 6) = 704.
    shape = AttnShape(batch=4, heads=128, q_len=1, kv_len=4224, head_dim=576, kv_heads=1)
    assert ascend_decode_units(shape, 24) == (24, 128, 704)
    # MHA (group 1) splits at any length, but not below 512 keys a part: 8 units,
    # 24 // 8 = 3 parts would hold 342 keys, so 2 parts of 512.
    mha = AttnShape(batch=1, heads=8, q_len=1, kv_len=1024, head_dim=128, kv_heads=8)
    assert ascend_decode_units(mha, 24) == (16, 1, 512)
    # GQA below 2048 keys does not split.
    short = AttnShape(batch=1, heads=32, q_len=1, kv_len=1024, head_dim=128, kv_heads=8)
    assert ascend_decode_units(short, 24) == (8, 4, 1024)


def test_a_chunk_longer_than_a_verify_step_runs_the_prompt_kernel():
    # FIA routes more than 16 queries to PromptFlashAttention whatever the cache length:
    # one unit per (sequence, query head), all the chunk's rows, every key.
    chunk = AttnShape(batch=2, heads=16, q_len=IFA_MAX_QUERY + 1, kv_len=4096, head_dim=128,
                      kv_heads=4)
    assert ascend_decode_units(chunk, 24) == (32, IFA_MAX_QUERY + 1, 4096)
    # FIA routes by the query length alone: 16 queries are IFA's with or without a
    # longer cache, so one more key changes nothing but the keys.
    verify = AttnShape(batch=1, heads=32, q_len=IFA_MAX_QUERY, kv_len=IFA_MAX_QUERY,
                       head_dim=128, kv_heads=8)
    assert ascend_decode_units(verify, 24) == (8, 4 * IFA_MAX_QUERY, IFA_MAX_QUERY)
    # IFA is an inference kernel: a backward is FlashAttentionScoreGrad's, per query head.
    assert ascend_decode_units(verify, 24, "bwd") == (32, IFA_MAX_QUERY, IFA_MAX_QUERY)


def test_a_causal_chunk_skips_the_blocks_past_its_diagonal():
    """A causal chunk of q queries at the end of kv keys scores q x (kv - q) + q (q + 1) / 2
    pairs (bottom-right causal), not q x kv: its time lies between the prefill of the chunk
    alone and the same chunk without the mask."""
    def t(device, q, kv, causal, heads, d, pass_):
        return attention_cost(device, AttnShape(1, heads, q, kv, d, causal=causal),
                              "npu_fusion_attention", pass_).time_s

    # One more cached key made this backward 17% faster: it was priced as a decode.
    npu_a = load_device("ascend-910a")
    assert t(npu_a, 360, 361, True, 1, 64, "bwd") >= t(npu_a, 360, 360, True, 1, 64, "bwd")
    # The mask now skips the blocks past the diagonal (it was priced unmasked).
    assert t(NPU, 1512, 1513, True, 8, 128, "fwd") < t(NPU, 1512, 1513, False, 8, 128, "fwd")
    cost = fast_attention_cost(NPU, 1, 8, 4096, 128, True, "fp16", q_len=1024)
    flops = 4.0 * 8 * 128 * attention_pairs(1024, 4096, True)
    assert cost.details["achieved_flops"] * cost.time_s == pytest.approx(flops, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    q=st.integers(IFA_MAX_QUERY + 1, 4096),
    extra=st.integers(0, 8192),
    grow=st.integers(1, 16),
    heads=st.sampled_from([1, 8, 32]),
    causal=st.booleans(),
    pass_=st.sampled_from(["fwd", "bwd"]),
)
def test_more_cached_keys_never_shorten_a_prompt_chunk(q, extra, grow, heads, causal, pass_):
    """With the queries fixed, a longer cache only adds (query, key) pairs. Causal: by whole
    key blocks, since the query blocks are anchored at the chunk's first query, one more key
    can move the diagonal so that a block that was partly masked no longer is (it then
    skips the mask select), as in the kernel."""
    kv = q + extra
    if causal:
        cols = derive_tiling(NPU, 128, "bf16", kv).cols
        assume(derive_tiling(NPU, 128, "bf16", kv + grow * cols).cols == cols)
        grow *= cols
    else:
        grow *= 97  # any number of keys

    def t(keys):
        return attention_cost(NPU, AttnShape(1, heads, q, keys, 128, causal=causal),
                              "npu_fusion_attention", pass_).time_s

    assert t(kv + grow) >= t(kv) * (1 - 1e-12)


def test_mqa_decode_reads_the_latent_once_per_group():
    die = load_device("ascend-910c-die")
    shape = AttnShape(batch=48, heads=128, q_len=1, kv_len=4224, head_dim=576, kv_heads=1)
    grouped = attention_cost(die, shape, "npu_fusion_attention", "fwd")
    per_head = fast_attention_cost(die, 1, 48 * 128, 4224, 576, False, "bf16", q_len=1)
    # K/V bytes from HBM: 48 latents of 4,224 x 576 (K and V) instead of 48 x 128.
    assert grouped.memory_s < per_head.details["hbm_s"] / 100
    assert grouped.time_s < per_head.time_s / 10


def test_sd_rejection_runs_per_ep_group(capsys):
    # EP splits the requests over the groups (data-parallel attention): each of the 256
    # groups rejects its own 12288 / 256 = 48 requests, not the whole batch.
    import json

    from xpusim.sim.cli.main import main
    from xpusim.sim.inference.speculative import rejection_device_time

    argv = ["sd", "--target", "deepseek-v3", "--draft", "mtp", "--system", "cloudmatrix-384",
            "--tp", "1", "--ep", "256", "--gamma", "1", "--alpha", "0.7", "--batch", "12288",
            "--context", "4096", "--dtype", "int8", "--engine", "none", "--json"]
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    die = load_device("ascend-910c-die")
    assert row["t_reject_s"] == rejection_device_time(die, 48, 1, 129280)
