"""Sliding-window (local) causal attention: pairs, FLOPs, bytes, key blocks and cost.

Every expected value is hand-computed from the mask rule (query p sees keys
p - window < k <= p, HF transformers' sliding mask), not read back from the code.
"""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost.attention_blocks import key_blocks
from xpusim.sim.cost.attention_impl import AttnShape, attention_cost
from xpusim.sim.errors import InputError
from xpusim.sim.ir import attention_pairs


def test_pairs_window_below_sequence():
    # 512 queries, window 128: positions 0..127 see 1..128 keys (sum 128*129/2 = 8256),
    # the other 384 see 128 each (49,152).
    assert attention_pairs(512, 512, True, 128) == 8256 + 384 * 128


def test_pairs_window_at_or_above_sequence_is_plain_causal():
    causal = 512 * 513 / 2
    assert attention_pairs(512, 512, True, 0) == causal
    assert attention_pairs(512, 512, True, 512) == causal
    assert attention_pairs(512, 512, True, 4096) == causal


def test_pairs_decode_and_chunk():
    # One new token after 1,000 cached: 128 keys with the window, 1,001 without.
    assert attention_pairs(1, 1001, True, 128) == 128
    assert attention_pairs(1, 1001, True, 0) == 1001
    # A 4-token chunk at positions 100..103 of 104, window 128: 101 + 102 + 103 + 104 keys.
    assert attention_pairs(4, 104, True, 128) == 101 + 102 + 103 + 104
    # ...and window 102: 101, 102, 102, 102.
    assert attention_pairs(4, 104, True, 102) == 101 + 3 * 102


def test_fused_attention_flops_and_bytes():
    # batch 1, 2 heads, seq 512, d 64, window 128: 2 * 2 heads * pairs * (64 + 64).
    op = ops.fused_attention("a", 1, 2, 512, 512, 64, "bf16", True, 1, 64, window=128)
    assert op.flops == 2 * 2 * (8256 + 384 * 128) * 128
    assert op.shape.window == 128
    # Bytes: Q and O (2 heads x 512 x 128 elements) plus all 512 keys of the 1 KV head.
    assert op.main_bytes == 2 * (2 * 512 * 128 + 1 * 512 * 128)
    # Decode: only the last 128 keys of the 4,096 cached are read.
    dec = ops.fused_attention("d", 1, 2, 1, 4096, 64, "bf16", True, 1, 64, window=128)
    assert dec.main_bytes == 2 * (2 * 1 * 128 + 1 * 128 * 128)
    assert dec.flops == 2 * 2 * 128 * 128


def test_window_at_or_above_sequence_changes_nothing():
    plain = ops.fused_attention("a", 2, 8, 1024, 1024, 128, "bf16", True, 2)
    wide = ops.fused_attention("a", 2, 8, 1024, 1024, 128, "bf16", True, 2, window=1024)
    assert (wide.flops, wide.main_bytes) == (plain.flops, plain.main_bytes)


def test_window_needs_causal():
    with pytest.raises(InputError, match="window"):
        ops.fused_attention("a", 1, 2, 64, 64, 64, "bf16", False, window=16)


def test_key_blocks_by_hand():
    # 128 x 128 tiles, seq 512, window 128. Query block 2 (rows 256..383) needs keys
    # 129..383: blocks 1 (cut by the window's left edge) and 2 (the diagonal), both masked.
    assert key_blocks(512, True, 128, 2, 128, 128, 4, 0) == (2, 2)
    # Query block 0: block 0 only (the diagonal).
    assert key_blocks(512, True, 128, 0, 128, 128, 4, 0) == (1, 1)
    # Window 256: rows 256..383 need keys 1..383 -> blocks 0, 1, 2; block 1 (128..255)
    # lies inside every row's window and below the diagonal: unmasked.
    assert key_blocks(512, True, 256, 2, 128, 128, 4, 0) == (3, 2)
    # No window: the causal rule (blocks 0, 1 unmasked, 2 on the diagonal).
    assert key_blocks(512, True, 0, 2, 128, 128, 4, 0) == (3, 1)


def test_fused_cost_falls_with_the_window_and_matches_without_one():
    h100 = load_device("h100-sxm5-80gb")
    base = AttnShape(1, 64, 4096, 4096, 64, 64, 8, True, "bf16")
    full = attention_cost(h100, base, "cudnn", "fwd")
    same = attention_cost(h100, AttnShape(1, 64, 4096, 4096, 64, 64, 8, True, "bf16", 4096),
                          "cudnn", "fwd")
    local = attention_cost(h100, AttnShape(1, 64, 4096, 4096, 64, 64, 8, True, "bf16", 128),
                           "cudnn", "fwd")
    assert same.time_s == full.time_s
    # 32 query blocks of 128 rows each visit 2 key blocks instead of up to 32.
    assert local.time_s < full.time_s / 4
    assert local.details["blocks"] < full.details["blocks"] / 8


MISTRAL_7B_V01 = {  # mistralai/Mistral-7B-v0.1 config.json
    "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 32000, "max_position_embeddings": 32768, "sliding_window": 4096,
}


def test_mistral_sliding_window_applies_to_every_layer():
    from xpusim.sim.models.hf_config import from_hf_config
    assert from_hf_config(MISTRAL_7B_V01).layer_windows == (4096,) * 32
    # v0.2+ and Mixtral-8x7B publish null: full attention everywhere.
    assert from_hf_config({**MISTRAL_7B_V01, "sliding_window": None}).layer_windows == ()
    mixtral = {**MISTRAL_7B_V01, "model_type": "mixtral", "num_local_experts": 8,
               "num_experts_per_tok": 2}
    assert from_hf_config(mixtral).layer_windows == (4096,) * 32
    assert from_hf_config({**mixtral, "sliding_window": None}).layer_windows == ()


def test_mistral_bad_sliding_window_names_the_field():
    from xpusim.sim.errors import InputError
    from xpusim.sim.models.hf_config import from_hf_config
    with pytest.raises(InputError, match="sliding_window"):
        from_hf_config({**MISTRAL_7B_V01, "sliding_window": 0})
