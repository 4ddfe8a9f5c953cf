"""The key-block-parallel backward grid of FA2 / FA3 / xFormers (attention_impl.KEY_BLOCK_BWD):
one CTA per key block of each (batch, head), walking the query blocks that see it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_device
from xpusim.sim.cost.attention_impl import AttnShape, attention_cost, attention_time_s
from xpusim.sim.cost.attention_items import key_block_items, work_items

A100 = load_device("a100-sxm4-80gb")
H100 = load_device("h100-sxm5-80gb")


def test_causal_key_block_items_by_hand():
    """256 queries (the last of 512 keys), 128 x 128 blocks: query block 0 (rows 256..383)
    sees key blocks 0, 1 and 2 (2 masked on the diagonal), query block 1 (rows 384..511) key
    blocks 0..3 (3 masked). Per key block: 0 and 1 two full blocks, 2 one full + one masked,
    3 one masked; 7 blocks, as the query-block items count them."""
    shape = AttnShape(1, 1, 256, 512, 64, causal=True)
    items, blocks = key_block_items(shape, 2, 4, 128, 128, 1.0, 10.0, 100.0)
    assert items == [102.0, 102.0, 111.0, 110.0]
    assert blocks == 7
    q_items, q_blocks = work_items(shape, 2, 4, 128, 128, 1.0, 10.0, 100.0)
    assert q_blocks == blocks
    assert sum(q_items) - 2 * 100.0 == sum(items) - 4 * 100.0  # the same block work
    # square causal: key block j is seen by query blocks j..3, the first of them masked
    square = AttnShape(1, 1, 512, 512, 64, causal=True)
    items, blocks = key_block_items(square, 4, 4, 128, 128, 1.0, 10.0, 0.0)
    assert items == [13.0, 12.0, 11.0, 10.0]
    assert blocks == 10


def test_backward_items_are_key_blocks():
    """FA2's backward launches ceil(kv_len / Bc) CTAs per (batch, head) (grid (num_n_block, b,
    h)): 14,443 keys in 128-key blocks -> 113 per head, not the 4 query blocks of 512 rows."""
    shape = AttnShape(2, 4, 512, 14443, 64, dtype="fp16")
    assert attention_cost(A100, shape, "flash2", "bwd").details["items"] == 113 * 8
    assert attention_cost(A100, shape, "flash2", "fwd").details["items"] == 4 * 8


IMPLS = st.sampled_from([(A100, "flash2"), (A100, "xformers"), (H100, "flash3")])


@settings(max_examples=60, deadline=None)
@given(IMPLS, st.integers(1, 8), st.sampled_from([1, 8, 32]), st.integers(1, 4096),
       st.integers(0, 8192), st.sampled_from([64, 128]), st.booleans())
def test_backward_never_faster_with_more_keys_or_batch(dev_impl, batch, heads, q_len, extra,
                                                       head_dim, causal):
    """More keys at fixed queries, or a larger batch, never shortens the backward. Causal
    with more keys: the diagonal moves right, so the heaviest CTA's (key block 0's) blocks can
    turn from masked (one more FP32 op per score, ``ALU_PER_SCORE``) to full; when that CTA
    sets the makespan (one wave) the kernel may get shorter by that mask work, < 1%."""
    device, impl = dev_impl
    shape = AttnShape(batch, heads, q_len, q_len + extra, head_dim, causal=causal, dtype="fp16")
    t = attention_time_s(device, shape, impl, "bwd")
    more_keys = AttnShape(batch, heads, q_len, q_len + extra + 97, head_dim, causal=causal,
                          dtype="fp16")
    more_batch = AttnShape(batch + 1, heads, q_len, q_len + extra, head_dim, causal=causal,
                           dtype="fp16")
    slack = 0.01 if causal else 1e-12
    assert attention_time_s(device, more_keys, impl, "bwd") >= t * (1 - slack)
    assert attention_time_s(device, more_batch, impl, "bwd") >= t * (1 - 1e-12)


def test_batch_no_longer_speeds_up_a_head():
    """The open item this grid closes (docs/cost_model.md): 512 queries against 14,443 keys on
    V100 with xFormers got faster in total from batch 1 to 2; per head it now costs at least
    as much."""
    v100 = load_device("v100-sxm2-32gb")
    one = attention_time_s(v100, AttnShape(1, 16, 512, 14443, 64, dtype="fp16"), "xformers", "bwd")
    two = attention_time_s(v100, AttnShape(2, 16, 512, 14443, 64, dtype="fp16"), "xformers", "bwd")
    assert two >= 1.9 * one
    assert two == pytest.approx(2 * one, rel=0.05)
