"""NVFP4 training (sim/training/nvfp4.py): TransformerEngine's NVFP4BlockScaling casts, the
FP4 GEMM rate, the layers kept in bf16, bf16 parameters, SP gathers and the refusal on a
device without FP4 tensor cores. Byte counts by hand (E2M1 + one E4M3 scale per 16)."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost.roofline import RooflineModel
from xpusim.sim.ir import Role, Weight, dtype_bytes
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.backward import backward_op
from xpusim.sim.training.items import act_dtype
from xpusim.sim.training.layers import low_precision_gemms
from xpusim.sim.training.lowprec import (
    cast_recipe,
    is_forward_cast,
    param_gather_bytes,
    scale_swizzle_ops,
    sp_fp8_collectives,
)
from xpusim.sim.training.memory.rules import state_bytes
from xpusim.sim.training.nvfp4 import param_dtype, weight_bytes_per_param, weight_cast_ops

import xpusim

B = 0.5 + 1 / 16  # NVFP4 bytes per element: E2M1 + one E4M3 scale per 16 elements


def _nvfp4(raw: list, swizzle: bool = False) -> list:
    return low_precision_gemms(raw, "nvfp4", swizzle, cast_recipe("nvfp4"))


def test_casts_of_one_linear_hand_computed() -> None:
    # qkv_proj (a LayerNormLinear input: under FP8-CS the norm supplies the amax) of 4096
    # tokens, hidden 1024: X[4096, 1024] W[1024, 3072].
    out = _nvfp4([ops.gemm("qkv_proj", 4096, 3072, 1024, "bf16")])
    assert [o.name for o in out] == [
        "qkv_proj_amax_quant", "qkv_proj_quant", "qkv_proj_rht_quant", "qkv_proj"]
    amax, row, col, gemm = out
    x = 4096 * 1024
    assert amax.main_bytes == x * 2  # the RHT amax pass reads the bf16 input once
    assert row.main_bytes == col.main_bytes == x * (2 + B)  # read 2 B, write one usage
    assert sum(o.main_bytes for o in out[:3]) == x * 7.125
    assert all(is_forward_cast(o) and backward_op(o) == [] for o in out[:3])
    assert gemm.dtype == "nvfp4" and gemm.role.amax_pass and gemm.role.cast_usages == 2
    # backward: dC[4096, 3072] cast the same three ways (RHT + stochastic rounding), then
    # dgrad and wgrad in NVFP4
    bwd = backward_op(gemm)
    assert [o.name for o in bwd] == [
        "qkv_proj_dgrad_amax_quant", "qkv_proj_dgrad_quant", "qkv_proj_dgrad_rht_quant",
        "qkv_proj_dgrad", "qkv_proj_wgrad"]
    assert sum(o.main_bytes for o in bwd[:3]) == 4096 * 3072 * 7.125
    assert bwd[3].dtype == bwd[4].dtype == "nvfp4"


def test_bf16_kept_layers() -> None:
    # The output layer and the MoE router are not TransformerEngine linears: bf16, no cast.
    head = ops.gemm("lm_head", 4096, 32000, 1024, "bf16", role=Role(weight=Weight.HEAD))
    router = ops.gemm("router", 4096, 64, 1024, "bf16", role=Role(weight=Weight.ROUTER))
    assert _nvfp4([head, router]) == [head, router]
    # the activations, norms and attention stay bf16 too
    assert act_dtype(ParallelPlan(dtype="nvfp4")) == "bf16"


def test_nvfp4_gemm_priced_at_the_fp4_rate() -> None:
    dev = load_device("gb200")
    big = 16384
    g4, g8 = ops.gemm("g", big, big, big, "nvfp4"), ops.gemm("g", big, big, big, "fp8")
    assert dev.peak_for("matrix", "nvfp4") == 2 * dev.peak_for("matrix", "fp8") == 10000e12
    model = RooflineModel(dev)
    t4, t8 = model.time(g4).time_s, model.time(g8).time_s
    assert t4 >= g4.flops / (dev.peak_for("matrix", "nvfp4") * dev.efficiency.matrix_max_fp4)
    eff = dev.efficiency
    assert t8 / t4 == pytest.approx(2 * eff.matrix_max_for("nvfp4") / eff.matrix_max_for("fp8"),
                                    rel=0.02)
    # operands with their scales, output bf16
    assert g4.main_bytes == big * big * (B + B + 2)


def test_scale_swizzle_one_e4m3_byte_per_16() -> None:
    a, b = scale_swizzle_ops("fc1", 16384, 28672, 4096, 1, "nvfp4")
    assert a.main_bytes == 2 * 16384 * 4096 / 16 and b.main_bytes == 2 * 4096 * 28672 / 16
    out = _nvfp4([ops.gemm("q", 4096, 8192, 1024, "bf16")], swizzle=True)
    assert [o.name for o in out][-3:] == ["q_swizzle_a", "q_swizzle_b", "q"]


def test_weights_parameters_and_gathers() -> None:
    amax, cast = weight_cast_ops(1000, "nvfp4")  # amax, then a 2D cast into both usages
    assert amax.main_bytes == 2000 and cast.main_bytes == 1000 * (2 + 2 * B)
    assert [o.main_bytes for o in weight_cast_ops(1000, "mxfp8")] == [1000 * (2 + 1 + 1 / 32)]
    # bf16 parameters (no FP4 primary weights): 2 B gathered, bf16 stage tensors, and the
    # cached NVFP4 copies (both usages) resident with them
    assert param_gather_bytes("nvfp4") == 2.0 and param_dtype("nvfp4") == "bf16"
    assert weight_bytes_per_param("nvfp4") == 2 + 2 * B == 3.125
    assert state_bytes(ParallelPlan(dtype="nvfp4")).weights == 3.125
    assert weight_bytes_per_param("fp8") == dtype_bytes("fp8") and param_dtype("fp8") == "fp8"


def test_sequence_parallel_gathers_in_nvfp4() -> None:
    body = _nvfp4([ops.gemm("qkv_proj", 4096, 3072, 1024, "bf16"),
                   ops.gemm("o_proj", 4096, 1024, 1024, "bf16")])
    sp = sp_fp8_collectives(body, "eager", "delayed")
    # input gather one usage, gradient gather both, each after the TP amax all-reduce
    assert (sp.gather, sp.grad_gather, sp.amax) == (B, 2 * B, True)
    assert sp_fp8_collectives(body, "torchtitan-eager", "delayed").gather == 0.0


def test_train_refuses_nvfp4_without_fp4_tensor_cores(capsys) -> None:
    from xpusim.sim.cli.main import main

    rc = main(["train", "--model", "llama-3-8b", "--system", "dgx-h100", "--dtype", "nvfp4",
               "--tp", "8", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--dtype nvfp4" in err and "no nvfp4 matrix path" in err


def test_train_nvfp4_step_breakdown() -> None:
    kw = dict(model="llama-3-8b", system="dgx-b200", tp=1, pp=1, dp=8, mbs=1, gbs=8, seq=2048)
    fp4 = xpusim.train(dtype="nvfp4", **kw).simulation.compute_by_kind_s
    mx = xpusim.train(dtype="mxfp8", **kw).simulation.compute_by_kind_s
    assert fp4["fwd:gemm"] < mx["fwd:gemm"]  # the FP4 rate
    assert fp4["fwd:elementwise"] > mx["fwd:elementwise"]  # three cast passes, not one
    assert fp4["fwd:scale_swizzle"] > 0


def test_layers_kept_in_bf16() -> None:
    # Megatron-Core is_first_last_bf16_layer: layer < start or layer >= num_layers - end;
    # MTP layers (numbered from num_layers) follow the recipe.
    from xpusim.sim.training.items import gemm_dtype

    plan = ParallelPlan(dtype="nvfp4", bf16_layers_at_start=1, bf16_layers_at_end=2)
    assert [gemm_dtype(plan, i, 6) for i in range(7)] == [
        "bf16", "nvfp4", "nvfp4", "nvfp4", "bf16", "bf16", "nvfp4"]
    assert gemm_dtype(ParallelPlan(dtype="nvfp4"), 5, 6) == "nvfp4"
    # A kept layer's linears run in bf16 with no casts; its SP gathers stay bf16.
    kw = dict(model="llama-3-8b", system="dgx-b200", tp=2, pp=1, dp=4, mbs=1, gbs=4, seq=2048,
              dtype="nvfp4")
    base = xpusim.train(**kw).simulation.compute_by_kind_s
    kept = xpusim.train(bf16_layers_at_end=4, **kw).simulation.compute_by_kind_s
    # 4 of 32 layers: their GEMMs at the bf16 rate, their casts and swizzles gone
    assert kept["fwd:gemm"] > base["fwd:gemm"]
    assert kept["fwd:scale_swizzle"] == pytest.approx(base["fwd:scale_swizzle"] * 28 / 32)


def test_bf16_layers_need_a_low_precision_recipe() -> None:
    from xpusim.sim.errors import InputError

    kw = dict(model="llama-3-8b", system="dgx-b200", tp=1, pp=1, dp=8, mbs=1, gbs=8, seq=2048)
    with pytest.raises(InputError, match="low-precision recipe"):
        xpusim.train(dtype="bf16", bf16_layers_at_end=2, **kw)
    with pytest.raises(InputError, match="at most the 32 layers"):
        xpusim.train(dtype="nvfp4", bf16_layers_at_start=20, bf16_layers_at_end=13, **kw)
