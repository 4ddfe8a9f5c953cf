"""TensorRT-LLM's MoE plugin GEMMs (sim/cost/gemm_trtllm.py, sim/inference/moe_gemm.py):
candidate tiles, stage counts and the chosen tactic against hand-computed values from the
sources the module cites (cutlass_heuristic.cpp, fused_moe_kernel_traits.cuh,
moe_gemm_launcher_sm90.inl)."""

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel
from xpusim.sim.cost.gemm_impl import GEMM_IMPLS, impl_stages
from xpusim.sim.cost.gemm_trtllm import (
    TRTLLM_FC1,
    TRTLLM_FC2,
    MoeTactic,
    fused_gated_smem,
    grouped_sm80_smem,
    sm80_candidates,
    sm90_candidates,
    smem_limit,
    tactic_work,
    trtllm_tactic,
)
from xpusim.sim.cost.operand_feed import feed_flops_per_element
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.moe_gemm import MoeGemmModel, with_moe_gemm, with_moe_impl
from xpusim.sim.ir import GemmShape, Role
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.workloads.transformer import Sharding, StepShape, ffn_items

A100_SMEM = 164 * 1024  # a100-sxm4-80gb [levels] smem capacity_kib = 164
A100_LIMIT = A100_SMEM - 1024  # 163 KB per block (cudaDevAttrMaxSharedMemoryPerBlockOptin)
H100_SMEM = 228 * 1024


def test_fused_gated_shared_memory_hand_computed():
    """SharedStorageGate, 16-bit, TileK 64: A 128x64 + gate and up B 128x64 each per stage
    (48 KiB), plus the 128x128 output tile (32 KiB): 2 stages 128 KiB fit A100's 163 KiB per
    block, 3 stages (176 KiB) do not; TileM 64: 40 KiB a stage + 16 KiB, 3 stages
    (136 KiB) fit, 4 (176 KiB) not; TileM 32: 36 KiB + 8 KiB, 4 stages (152 KiB) fit."""
    assert fused_gated_smem(128, 128, 2) == 131072
    assert fused_gated_smem(128, 128, 3) == 180224 > A100_LIMIT
    assert fused_gated_smem(64, 128, 3) == 139264 < A100_LIMIT < fused_gated_smem(64, 128, 4)
    assert fused_gated_smem(32, 128, 4) == 155648 < A100_LIMIT
    assert smem_limit(A100_SMEM) == A100_LIMIT


def test_sm80_candidates_and_stages():
    """FC1 (gated, K and half N multiples of 64): the fused kernel, its tile counted over
    gate + up (2 x TileN = 256 columns), the deepest fitting stage count of 2..4; FC2: the
    CUTLASS 2.x grouped GEMM, 4 stages at every tile (128x128: 4 x 32 KiB = 128 KiB)."""
    fc1 = GemmShape(150, 14336, 4096, batch=8, impl=TRTLLM_FC1)
    assert [(t.kernel, t.tile_m, t.tile_n, t.stages) for t in
            sm80_candidates(fc1, "fp16", A100_LIMIT)] == [
        ("sm80-fused-gated", 32, 256, 4), ("sm80-fused-gated", 64, 256, 3),
        ("sm80-fused-gated", 128, 256, 2)]
    fc2 = GemmShape(150, 4096, 7168, batch=8, impl=TRTLLM_FC2)
    assert grouped_sm80_smem(128, 128, 4) == 131072
    assert [(t.kernel, t.tile_m, t.tile_n, t.stages) for t in
            sm80_candidates(fc2, "fp16", A100_LIMIT)] == [
        ("sm80-grouped", 32, 128, 4), ("sm80-grouped", 64, 128, 4),
        ("sm80-grouped", 128, 128, 4)]
    # Half of N (7,200 / 2 = 3,600) not a multiple of 64: no fused kernel.
    odd = replace(fc1, n=7200)
    assert {t.kernel for t in sm80_candidates(odd, "fp16", A100_LIMIT)} == {"sm80-grouped"}


def test_sm90_candidates_swap_tokens_onto_the_n_tile():
    """Kernel tiles 128x16 ... 256x128 (features x tokens) become tokens x features; stages
    as many (rows + columns) x 128-byte slices as 228 KiB hold: 128x16 -> 12, 128x128 -> 7,
    128x256 and 256x128 -> 4; 1x2 / 2x2 clusters only for kernel N >= 128."""
    cands = sm90_candidates("fp8", H100_SMEM)
    by_tile = {(t.tile_m, t.tile_n): t.stages for t in cands}
    assert by_tile == {(16, 128): 12, (32, 128): 11, (64, 128): 9, (128, 128): 7,
                       (256, 128): 4, (128, 256): 4}
    clusters = {(t.tile_m, t.tile_n): set() for t in cands}
    for t in cands:
        clusters[(t.tile_m, t.tile_n)].add((t.cluster_m, t.cluster_n))
    assert clusters[(16, 128)] == {(1, 1), (1, 2)}
    assert clusters[(128, 128)] == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert {t.tile_k for t in cands} == {128}
    assert {t.tile_k for t in sm90_candidates("fp16", H100_SMEM)} == {64}


def test_a100_fc1_tactic_hand_computed():
    """Mixtral 8x7B TP2 FC1 (N 14,336 = gate + up, K 4,096), 150 rows to each of 8 experts,
    A100 FP16 (108 SMs; 312 TFLOP/s x matrix_max_fp16 0.8307 over 7,219 GB/s of L2, 2-byte
    operands: 71.80 FLOP per operand element), per k: 32x256: 40 x 56 = 2,240 tiles, 21
    rounds of max(16,384, 71.80 x 288 = 20,680); 64x256: 1,344 tiles, 13 rounds of
    max(32,768, 22,977); 128x256: 896 tiles, 9 rounds of 65,536. 13 x 32,768 is the least:
    TileM 64, 3 stages."""
    dev = load_device("a100-sxm4-80gb")
    fpe = feed_flops_per_element(dev, "fp16")
    assert fpe == pytest.approx(
        312e12 * dev.efficiency.matrix_max_for("fp16") / 7219e9 * 2)
    assert fpe == pytest.approx(71.80, abs=0.01)
    shape = GemmShape(150, 14336, 4096, batch=8, impl=TRTLLM_FC1)
    tactic = trtllm_tactic(shape, dev, "fp16")
    assert (tactic.kernel, tactic.tile_m, tactic.tile_n, tactic.stages) == (
        "sm80-fused-gated", 64, 256, 3)
    cost, executed = tactic_work(shape, tactic, 108, fpe)
    assert executed == pytest.approx(13 * 108 * 64 * 2 * 64 * 256 * 64)
    assert cost == executed  # MMA-bound at TileM 64
    small = MoeTactic("sm80-fused-gated", 32, 256, 64, 4)
    assert tactic_work(shape, small, 108, fpe)[0] == pytest.approx(
        21 * 108 * 64 * fpe * (32 + 256) * 64)
    assert impl_stages(shape, dev, "fp16", A100_SMEM) == 3


def test_roofline_prices_the_named_kernel():
    """The roofline reads the plugin's tile (executed FLOPs) and depth (pipeline_stages)."""
    dev = load_device("a100-sxm4-80gb")
    op = ops.gemm("experts_up", 150, 14336, 4096, "fp16", batch=8)
    named = replace(op, shape=replace(op.shape, impl=TRTLLM_FC1))
    cost = RooflineModel(dev).time(named)
    assert cost.details["executed_flops"] == pytest.approx(13 * 108 * 64 * 2 * 64 * 256 * 64)
    assert TRTLLM_FC1 not in GEMM_IMPLS  # not offered by op gemm --impl


def _expert_ops(dtype: str) -> list:
    spec = load_model("mixtral-8x7b")
    items = ffn_items(spec, 0, StepShape(64, 1, 512), Sharding(tp=2), dtype)
    return [i for i in items if hasattr(i, "shape")]


def test_lowering_names_the_routed_expert_gemms_only():
    """trtllm engines: experts_up -> FC1, experts_down -> FC2 on A100 FP16 and H100 FP8;
    the router and the activation stay as they are; L40S (sm89) keeps the generic path."""
    a100, h100, l40s = (load_device(d) for d in ("a100-sxm4-80gb", "h100-sxm5-80gb", "l40s"))
    named = {o.name: with_moe_impl(o, "trtllm", a100) for o in _expert_ops("fp16")}
    assert named["experts_up"].shape.impl == TRTLLM_FC1
    assert named["experts_down"].shape.impl == TRTLLM_FC2
    assert named["router"].shape.impl == ""
    for o in _expert_ops("fp8"):
        assert with_moe_impl(o, "trtllm", l40s) is o
        if o.name == "experts_up":
            assert with_moe_impl(o, "trtllm", h100).shape.impl == TRTLLM_FC1
    # A GEMM named like an expert's but not a routed expert's (role.expert False) stays.
    up = next(o for o in _expert_ops("fp16") if o.name == "experts_up")
    assert with_moe_impl(replace(up, role=Role("mlp")), "trtllm", a100).shape.impl == ""


def test_engine_profiles_and_wrapper(tmp_path):
    """No shipped profile sets moe_gemm (docs/inference_notes.md, "TensorRT-LLM Mixtral rows": the
    kernels' structure moves the rows by <= 2 points and the sm80 fusion is not expressed);
    a profile that does gets the plugin kernels."""
    assert load_engine("trtllm-0.17").moe_gemm == ""
    path = tmp_path / "e.toml"
    path.write_text('kind = "engine"\nname = "e"\n[kernels]\nmoe_gemm = "trtllm"\n')
    assert load_engine(str(path)).moe_gemm == "trtllm"
    dev = load_device("a100-sxm4-80gb")
    inner = RooflineModel(dev)
    assert with_moe_gemm(inner, "", dev) is inner
    wrapped = with_moe_gemm(inner, "trtllm", dev)
    assert isinstance(wrapped, MoeGemmModel)
    up = next(o for o in _expert_ops("fp16") if o.name == "experts_up")
    assert wrapped.time_s(up) == inner.time(with_moe_impl(up, "trtllm", dev)).time_s


def test_engine_profile_rejects_unknown_moe_gemm(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text('kind = "engine"\nname = "e"\n[kernels]\nmoe_gemm = "cutlass"\n')
    with pytest.raises(InputError, match="kernels.moe_gemm"):
        load_engine(str(path))
