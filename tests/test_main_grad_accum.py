"""Megatron-Core's gradient-accumulation fusion: the weight-gradient GEMM adds into the
main gradient (beta = 1), so its epilogue reads and writes the main gradient in its dtype
each micro-batch. Hand-computed bytes and epilogue times."""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost.roofline import RooflineModel
from xpusim.sim.ir import MAIN_MEMORY, GemmShape, Role, Weight
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.backward import backward_op
from xpusim.sim.training.units import _split_gemm, main_grad_dtype

M, N, K = 4096.0, 1024.0, 512.0  # forward: tokens x out-features, in-features 512


def _linear(weight: Weight = Weight.DENSE, dtype: str = "bf16"):
    return ops.gemm("fc", M, N, K, dtype, role=Role("mlp", weight=weight))


def test_accumulating_gemm_reads_and_writes_c_in_its_dtype():
    g = ops.gemm("w", K, N, M, "bf16", out_dtype="fp32", accumulate=True)
    a, b = K * M * 2, M * N * 2
    assert g.bytes[MAIN_MEMORY] == a + b + K * N * 8  # C read 4 B + written 4 B
    assert isinstance(g.shape, GemmShape) and g.shape.accumulate == "fp32"
    plain = ops.gemm("w", K, N, M, "bf16")
    assert plain.bytes[MAIN_MEMORY] == a + b + K * N * 2 and plain.shape.accumulate == ""


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_wgrad_accumulates_into_the_main_grad_of_a_linear_layer(dtype):
    wgrad = [o for o in backward_op(_linear(dtype=dtype), "fp32") if o.name == "fc_wgrad"][0]
    assert wgrad.shape.accumulate == "fp32"  # (K x N) weight gradient, K = in-features
    assert wgrad.shape.m == K and wgrad.shape.n == N and wgrad.shape.k == M
    dgrad = [o for o in backward_op(_linear(dtype=dtype), "fp32") if o.name == "fc_dgrad"][0]
    assert dgrad.shape.accumulate == ""  # the data gradient is a fresh tensor
    fresh = [o for o in backward_op(_linear(dtype=dtype), "") if o.name == "fc_wgrad"][0]
    assert fresh.shape.accumulate == ""


def test_router_gradient_is_not_fused():
    wgrad = [o for o in backward_op(_linear(Weight.ROUTER), "fp32") if o.name == "fc_wgrad"][0]
    assert wgrad.shape.accumulate == ""


def test_epilogue_of_an_accumulating_gemm_on_h100():
    dev = load_device("h100-sxm5-80gb")
    model = RooflineModel(dev)
    acc = ops.gemm("w", K, N, M, "bf16", out_dtype="fp32", accumulate=True)
    plain = ops.gemm("w", K, N, M, "bf16")
    bw = dev.hbm_bandwidth * dev.efficiency.memory_max
    assert model.epilogue_time(acc) == pytest.approx(K * N * 8 / bw)
    assert model.epilogue_time(plain) == pytest.approx(K * N * 2 / bw)
    assert model.time(acc).time_s > model.time(plain).time_s


def test_main_grad_dtype_follows_the_recipe():
    assert main_grad_dtype(ParallelPlan()) == "fp32"
    assert main_grad_dtype(ParallelPlan(grad_reduce_dtype="bf16")) == "bf16"
    assert main_grad_dtype(ParallelPlan(grad_accum_fusion=False)) == ""
    assert main_grad_dtype(ParallelPlan(framework="torchtitan-eager")) == ""
    assert main_grad_dtype(ParallelPlan(framework="deepspeed-0.3")) == ""


def test_tp_overlap_split_keeps_the_accumulation():
    acc = ops.gemm("w", K, N, M, "bf16", out_dtype="fp32", accumulate=True)
    piece = _split_gemm(acc, 4)
    assert piece.shape == replace(acc.shape, m=K / 4)
    assert piece.bytes[MAIN_MEMORY] == K / 4 * M * 2 + M * N * 2 + K / 4 * N * 8
