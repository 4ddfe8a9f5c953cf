"""Attention by implementation (sim/cost/attention_impl.py): hand-computed terms,
invariants, and agreement with the FastAttention study on Ascend."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.attention_model import compare, fast_attention_cost
from xpusim.sim.cli.main import main
from xpusim.sim.cost.attention_impl import (
    AttnShape,
    KernelCostModel,
    attention_cost,
    block_terms,
    default_impl,
    standard_ops,
    tiles,
)
from xpusim.sim.errors import InputError

A100 = load_device("a100-sxm4-80gb")
H100 = load_device("h100-sxm5-80gb")
NPU = load_device("ascend-910b2")


def test_standard_materialises_scores():
    """QK^T writes the b*h*q*kv scores in the dtype; softmax reads and writes them."""
    shape = AttnShape(1, 2, 128, 128, 64, dtype="bf16")
    qk, softmax, pv = standard_ops(shape, "fwd")
    scores = 2 * 128 * 128 * 2  # b*h*q*kv elements x 2 bytes
    assert qk.main_bytes == 2 * (128 * 64 + 128 * 64) * 2 + scores
    assert softmax.main_bytes == 2 * scores
    assert pv.main_bytes == scores + 2 * (128 * 64 + 128 * 64) * 2
    causal = standard_ops(AttnShape(1, 2, 128, 128, 64, causal=True), "fwd")
    assert [op.name for op in causal] == [
        "mask_full", "mask_triu", "mask_cast", "qk", "mask_add", "softmax", "pv"]
    assert [op.name for op in standard_ops(shape, "bwd")] == [
        "dp", "dv", "softmax_bwd_mul", "softmax_bwd", "dq", "dk", "dq_scale", "dk_scale"]


def test_standard_softmax_backward_is_two_kernels():
    """softmax_backward_cuda_out (ATen SoftMax.cu) runs tmp = grad * output first, then the
    softmax-backward kernel on (tmp, output): each reads two score tensors and writes one,
    so the backward moves 6 score tensors (2 B each in bf16), not 3."""
    shape = AttnShape(1, 2, 128, 128, 64, dtype="bf16")
    scores = 2 * 128 * 128 * 2
    by_name = {op.name: op for op in standard_ops(shape, "bwd")}
    assert by_name["softmax_bwd_mul"].main_bytes == 3 * scores
    assert by_name["softmax_bwd"].main_bytes == 3 * scores


def test_flash2_block_terms_by_hand():
    """A100, d=64, 128x128 block: 2 GEMMs of 2*128*128*64 at 312/108 TFLOP/s x 0.8307 (the
    profile's matrix_max; mma.sync is Ampere's native path), 128*128 exp2 at 16/clk/SM x
    1.41 GHz."""
    t = block_terms(A100, "flash2", AttnShape(1, 1, 4096, 4096, 64), "fwd", 128, 128)
    assert t.mma_s == pytest.approx(4 * 128 * 128 * 64 / (312e12 / 108 * 0.8307))
    assert t.exp_s == pytest.approx(128 * 128 / (16 * 1.41e9))
    assert t.block_s == pytest.approx(t.mma_s + max(t.exp_s, t.alu_s))
    # Hopper: FA2's mma.sync reaches half of the wgmma peak; FA3 uses wgmma.
    fa2 = block_terms(H100, "flash2", AttnShape(1, 1, 4096, 4096, 64), "fwd", 128, 128)
    fa3 = block_terms(H100, "flash3", AttnShape(1, 1, 4096, 4096, 64), "fwd", 128, 128)
    assert fa2.mma_s == pytest.approx(2 * fa3.mma_s)


def test_flash2_wave_count_short_sequence():
    """16 heads x ceil(512/128) query blocks = 64 items: one partial wave on 108 SMs."""
    cost = attention_cost(A100, AttnShape(1, 16, 512, 512, 128), "flash2", "fwd")
    assert cost.details["items"] == 64
    assert cost.details["waves"] == 1
    # One item per SM: one item's 512/64 = 8 key blocks + loading Q and storing O
    # (128 rows x (128 + 128) x 2 B) at the SM's share of HBM bandwidth.
    io = 128 * 256 * 2 / (2039e9 * 0.86 / 108)
    assert cost.details["pipeline_s"] == pytest.approx(8 * cost.details["block_s"] + io)


def test_fwd_bwd_is_the_sum_and_backward_is_slower():
    shape = AttnShape(2, 16, 2048, 2048, 128, causal=True)
    fwd = attention_cost(H100, shape, "flash3", "fwd").time_s
    bwd = attention_cost(H100, shape, "flash3", "bwd").time_s
    assert attention_cost(H100, shape, "flash3", "fwd_bwd").time_s == pytest.approx(fwd + bwd)
    assert bwd > 2 * fwd


def test_defaults_and_refusals():
    assert default_impl(H100) == "flash3"
    assert default_impl(A100) == "flash2"
    assert default_impl(NPU) == "npu_fusion_attention"
    assert default_impl(load_device("cpu-host")) == "standard"
    with pytest.raises(InputError, match="flash3"):
        attention_cost(A100, AttnShape(1, 1, 128, 128, 64), "flash3")
    with pytest.raises(InputError, match="CUDA"):
        attention_cost(NPU, AttnShape(1, 1, 128, 128, 64), "flash2")


IMPLS_GPU = ("standard", "flash2", "flash3", "cudnn")


@settings(max_examples=25, deadline=None)
@given(
    impl=st.sampled_from(IMPLS_GPU),
    seq=st.integers(64, 8192),
    grow=st.integers(1, 4096),
    heads=st.integers(1, 64),
    d=st.sampled_from([64, 128, 256]),
    pass_=st.sampled_from(["fwd", "bwd"]),
)
def test_time_grows_with_seq_and_causal_never_slower(impl, seq, grow, heads, d, pass_):
    def t(s, causal):
        return attention_cost(H100, AttnShape(1, heads, s, s, d, causal=causal), impl,
                              pass_).time_s

    # Below one tile of queries the forward takes the split-KV (decode) path: a different
    # schedule, not comparable across that boundary.
    assume(pass_ == "bwd" or impl == "standard" or seq >= 192)
    assert t(seq + grow, False) >= t(seq, False) * (1 - 1e-12)
    assert t(seq + grow, True) >= t(seq, True) * (1 - 1e-12)
    same_tile = tiles(impl, H100, d, pass_, "bf16", True) == tiles(impl, H100, d, pass_, "bf16")
    if impl != "standard" and same_tile:  # fused kernels skip masked blocks: causal never slower
        assert t(seq, True) <= t(seq, False) * (1 + 1e-12)
    elif impl != "standard":  # FA3 release, d=128: causal 128x128 vs 128x176 (wider key blocks)
        assert t(seq, True) <= t(seq, False) * 1.2
    else:  # eager PyTorch builds and adds the mask on top of the same GEMMs (FA3 Fig. 5)
        assert t(seq, True) >= t(seq, False)


@pytest.mark.parametrize("seq", [1024, 4096])
def test_ascend_training_op_matches_attention_study(seq):
    """The 910B2 attention op of a training step costs what `xpusim attention` prints."""
    op = ops.fused_attention("attention", 1, 32, seq, seq, 128, "fp16", causal=True)
    step = KernelCostModel(NPU).time(op).time_s
    study = compare(NPU, 1, 32, seq, 128, True, "fp16")["fast_time_s"]
    assert step == pytest.approx(study, rel=1e-12)
    assert study == fast_attention_cost(NPU, 1, 32, seq, 128, True, "fp16").time_s


def test_kernel_model_backward_op_uses_backward_pass():
    op = ops.fused_attention("attention", 1, 8, 2048, 2048, 128, "bf16", causal=True)
    from xpusim.sim.training.layers import backward_op

    (bwd,) = backward_op(op)
    model = KernelCostModel(H100, "flash2")
    expect = attention_cost(H100, AttnShape(1, 8, 2048, 2048, 128, causal=True), "flash2", "bwd")
    assert model.time(bwd).time_s == pytest.approx(expect.time_s)


def test_op_attention_cli_reports_achieved_tflops(capsys):
    args = ("op attention --device h100-sxm5-80gb --batch 8 --heads 32 --seq 4096 "
            "--head-dim 128 --impl flash2 --pass bwd --json").split()
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    flops = 2.5 * 4 * 8 * 32 * 4096 * 4096 * 128
    assert out["impl"] == "flash2" and out["pass"] == "bwd"
    assert out["achieved_tflops"] == pytest.approx(flops / out["time_s"] / 1e12)
    assert math.isfinite(out["time_s"])
    assert main("op attention --device a100-sxm4-80gb --seq 1024 --impl flash3".split()) == 2


def test_fa3_forward_tiles_follow_the_release():
    """hopper/flash_fwd_launch_template.h (2024): 16-bit d128 128x176 (causal 128x128),
    FP8 d128 128x256, FP8 d256 128x128; d64 192x128 for both."""
    assert tiles("flash3", H100, 128, "fwd", "bf16", causal=False) == (128, 176)
    assert tiles("flash3", H100, 128, "fwd", "bf16", causal=True) == (128, 128)
    assert tiles("flash3", H100, 128, "fwd", "fp8") == (128, 256)
    assert tiles("flash3", H100, 256, "fwd", "fp8") == (128, 128)
    assert tiles("flash3", H100, 256, "fwd", "bf16") == (128, 80)
    assert tiles("flash3", H100, 64, "fwd", "fp8") == (192, 128)
    assert tiles("flash3", H100, 128, "bwd", "bf16") == (64, 128)  # backward unchanged


def test_triton2_backward_loads_are_not_prefetched():
    """num_stages=1: each block also pays its Q and dO tiles (2 x 128 x 64 x 2 bytes) at the
    SM's share of L2 bandwidth, on top of the fp32 dQ read-modify-write."""
    shape = AttnShape(1, 4, 256, 256, 64, dtype="fp16")
    l2_per_sm = A100.kernels.l2_bandwidth / A100.matrix_cores
    t2 = block_terms(A100, "triton2", shape, "bwd", 128, 128)
    fa2 = block_terms(A100, "flash2", shape, "bwd", 128, 128)
    assert t2.reduce_s == pytest.approx(fa2.reduce_s + 2 * 128 * 64 * 2 / l2_per_sm)
    assert t2.mma_s == pytest.approx(fa2.mma_s)


def test_triton2_backward_is_one_program_per_head():
    """Grid = batch x heads: 4 heads of 2 x 2 blocks (seq 256, 128x128 tiles) on 108 SMs take
    one head's 4 blocks in series (plus its two query blocks' Q/O pipeline fill), while FA2's
    8 query-block items run side by side."""
    shape = AttnShape(1, 4, 256, 256, 64, dtype="fp16")
    block = block_terms(A100, "triton2", shape, "bwd", 128, 128).block_s
    sm_bw = A100.hbm_bandwidth * A100.efficiency.memory_max / A100.matrix_cores
    io_s = 128 * (64 + 64) * 2 * 3.0 / sm_bw
    cost = attention_cost(A100, shape, "triton2", "bwd")
    assert cost.details["pipeline_s"] == pytest.approx(4 * block + 2 * io_s)
    with pytest.raises(InputError):  # a CUDA kernel: not on Ascend
        attention_cost(NPU, shape, "triton2", "bwd")


def test_triton_fa_backward_takes_the_faster_autotuned_grid():
    """flash_attn_triton.py autotunes its backward over SEQUENCE_PARALLEL False (one program
    per batch x head, as triton2) and True (one program per key block): the model prices both
    with triton2's blocks and keeps the faster. Forward and side kernels are triton2's."""
    few_heads = AttnShape(2, 16, 16384, 16384, 128, causal=True)  # 32 programs on 108 SMs
    per_head = attention_cost(A100, few_heads, "triton2", "bwd")
    fa = attention_cost(A100, few_heads, "triton-fa", "bwd")
    # 128 key blocks x 32 (batch, head) fill the SMs: far below the per-head grid's 32 items
    assert fa.time_s < 0.5 * per_head.time_s
    assert fa.details["pipeline_s"] < per_head.details["pipeline_s"]
    # the sequence-parallel items hold the same blocks: their sum equals the per-head item
    assert fa.details["blocks"] == per_head.details["blocks"]
    # many (batch, head) programs of one block each: both grids equal, so the same price
    one_block = AttnShape(64, 32, 128, 128, 128, causal=True)
    assert attention_cost(A100, one_block, "triton-fa", "bwd").time_s == pytest.approx(
        attention_cost(A100, one_block, "triton2", "bwd").time_s)
    for shape in (few_heads, one_block):
        assert attention_cost(A100, shape, "triton-fa", "fwd").time_s == \
            attention_cost(A100, shape, "triton2", "fwd").time_s
        assert attention_cost(A100, shape, "triton-fa", "bwd").time_s <= \
            attention_cost(A100, shape, "triton2", "bwd").time_s
    with pytest.raises(InputError):  # a CUDA kernel: not on Ascend
        attention_cost(NPU, few_heads, "triton-fa", "bwd")


def test_attention_pytorch_adds_the_benchmark_layout_copies():
    """attention_pytorch = standard + the FA benchmarks' layout copies (sim/cost/attention_eager):
    forward q, k, v each copied once (read + write b*h*s*d bf16), backward one stack of the
    three gradients. Hand-computed on H100 (3350 GB/s x memory_max 0.9, memory half 4.19 MiB,
    launch 5 us): a copy of B bytes costs (2B + 4.19 MiB) / (3350e9 * 0.9) + 5 us."""
    shape = AttnShape(2, 4, 1024, 1024, 64, dtype="bf16")
    one = 2 * 4 * 1024 * 64 * 2  # b*h*s*d elements x 2 bytes = 1 MiB
    rate, half, launch = 3350e9 * 0.9, 4.19 * 2**20, 5e-6
    fwd_copies = 3 * ((2 * one + half) / rate + launch)  # 21.46 us
    bwd_stack = (2 * 3 * one + half) / rate + launch  # 8.54 us
    for pass_, extra in (("fwd", fwd_copies), ("bwd", bwd_stack)):
        base = attention_cost(H100, shape, "standard", pass_).time_s
        bench = attention_cost(H100, shape, "attention_pytorch", pass_)
        assert bench.time_s - base == pytest.approx(extra, rel=1e-9)
        std_kernels = attention_cost(H100, shape, "standard", pass_).details["kernels"]
        assert bench.details["kernels"] - std_kernels == (3 if pass_ == "fwd" else 1)
    # runs wherever eager PyTorch does (here an Ascend profile), unlike the CUDA fused kernels
    assert attention_cost(NPU, shape, "attention_pytorch", "fwd").time_s > 0


def test_attention_pytorch_transposing_copy_is_priced_by_its_l2_sectors():
    """copy_k (sim/cost/attention_eager): each of k's b*h*s*d bf16 elements is read from its own
    32-byte sector, so on an NVIDIA GPU the copy takes the longer of its HBM time and
    (its bytes + 30 B per element) at the L2 bandwidth. Hand-computed, FA3 paper B3 8k on H100
    (L2 12 TB/s; HBM 3350 GB/s x 0.9, half 4.19 MiB):
    k = 2*32*8192*64 = 33,554,432 elements = 64 MiB; copy bytes 2 x 64 MiB = 134,217,728;
    HBM (134,217,728 + 4,393,533.44) / 3.015e12 = 45.974 us; L2 (134,217,728 + 30 x 33,554,432)
    / 12e12 = 1,140,850,688 / 12e12 = 95.071 us: 49.097 us more than the roofline copy.
    Backward, the stack (3 x 64 MiB in and out) stays HBM-bound: L2 (402,653,184 +
    1,006,632,960) / 12e12 = 117.44 us < HBM 135.01 us. Ascend: no sector term."""
    shape = AttnShape(2, 32, 8192, 8192, 64, dtype="bf16")
    fwd = attention_cost(H100, shape, "attention_pytorch", "fwd")
    assert fwd.details["strided_l2_extra_s"] == pytest.approx(49.097e-6, rel=1e-4)
    rate, half, launch = 3350e9 * 0.9, 4.19 * 2**20, 5e-6
    copies = 3 * ((2 * 64 * 2**20 + half) / rate + launch)
    std = attention_cost(H100, shape, "standard", "fwd").time_s
    assert fwd.time_s - std == pytest.approx(copies + 49.097e-6, rel=1e-4)
    bwd = attention_cost(H100, shape, "attention_pytorch", "bwd")
    assert bwd.details["strided_l2_extra_s"] == 0.0
    assert attention_cost(NPU, shape, "attention_pytorch", "fwd").details[
        "strided_l2_extra_s"] == 0.0


def test_standard_backward_applies_the_scale_after_each_bmm():
    """baddbmm's autograd (derivatives.yaml: maybe_multiply(grad.bmm(...), alpha)) multiplies
    the q and k gradients by alpha in two elementwise kernels: each reads and writes
    b*h*s*d elements (2 x 128 x 64 x 2 B = 32 KiB in and out here)."""
    shape = AttnShape(1, 2, 128, 256, 64, dtype="bf16")
    by_name = {op.name: op for op in standard_ops(shape, "bwd")}
    assert by_name["dq_scale"].main_bytes == 2 * (2 * 128 * 64) * 2
    assert by_name["dk_scale"].main_bytes == 2 * (2 * 256 * 64) * 2


def test_flash1_splitk_reduction_by_hand():
    """FA1 (FMHA_kernel_traits<256, 64, 16, 1, 4>): each 16-row step over 256 keys sums its 4
    warps' 16 x 64 fp32 O partials through shared memory, written and read once: 2 x 4 x 4 x
    16 x 64 B per 16 x 256 scores = 8 B per score, at 128 B/clk/SM x 1.41 GHz. Backward (1 x 8
    warps): dQ partials, 16 B per score. The rest of the block is FA2's plus FA1's O rescale
    and its fp32 O round trip through HBM once per 256-key block (2 x 4 x 64 B per row, i.e.
    2 B per score; none when one key block covers seqlen_k)."""
    shape = AttnShape(1, 4, 1024, 1024, 64, dtype="fp16")
    smem_rate = 128 * 1.41e9
    sm_bw = A100.hbm_bandwidth * A100.efficiency.memory_max / A100.matrix_cores
    o_trip = 2 * 4 * 64 / 256 * 128 * 128 / sm_bw
    for pass_, per_score in (("fwd", 8.0), ("bwd", 16.0)):
        fa1 = block_terms(A100, "flash1", shape, pass_, 128, 128)
        fa2 = block_terms(A100, "flash2", shape, pass_, 128, 128)
        assert fa1.reduce_s - fa2.reduce_s == pytest.approx(
            o_trip + per_score * 128 * 128 / smem_rate)
        assert fa1.mma_s == pytest.approx(fa2.mma_s)
    # seqlen_k 128 takes one 128-key block: the same partials over half the keys, no O trip
    short = AttnShape(1, 4, 128, 128, 64, dtype="fp16")
    fwd_short = block_terms(A100, "flash1", short, "fwd", 128, 128).reduce_s
    assert fwd_short == pytest.approx(16.0 * 128 * 128 / smem_rate)


def test_triton2_softmax_instructions_follow_the_source():
    """Triton 2.0 forward: FA2's 4 FP32 instructions per score + the separate scale multiply,
    the log2(e) multiply of tl.exp, the per-block P normalisation and the causal tl.where on
    every block = 8; backward 5 + log2(e) + tl.where = 7 (diagonal blocks included)."""
    fp32_lanes = A100.peak_for("vector", "fp32") / (2.0 * A100.matrix_cores)
    for causal, fwd_alu, bwd_alu in ((True, 8.0, 7.0), (False, 7.0, 6.0)):
        shape = AttnShape(1, 4, 1024, 1024, 64, causal=causal, dtype="fp16")
        for pass_, alu in (("fwd", fwd_alu), ("bwd", bwd_alu)):
            for diagonal in (False, True):
                t = block_terms(A100, "triton2", shape, pass_, 128, 128, diagonal=diagonal)
                expect = alu + (1.0 if diagonal and not causal else 0.0)
                assert t.alu_s == pytest.approx(expect * 128 * 128 / fp32_lanes)


def test_triton2_backward_side_kernels():
    """Triton 2.0's backward also fills an fp32 dq (4 B per q element), runs _bwd_preprocess
    (reads O, dO, L; writes do_scaled, delta) and autograd casts the fp32 dq to fp16: three
    roofline kernels in series, one launch of them already in the fused price."""
    from xpusim.sim.cost.attention_blocks import triton2_bwd_side_ops
    from xpusim.sim.cost.roofline import RooflineModel

    shape = AttnShape(2, 4, 1024, 1024, 64, causal=True, dtype="fp16")
    side = triton2_bwd_side_ops(2, 4, 1024, 64, 64, "fp16")
    elems, rows = 2 * 4 * 1024 * 64, 2 * 4 * 1024
    assert [op.main_bytes for op in side] == [4 * elems, 3 * 2 * elems + 8 * rows, 6 * elems]
    roof = RooflineModel(A100)
    extra = sum(roof.time(op).time_s for op in side) - A100.efficiency.launch_overhead_s
    cost = attention_cost(A100, shape, "triton2", "bwd")
    assert cost.details["side_kernels_s"] == pytest.approx(extra)
    import xpusim.sim.cost.attention_impl as impl_module  # the fused part alone
    fused = impl_module._fused_gpu(A100, shape, "triton2", "bwd")
    assert cost.time_s == pytest.approx(fused.time_s + extra)


def test_flash_backward_preprocess_and_dq_convert():
    """FA2 (run_flash_bwd_seqk_parallel) and FA3 (hopper run_flash_bwd) wrap the main backward
    kernel in a preprocess (reads O and dO, writes dot(dO, O) per row, zeroes the fp32
    dq_accum; FA3 also writes LSE in log2 units) and a dQ convert (fp32 dq_accum in, fp16
    dQ out). Their bytes depend on b*s*h*d only, so at a fixed 16k tokens they are the same
    at every sequence length."""
    from xpusim.sim.cost.attention_blocks import bwd_side_ops

    elems, rows = 2 * 4 * 1024 * 64, 2 * 4 * 1024
    fa2 = bwd_side_ops("flash2", 2, 4, 1024, 64, 64, "fp16")
    assert [op.name for op in fa2] == ["bwd_preprocess", "convert_dq"]
    assert fa2[0].main_bytes == 2 * 2 * elems + 4 * elems + 4 * rows
    assert fa2[1].main_bytes == (4 + 2) * elems
    fa3 = bwd_side_ops("flash3", 2, 4, 1024, 64, 64, "fp16")
    assert fa3[0].main_bytes == fa2[0].main_bytes + 2 * 4 * rows
    assert bwd_side_ops("cudnn", 2, 4, 1024, 64, 64, "fp16") == []
    short, long_ = (AttnShape(16384 // s, 32, s, s, 64, causal=True, dtype="fp16")
                    for s in (512, 8192))
    side = [attention_cost(A100, sh, "flash2", "bwd").details["side_kernels_s"]
            for sh in (short, long_)]
    assert side[0] == pytest.approx(side[1])
    assert attention_cost(A100, short, "flash2", "fwd").details.get("side_kernels_s") is None


def test_xformers_shared_memory_traffic_by_hand():
    """xFormers' CUTLASS kernels read every GEMM operand from shared memory through 32 x 32
    warp tiles (M N K x 2 B x (1/32 + 1/32)), stage P / dS there and fill their tiles by
    cp.async; the block pays what those bytes take at 128 B/clk/SM beyond its MMA time.
    64 x 64 block, d = 64, fp16. Forward: operands 64*64*128 * 0.125 = 65,536 B; P written
    4,096 x 2; Q, K, V filled 3 x 4,096 x 2 -> 98,304 B. Backward: operands 64*64*320 * 0.125 =
    163,840 B; P written, P read, dS written 3 x 8,192; Q, dO twice and K, V once 6 x 8,192 ->
    237,568 B."""
    from xpusim.sim.cost.attention_blocks import xformers_smem_bytes

    assert xformers_smem_bytes(64, 64, 64, 64, "fwd", "fp16") == 98_304
    assert xformers_smem_bytes(64, 64, 64, 64, "bwd", "fp16") == 237_568
    shape = AttnShape(1, 4, 1024, 1024, 64, causal=True, dtype="fp16")
    smem_rate = 128 * 1.41e9
    for pass_, nbytes in (("fwd", 98_304), ("bwd", 237_568)):
        xf = block_terms(A100, "xformers", shape, pass_, 64, 64)
        fa2 = block_terms(A100, "flash2", shape, pass_, 64, 64)
        assert xf.mma_s == fa2.mma_s and nbytes / smem_rate > xf.mma_s  # the port binds
        # (each without its dependent-chain latency, which attention_latency prices per kernel)
        extra = (xf.block_s - xf.latency_s) - (fa2.block_s - fa2.latency_s)
        assert extra == pytest.approx(nbytes / smem_rate - xf.mma_s)
    assert tiles("xformers", A100, 64, "bwd") == (64, 64)
    assert tiles("xformers", A100, 128, "bwd") == tiles("flash2", A100, 128, "bwd")


def test_xformers_split_key_backward_by_hand():
    """xFormers >= 0.0.20 splits the backward's keys over CTAs (one per 64-key block unless
    batch x heads >= 256 with <= 128 keys; at most 200 / (batch x heads) when d > 64); each
    CTA recomputes delta over all queries of its head, reading O and dO (2 x s x d x 2 B), and
    the fp32 dQ workspace (16-byte lock header + 64 x d x 4 B per 64-row tile) is zeroed."""
    from xpusim.sim.cost.attention_blocks import (
        bwd_prologue_bytes_per_item,
        bwd_side_ops,
        xformers_key_splits,
    )

    assert xformers_key_splits(32, 32, 512, 64) == 8
    assert xformers_key_splits(4, 64, 128, 64) == 1
    assert xformers_key_splits(1, 8, 1024, 128) == 16
    assert xformers_key_splits(16, 32, 1024, 128) == 1
    args = (32, 32, 512, 512, 64, 64, "fp16", 64)
    assert bwd_prologue_bytes_per_item("xformers", "bwd", *args) == 2 * 512 * 64 * 2
    assert bwd_prologue_bytes_per_item("xformers", "fwd", *args) == 0
    assert bwd_prologue_bytes_per_item("flash2", "bwd", *args) == 0
    (zero,) = bwd_side_ops("xformers", 2, 4, 1024, 64, 64, "fp16", 1024)
    assert zero.main_bytes == 2 * 4 * 16 * (64 * 64 * 4 + 16)
    assert bwd_side_ops("xformers", 4, 64, 128, 64, 64, "fp16", 128) == []
    # the prologue is paid per CTA at the SM's share of L2 (7,219 GB/s over 108 SMs): one
    # (batch, head) of 8 key-block CTAs on 8 SMs -> in parallel, each 2 x 512 x 64 x 2 B later
    shape = AttnShape(1, 1, 512, 512, 64, causal=True, dtype="fp16")
    with_prologue = attention_cost(A100, shape, "xformers", "bwd").details["pipeline_s"]
    fa2_like = _fused_gpu_without_prologue(shape)
    assert with_prologue - fa2_like == pytest.approx(2 * 512 * 64 * 2 / (7219e9 / 108))


def _fused_gpu_without_prologue(shape: AttnShape) -> float:
    from unittest import mock

    from xpusim.sim.cost import attention_bwd_grid

    with mock.patch.object(attention_bwd_grid, "bwd_prologue_bytes_per_cta", return_value=0.0):
        return attention_cost(A100, shape, "xformers", "bwd").details["pipeline_s"]
