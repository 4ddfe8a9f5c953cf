"""cuDNN's SM100 forward hides the softmax behind the MMAs; FlashAttention-4's forward
(sim/cost/attention_blackwell.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim.cost.attention_blackwell import cudnn_sm100_fwd, flash4_mufu_share, two_cta
from xpusim.sim.cost.attention_impl import (
    AttnShape,
    attention_cost,
    block_terms,
    check_impl,
    tiles,
)
from xpusim.sim.errors import InputError

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


# ------------------------------------------------------------ FlashAttention-4 (flash4)

B200 = load_device("b200")
B300 = load_device("b300")
FA4 = AttnShape(batch=1, heads=32, q_len=8192, kv_len=8192, head_dim=128, dtype="bf16")


def _fa4_block(shape, device=B200):
    br, bc = tiles("flash4", device, shape.head_dim, "fwd", shape.dtype, shape.causal)
    return block_terms(device, "flash4", shape, "fwd", br, bc)


def test_flash4_tile_is_two_q_tiles_of_128_by_128_keys():
    assert tiles("flash4", B200, 128, "fwd") == (256, 128)


def test_flash4_emulated_exp_share_follows_the_tuning_table():
    # 2-CTA noncausal d128: freq 10, start 1 -> pairs k = 6, 8, 16, 18, 26, 28 of 16 in
    # fragments 1 and 2 of 4: 6/16 * 2/4 = 18.75% emulated.
    assert two_cta(FA4)
    assert flash4_mufu_share(B200, FA4) == pytest.approx(1 - 0.1875)
    # causal d128 (1 CTA): freq 16 -> k = 12, 14, 28, 30: 4/16 * 2/4 = 12.5%.
    causal = replace(FA4, causal=True)
    assert not two_cta(causal)
    assert flash4_mufu_share(B200, causal) == pytest.approx(1 - 0.125)
    # d64: no table entry, the defaults (16, 1): 12.5%; SM103 (B300): hardware exp2 only.
    assert flash4_mufu_share(B200, replace(FA4, head_dim=64)) == pytest.approx(1 - 0.125)
    assert flash4_mufu_share(B300, FA4) == 1.0
    # d256: no emulation on this kernel.
    assert flash4_mufu_share(B200, replace(FA4, head_dim=256)) == 1.0


def test_flash4_block_terms_by_hand():
    b = _fa4_block(FA4)
    sms, clock = B200.matrix_cores, B200.clock_hz
    rate = B200.peak_for("matrix", "bf16") / sms * B200.efficiency.matrix_max_for("bf16")
    assert b.mma_s == pytest.approx(2 * 256 * 128 * (128 + 128) / rate)
    scores = 256 * 128
    assert b.exp_s == pytest.approx(0.8125 * scores / (16 * clock))
    lanes = B200.peak_for("vector", "fp32") / (2 * sms)
    # 4 softmax ops + 0.1875 x 9 emulation ops + 0.1 x 128/128 rescale ops per score
    assert b.alu_s == pytest.approx((4 + 0.1875 * 9 + 0.1) * scores / lanes)
    assert b.softmax_s == pytest.approx(max(b.exp_s, b.alu_s))
    # two softmax warpgroups against one MMA warp: a block costs the longer of the two
    assert b.block_s == pytest.approx(max(b.mma_s, b.softmax_s) + b.reduce_s + b.latency_s)


def test_flash4_emulation_moves_work_from_the_mufu_to_the_fma_lanes():
    fa4 = _fa4_block(FA4)
    cudnn = block_terms(B200, "cudnn", FA4, "fwd", 256, 128)
    assert fa4.exp_s < cudnn.exp_s
    assert fa4.alu_s > cudnn.alu_s


def test_flash4_refused_off_sm100_and_for_the_backward():
    H100 = load_device("h100-sxm5-80gb")
    with pytest.raises(InputError, match="--attention-impl flash4: .*SM100"):
        check_impl(H100, "flash4", "--attention-impl")
    assert check_impl(B200, "flash4") == "flash4"
    assert check_impl(B300, "flash4") == "flash4"
    with pytest.raises(InputError, match="backward"):
        attention_cost(B200, FA4, "flash4", "bwd")
    with pytest.raises(InputError, match="backward"):
        attention_cost(B200, FA4, "flash4", "fwd_bwd")
    with pytest.raises(InputError, match="bf16/fp16"):
        attention_cost(B200, replace(FA4, dtype="fp8"), "flash4", "fwd")


def test_flash4_causal_skips_the_blocks_above_the_diagonal():
    full = attention_cost(B200, FA4, "flash4")
    causal = attention_cost(B200, replace(FA4, causal=True), "flash4")
    assert causal.details["blocks"] < 0.6 * full.details["blocks"]


def test_train_refuses_flash4_up_front(capsys):
    """FA4's backward is not modelled: `train --attention-impl flash4` is refused before any
    work, naming the train flag (not op's --impl)."""
    from xpusim.sim.cli.main import main

    code = main(["train", "--model", "llama-3-8b", "--system", "dgx-b200", "--nodes", "1",
                 "--attention-impl", "flash4", "--quiet"])
    assert code == 2
    assert "--attention-impl flash4: training needs the backward" in capsys.readouterr().err
