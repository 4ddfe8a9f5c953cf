"""cuDNN's SM100 forward hides the softmax behind the MMAs (sim/cost/attention_blackwell.py)."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim.cost.attention_blackwell import cudnn_sm100_fwd
from xpusim.sim.cost.attention_impl import AttnShape, block_terms, tiles

GB200 = load_device("gb200")
H100 = load_device("h100-sxm5-80gb")
SHAPE = AttnShape(batch=1, heads=64, q_len=8192, kv_len=8192, head_dim=128, kv_heads=8,
                  causal=False, dtype="bf16")


def _block(device, impl, pass_):
    br, bc = tiles(impl, device, SHAPE.head_dim, pass_, SHAPE.dtype, SHAPE.causal)
    return block_terms(device, impl, SHAPE, pass_, br, bc)


def test_sm100_cudnn_forward_block_is_the_longer_of_mma_and_softmax():
    b = _block(GB200, "cudnn", "fwd")
    assert b.block_s == pytest.approx(max(b.mma_s, b.softmax_s) + b.reduce_s + b.latency_s)


def test_only_cudnn_forward_on_blackwell_overlaps_fully():
    assert cudnn_sm100_fwd(GB200, "cudnn", "fwd")
    assert not cudnn_sm100_fwd(GB200, "cudnn", "bwd")
    assert not cudnn_sm100_fwd(GB200, "flash2", "fwd")
    assert not cudnn_sm100_fwd(H100, "cudnn", "fwd")
    bwd = _block(GB200, "cudnn", "bwd")
    assert bwd.block_s >= bwd.mma_s + bwd.softmax_s
    hopper = _block(H100, "cudnn", "fwd")
    assert hopper.block_s >= hopper.mma_s + hopper.softmax_s
