"""Megatron-LM's unfused attention with its fused scale-mask-softmax (``fused_softmax``)."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim.cost.attention_impl import AttnShape, attention_cost, check_impl
from xpusim.sim.cost.attention_megatron import (
    fused_kernel_runs,
    fused_softmax_ops,
    rows_per_block,
)
from xpusim.sim.errors import InputError

# Megatron GPT-3 1.7B per rank (24 heads, head dim 96, seq 2048, MBS 1), fp16, causal.
SHAPE = AttnShape(1, 24, 2048, 2048, 96, causal=True, dtype="fp16")
SCORES = 24 * 2048 * 2048


def _bytes(ops_, name):
    return next(op.main_bytes for op in ops_ if op.name == name)


def test_causal_kernel_reads_the_triangle_and_writes_full_rows():
    # scaled_upper_triang_masked_softmax: row i loads i + 1 scores, stores the whole row.
    pairs = 24 * 2048 * 2049 / 2
    fwd = fused_softmax_ops(SHAPE, "fwd")
    assert [op.name for op in fwd] == ["qk", "fused_scale_mask_softmax", "pv"]
    assert _bytes(fwd, "fused_scale_mask_softmax") == pytest.approx((pairs + SCORES) * 2)
    bwd = fused_softmax_ops(SHAPE, "bwd")
    assert _bytes(bwd, "fused_scale_mask_softmax_bwd") == pytest.approx((2 * pairs + SCORES) * 2)
    assert [op.name for op in bwd] == ["dp", "dv", "fused_scale_mask_softmax_bwd", "dq", "dk",
                                       "dq_scale", "dk_scale"]


def test_padding_mask_kernel_reads_rows_and_mask():
    shape = AttnShape(2, 8, 512, 512, 64, causal=False, dtype="bf16")
    scores = 2 * 8 * 512 * 512
    fwd = fused_softmax_ops(shape, "fwd")
    assert _bytes(fwd, "fused_scale_mask_softmax") == pytest.approx(scores * 4 + 2 * 512 * 512)


@pytest.mark.parametrize("shape, runs", [
    (SHAPE, True),
    (AttnShape(1, 6, 2048, 2048, 128, causal=True, dtype="fp16"), False),  # 6 rows: not /4
    (AttnShape(2, 6, 2048, 2048, 128, causal=True, dtype="fp16"), True),   # 12 rows
    (AttnShape(1, 24, 2048, 2048, 96, causal=True, dtype="fp32"), False),  # 16-bit only
    (AttnShape(1, 24, 16, 16, 96, causal=True, dtype="fp16"), False),      # 16 < sk
    (AttnShape(1, 24, 32768, 32768, 96, causal=True, dtype="bf16"), False),
])
def test_kernel_constraints(shape, runs):
    assert fused_kernel_runs(shape) is runs


@pytest.mark.parametrize("kv, rows", [(2048, 4), (1024, 4), (256, 4), (128, 8), (64, 8),
                                      (32, 8), (17, 8), (16, 16)])
def test_rows_per_block_as_the_dispatcher(kv, rows):
    # warp = min(2^ceil(log2 kv), 32) threads, 2 rows per warp up to 128 keys; 128 threads
    assert rows_per_block(kv) == rows


def test_short_rows_need_a_multiple_of_eight():
    assert not fused_kernel_runs(AttnShape(1, 4, 128, 128, 64, causal=True, dtype="bf16"))
    assert fused_kernel_runs(AttnShape(2, 4, 128, 128, 64, causal=True, dtype="bf16"))


def test_fallback_runs_the_softmax_in_fp32():
    shape = AttnShape(1, 6, 2048, 2048, 128, causal=True, dtype="fp16")
    names = [op.name for op in fused_softmax_ops(shape, "fwd")]
    assert names == ["qk", "scores_float", "scores_scale", "scores_masked_fill", "softmax_fp32",
                     "probs_half", "pv"]


def test_fused_softmax_moves_fewer_bytes_than_eager():
    dev = load_device("a100-sxm4-80gb")
    for pass_ in ("fwd", "bwd"):
        fused = attention_cost(dev, SHAPE, "fused_softmax", pass_)
        eager = attention_cost(dev, SHAPE, "standard", pass_)
        assert fused.details["hbm_bytes"] < eager.details["hbm_bytes"]
        assert fused.time_s < eager.time_s
    assert attention_cost(dev, SHAPE, "fused_softmax").details["fused_kernel"] == 1.0


def test_fused_softmax_is_a_cuda_kernel():
    with pytest.raises(InputError, match="fused_softmax"):
        check_impl(load_device("ascend-910b2"), "fused_softmax", "--attention-impl")


def test_training_step_keeps_the_scores_and_runs_faster_than_eager():
    import xpusim

    plan = dict(model="gpt3-1.7b", system="dgx-a100", nodes=1, tp=1, pp=1, mbs=1, gbs=16,
                seq=2048, dtype="fp16", recompute="none", dropout=0.1)
    eager = xpusim.train(**plan, attention_impl="standard").as_dict()
    fused = xpusim.train(**plan, attention_impl="fused_softmax").as_dict()
    # the same tensors are saved (Korthikanti et al.'s 5 a s^2 b with dropout) ...
    assert fused["memory_per_device_bytes"] == eager["memory_per_device_bytes"]
    # ... and the softmax passes cross HBM fewer times
    for phase in ("fwd", "bwd"):
        key = f"{phase}:attention"
        assert fused["compute_by_kind_s"][key] < eager["compute_by_kind_s"][key]
    assert fused["step_time_s"] < eager["step_time_s"]
