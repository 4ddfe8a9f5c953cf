"""MLA's absorbed decode on Ascend priced as FusedInferAttentionScore's MLA template tiles it
(sim.cost.attention_ascend): the latent read once per (sequence, KV head, 256-row block),
never faster than its HBM bytes allow, other calls unchanged."""

from __future__ import annotations

import math

from xpusim.hwprofiles import load_device
from xpusim.sim.attention_model import fast_attention_cost
from xpusim.sim.cost.attention_ascend import (
    FIA_MLA_M_BASE,
    FIA_MLA_S2_BASE,
    ascend_decode_units,
    is_fia_mla,
    mla_task,
)
from xpusim.sim.cost.attention_impl import AttnShape, attention_cost


def _mla(batch: float, q_len: float, kv_len: float, heads: float = 128) -> AttnShape:
    # DeepSeek-V3 absorbed decode: Q/K 512 latent + 64 rope, V the 512 latent, one KV head.
    return AttnShape(batch, heads, q_len, kv_len, 576, 512, 1, q_len > 1, "bf16")


def test_fia_mla_template_applies_only_to_mla_decode():
    assert is_fia_mla(_mla(48, 1, 4224))
    assert is_fia_mla(_mla(48, 2, 4225, heads=16))  # TP 8: 16 heads a rank
    assert not is_fia_mla(_mla(1, 4224, 4224))  # prefill
    assert not is_fia_mla(AttnShape(48, 128, 1, 4224, 576, 512, 2))  # two KV heads
    assert not is_fia_mla(AttnShape(48, 32, 1, 4224, 128, 128, 8))  # GQA
    assert not is_fia_mla(_mla(48, 1, 4224, heads=96))  # G not a power of two


def test_hbm_bytes_read_the_latent_once_per_sequence():
    die = load_device("ascend-910c-die")
    cost = attention_cost(die, _mla(48, 1, 4224), "npu_fusion_attention", "fwd")
    latent = 48 * 4224 * 576 * 2  # K (latent + rope); V re-read from L2
    q_and_o = 48 * 128 * (576 + 512) * 2
    assert cost.details["hbm_bytes"] == latent + q_and_o
    # A 2-token verify step still fits one 256-row block: the same latent bytes.
    verify = attention_cost(die, _mla(48, 2, 4225), "npu_fusion_attention", "fwd")
    assert verify.details["hbm_bytes"] == 48 * 4225 * 576 * 2 + 2 * q_and_o
    # 4 tokens x 128 heads = 512 rows = two blocks: each streams the latent.
    four = attention_cost(die, _mla(48, 4, 4227), "npu_fusion_attention", "fwd")
    assert four.details["hbm_bytes"] == 2 * 48 * 4227 * 576 * 2 + 4 * q_and_o


def test_never_below_the_memory_roofline():
    for name in ("ascend-910c-die", "ascend-910b2"):
        dev = load_device(name)
        floor_rate = dev.hbm_bandwidth * dev.efficiency.memory_max
        for batch, q_len, kv in ((1, 1, 100), (4, 1, 4224), (48, 1, 4224), (64, 2, 1537),
                                 (256, 1, 32768)):
            cost = attention_cost(dev, _mla(batch, q_len, kv), "npu_fusion_attention", "fwd")
            assert cost.time_s >= cost.details["hbm_bytes"] / floor_rate
            assert cost.time_s >= batch * kv * 576 * 2 / floor_rate  # the latent alone


def test_task_terms_by_hand():
    die = load_device("ascend-910c-die")
    task = mla_task(die, 128, 512, "bf16", False)
    cube_rate = 353.894e12 / 24 * 0.93
    assert math.isclose(task.cube_s, 2 * 128 * 512 * (576 + 512) / cube_rate, rel_tol=1e-6)
    vec_rate = 11.059e12 / 48 * 2 * 0.6
    assert math.isclose(task.vector_s, (128 * 512 * 4 + 2 * 128 * 512) / vec_rate, rel_tol=1e-6)
    # GM: K (576) and V (512) blocks once for all 128 rows, Q once, S fp32 + P bf16 read
    # back, the PV partial (fp32) read back; at the core's L2 share.
    reads = 512 * 1088 * 2 + 128 * 576 * 2 + 128 * 512 * 6 + 128 * 512 * 4
    assert math.isclose(task.gm_s, reads / (4752e9 / 24 * 0.9), rel_tol=1e-6)
    assert (FIA_MLA_M_BASE, FIA_MLA_S2_BASE) == (256, 512)


def test_busiest_core_runs_its_share_of_the_tasks():
    die = load_device("ascend-910c-die")
    # 48 sequences x 8 full key blocks of 128 rows (4,096 keys): 384 tasks over 24 cores,
    # 16 each; 48 rows divide over 24 cores, so no flash-decode reduction.
    cost = attention_cost(die, _mla(48, 1, 4096), "npu_fusion_attention", "fwd")
    task = mla_task(die, 128, 512, "bf16", False)
    expected = 16 * task.steady_s + task.series_s - task.steady_s
    assert cost.details["flash_decode_s"] == 0
    assert math.isclose(cost.compute_s, expected, rel_tol=1e-9)


def test_mla_decode_is_far_below_the_per_16_row_tile_model():
    die = load_device("ascend-910c-die")
    cost = attention_cost(die, _mla(48, 1, 4224), "npu_fusion_attention", "fwd")
    units, rows, keys = ascend_decode_units(_mla(48, 1, 4224), 24)
    generic = fast_attention_cost(die, 1, int(units), int(keys), 576, False, "bf16",
                                  q_len=int(rows))
    assert cost.time_s < generic.time_s / 4


def test_other_calls_keep_the_generic_tile_model():
    die = load_device("ascend-910c-die")
    gqa = AttnShape(48, 32, 1, 4224, 128, 128, 8, False, "bf16")
    cost = attention_cost(die, gqa, "npu_fusion_attention", "fwd")
    units, rows, keys = ascend_decode_units(gqa, 24)
    direct = fast_attention_cost(die, 1, int(units), int(keys), 128, False, "bf16",
                                 q_len=int(rows))
    assert cost.time_s == direct.time_s
    # MLA's prefill (expanded heads, q_len = kv_len) and its backward are not FIA decode.
    prefill = AttnShape(1, 128, 4096, 4096, 192, 128, 128, True, "bf16")
    assert "flash_decode_s" not in attention_cost(die, prefill, "npu_fusion_attention",
                                                  "fwd").details
    assert "flash_decode_s" not in attention_cost(die, _mla(48, 1, 4224),
                                                  "npu_fusion_attention", "bwd").details
