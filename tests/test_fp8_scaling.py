"""FP8 scaling recipes as TransformerEngine runs them (sim.training.lowprec): current
scaling's separate amax pass, one FP8 copy per cast where the device's FP8 GEMMs take any
layout (sm_100: [kernels] non_tn_fp8_gemm), MXFP8 unchanged; the --fp8-scaling flag."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_device, load_system
from xpusim.sim import ops
from xpusim.sim.errors import InputError
from xpusim.sim.parallel import ParallelPlan, validate_plan
from xpusim.sim.training.layers import backward_op, low_precision_gemms
from xpusim.sim.training.lowprec import CastRecipe, cast_recipe, is_forward_cast

M, K, N = 4096, 1024, 8192  # o_proj-like GEMM: C[M, N] = A[M, K] B[K, N]

# Bytes per element of a bf16 -> FP8 cast, by hand:
#   Hopper delayed:     read 2 + write 2 x 1 (rowwise + transposed)      = 4
#   Hopper current:     amax read 2 + read 2 + write 2 x 1               = 6
#   Blackwell delayed:  read 2 + write 1 (no transposed copy)            = 3
#   Blackwell current:  amax read 2 + read 2 + write 1                   = 5
CASES = [(False, "delayed", 4.0), (False, "current", 6.0),
         (True, "delayed", 3.0), (True, "current", 5.0)]


def _cast_bytes(items: list, prefix: str) -> float:
    return sum(o.main_bytes for o in items if is_forward_cast(o) and o.name.startswith(prefix))


@pytest.mark.parametrize(("non_tn", "scaling", "per_elt"), CASES)
def test_forward_and_dgrad_cast_bytes_by_hand(non_tn: bool, scaling: str, per_elt: float) -> None:
    recipe = cast_recipe("fp8", scaling, non_tn)
    out = low_precision_gemms([ops.gemm("o_proj", M, N, K, "bf16")], "fp8", recipe=recipe)
    assert _cast_bytes(out, "o_proj") == M * K * per_elt
    gemm = out[-1]
    assert gemm.name == "o_proj" and gemm.dtype == "fp8"
    bwd = backward_op(gemm)
    # dC (M x N) is cast under the same recipe, carried on the GEMM's role.
    assert _cast_bytes(bwd, "o_proj_dgrad") == M * N * per_elt
    amax_ops = [o for o in out + bwd if o.name.endswith("_amax_quant")]
    assert len(amax_ops) == (2 if scaling == "current" else 0)
    # The amax pass is a cast for the backward rule: it has no backward op of its own.
    assert all(backward_op(o) == [] for o in amax_ops)


def test_norm_fused_linear_has_no_separate_amax() -> None:
    """TE LayerNormLinear (qkv, dense fc1): the norm computes the amax, the forward cast
    costs as under delayed scaling (4 B/elt on Hopper); its dC cast still has one (6)."""
    recipe = cast_recipe("fp8", "current", False)
    out = low_precision_gemms([ops.gemm("qkv_proj", M, N, K, "bf16")], "fp8", recipe=recipe)
    assert [o.name for o in out] == ["qkv_proj_quant", "qkv_proj"]
    assert _cast_bytes(out, "qkv_proj") == M * K * 4.0
    assert _cast_bytes(backward_op(out[-1]), "qkv_proj_dgrad") == M * N * 6.0


def test_mxfp8_unchanged_on_blackwell() -> None:
    # Block scales run along different axes for the two usages: always both copies, and
    # no per-tensor amax: 2 + 2 x (1 + 1/32) B/elt whatever the scaling or device.
    assert cast_recipe("mxfp8", "current", True) == CastRecipe(2, False)
    out = low_precision_gemms([ops.gemm("o_proj", M, N, K, "bf16")], "mxfp8",
                              recipe=cast_recipe("mxfp8", "current", True))
    assert _cast_bytes(out, "o_proj") == M * K * (2 + 2 * (1 + 1 / 32))


def test_default_recipe_is_hopper_delayed() -> None:
    out = low_precision_gemms([ops.gemm("o_proj", M, N, K, "bf16")], "fp8")
    assert _cast_bytes(out, "o_proj") == M * K * 4.0


@pytest.mark.parametrize(("device", "flag"), [("b200", True), ("gb200", True), ("b300", True),
                                              ("h100-sxm5-80gb", False), ("l40s", False)])
def test_device_flag(device: str, flag: bool) -> None:
    assert load_device(device).kernels.non_tn_fp8_gemm is flag


def test_plan_validation() -> None:
    spec_plan = ParallelPlan(dtype="bf16", fp8_scaling="current")
    from xpusim.sim.models.hf_config import load_model

    spec = load_model("llama-3-8b")
    with pytest.raises(InputError, match="applies to --dtype fp8"):
        validate_plan(spec, spec_plan, 8)
    with pytest.raises(InputError, match="fp8_scaling 'jit' unknown"):
        validate_plan(spec, ParallelPlan(dtype="fp8", fp8_scaling="jit"), 8)
    with pytest.raises(InputError, match="applies to --dtype fp8"):
        validate_plan(spec, ParallelPlan(dtype="mxfp8", fp8_scaling="current"), 8)
    assert validate_plan(spec, ParallelPlan(dtype="fp8", fp8_scaling="current"), 8)


def _step(system: str, scaling: str) -> float:
    from xpusim.sim.api.train import train

    r = train(model="llama-3-8b", system=system, tp=1, dp=8, mbs=1, gbs=16, seq=4096,
              dtype="fp8", fp8_scaling=scaling, recompute="none")
    assert r.plan.fp8_scaling == scaling
    return r.step_time_s


def test_train_prices_current_scaling_and_single_copy() -> None:
    h_delayed, h_current = _step("dgx-h100", "delayed"), _step("dgx-h100", "current")
    b_delayed, b_current = _step("dgx-b200", "delayed"), _step("dgx-b200", "current")
    assert h_current > h_delayed and b_current > b_delayed
    assert load_system("dgx-b200").device.kernels.non_tn_fp8_gemm


def test_cli_flag_and_error(capsys) -> None:
    from xpusim.sim.cli.main import main

    base = ["train", "--model", "llama-3-8b", "--system", "dgx-h100", "--tp", "1",
            "--mbs", "1", "--gbs", "16", "--seq", "4096", "--quiet"]
    assert main([*base, "--dtype", "bf16", "--fp8-scaling", "current"]) == 2
    err = capsys.readouterr().err
    assert "--fp8-scaling current applies to --dtype fp8" in err and "--dtype bf16" in err
    assert main([*base, "--dtype", "fp8", "--fp8-scaling", "current", "--explain"]) == 0
    assert "dtype fp8 (current scaling)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*base, "--dtype", "fp8", "--fp8-scaling", "jit"])


def test_expert_amax_op_takes_one_of_the_per_expert_launches() -> None:
    """TE MoE host: FP8-CS quantises each of 16 local experts with amax + scale + cast
    (3 launches of 10 us). With the amax as its own op the pair still costs 16 x 3 x 10 us
    in all: amax op 10 (its op) + 150 extra, cast 10 + 310 extra."""
    from xpusim.sim.ir import GemmShape, Role
    from xpusim.sim.training.lowprec import cast_ops
    from xpusim.sim.training.te_moe_host import op_extra_host_s

    us, host = 1e-6, 10e-6
    expert = Role(expert=True)
    amax, cast = cast_ops("experts_up", 4096 * 2048, "fp8", cast_recipe("fp8", "current"),
                          expert)
    gemm = ops.gemm("experts_up", 256, 2048, 2048, "fp8", batch=16, role=expert)
    assert isinstance(gemm.shape, GemmShape) and gemm.shape.batch == 16
    gemms = {"experts_up": (16.0, "fp8")}
    amaxed = frozenset({"experts_up"})
    assert op_extra_host_s(amax, "fwd", host, gemms, amaxed) == pytest.approx(150 * us)
    assert op_extra_host_s(cast, "fwd", host, gemms, amaxed) == pytest.approx(310 * us)
    # Without its own amax op (delayed scaling's casts) the cast keeps all three.
    assert op_extra_host_s(cast, "fwd", host, gemms) == pytest.approx(470 * us)
