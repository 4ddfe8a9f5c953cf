"""Ascend decode: attention (CANN IncreFlashAttention) with one work unit per (sequence, KV
head) with the group's query heads as rows, and flash decode's key split for few units
(sim.cost.attention_ascend.ascend_decode_units); speculative decoding's rejection per EP group."""

from __future__ import annotations

from xpusim.hwprofiles import load_device
from xpusim.sim.attention_model import fast_attention_cost
from xpusim.sim.cost.attention_ascend import ascend_decode_units
from xpusim.sim.cost.attention_impl import AttnShape, attention_cost


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
