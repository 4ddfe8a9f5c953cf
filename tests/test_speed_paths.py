"""The time-only and memoised pricing paths give the floats of the reference paths
(docs/performance.md, 2026-12-06 "speedval"): ``RooflineModel.time_s`` and the models
around it against ``time(op).time_s``, the attention blocks kept per device against
``block_terms``, and parsed TOML kept by text against a fresh parse."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import pytest
from xpusim.hwprofiles.loader import load_device
from xpusim.sim import inputs, ops
from xpusim.sim.cost.attention_impl import (
    AttnShape,
    KernelCostModel,
    _block_pair,
    _fused_gpu,
    attention_cost,
    block_terms,
    shape_of,
)
from xpusim.sim.cost.roofline import RooflineModel
from xpusim.sim.inference.decode_attention import EngineAttentionModel, GenerationAttention
from xpusim.sim.inference.gemm_tactic import FixedTacticModel
from xpusim.sim.inference.priced_step import StepOpTimes
from xpusim.sim.inference.weight_only import WeightOnlyGemvModel
from xpusim.sim.ir import MAIN_MEMORY, AttentionShape, GemmShape, Op, OpKind, Unit

DEVICES = ("h100-sxm5-80gb", "a100-sxm4-80gb", "ascend-910b2", "l40s")


def _ops() -> list[Op]:
    out = [
        ops.gemm("dense", 7, 8192, 8192, "fp8"),
        ops.gemm("fp16", 4096, 1024, 8192, "fp16", batch=3),
        ops.gemm("acc", 512, 512, 512, "bf16", accumulate=True),
        ops.gemm("tiny", 1, 128, 64, "bf16"),
        ops.gemm("int8", 1, 4096, 4096, "int8"),
        ops.elementwise("act", 3 * 28672, "fp16", 4.0, inputs=2),
        ops.norm("norm", 9, 8192, "fp16"),
        ops.softmax("softmax", 9, 32000, "fp32"),
        ops.memcpy("copy", 1e6),
        ops.fused_attention("attention", 33, 8, 1, 2049, 128, "fp8", True, 1, 128),
        ops.fused_attention("prefill", 1, 32, 512, 512, 128, "bf16", True, 8, 128),
    ]
    # Backward and context-parallel attention (the latter priced through ``time``).
    prefill = out[-1]
    assert isinstance(prefill.shape, AttentionShape)
    out.append(replace(prefill, name="bwd", shape=replace(prefill.shape, backward=True)))
    half = ops.fused_attention("cp", 1, 32, 256, 512, 128, "bf16", True, 8, 128)
    assert isinstance(half.shape, AttentionShape)
    out.append(replace(half, shape=replace(half.shape, cp=2)))
    out.append(ops.fused_attention("window", 4, 16, 1, 9000, 64, "bf16", True, 4, 64,
                                   window=4096))
    # A GEMM on the on-chip level too (levels without a bandwidth are skipped).
    out.append(Op("levels", OpKind.GEMM, 2e9, {MAIN_MEMORY: 3e6, "l2": 5e6}, "bf16",
                  Unit.MATRIX, GemmShape(1000, 1000, 1000)))
    return out


@pytest.mark.parametrize("name", DEVICES)
def test_roofline_time_s_is_time(name):
    device = load_device(name)
    calibrated = replace(device, efficiency=replace(
        device.efficiency, overlap=0.7, kind_speed={"gemm": 1.3}, kind_overhead_s={"norm": 2e-6},
        cache_bytes=4e6, cache_speedup=2.5))
    for dev in (device, calibrated):
        roofline = RooflineModel(dev)
        for op in _ops():
            if op.kind == OpKind.ATTENTION:
                continue
            assert roofline.time_s(op) == roofline.time(op).time_s, (name, op.name)


@pytest.mark.parametrize("name", DEVICES[:2])
def test_kernel_and_engine_models_time_s_is_time(name):
    device = load_device(name)
    kernel = KernelCostModel(device)
    engine = EngineAttentionModel(kernel, device, GenerationAttention("masked-mha"))
    for op in _ops():
        assert kernel.time_s(op) == kernel.time(op).time_s, op.name
        if op.kind == OpKind.ATTENTION and op.shape.cp == 1:
            assert kernel.time_s(op) == attention_cost(
                device, shape_of(op), None, "bwd" if op.shape.backward else "fwd").time_s
        assert engine.time_s(op) == engine.time(op).time_s, op.name
        # StepOpTimes takes the time-only path where the model has one.
        assert StepOpTimes(engine)(op) == engine.time(op).time_s
    # TRT-LLM's XQA rule: generation attention through masked MHA or, where a cubin
    # exists and enough CTAs fill the device, the fused kernel (the inner model's
    # time-only path); both branches equal ``time``.
    xqa = EngineAttentionModel(kernel, device, GenerationAttention(
        "xqa-or-masked-mha", xqa_group_sizes=(4, 8), xqa_head_dims=(64, 128)))
    gen = [op for op in _ops() if EngineAttentionModel._is_generation(op)]
    gen.append(ops.fused_attention("xqa", 512, 8, 1, 4096, 128, "bf16", True, 1, 128))
    assert {xqa.rule.picks_masked_mha(shape_of(op), device.matrix_cores)
            for op in gen} == {True, False}
    for op in gen:
        assert xqa.time_s(op) == xqa.time(op).time_s, op.name



@pytest.mark.parametrize("name", DEVICES[:2])
def test_weight_only_and_fixed_tactic_models_time_s_is_time(name):
    """The TensorRT-LLM wrappers' time-only paths (``WeightOnlyGemvModel``,
    ``FixedTacticModel``) equal their ``time``, around the engine-attention model and
    around one without ``time_s`` (the inner ``time`` then)."""
    device = load_device(name)
    kernel = KernelCostModel(device)
    engine = EngineAttentionModel(kernel, device, GenerationAttention("masked-mha"))

    class TimeOnly:  # an inner model without ``time_s``
        name = "time-only"

        def time(self, op):
            return kernel.time(op)

    gemv = ops.gemm("int4", 1, 4096, 4096, "int4")
    for inner in (engine, TimeOnly()):
        weight_only = WeightOnlyGemvModel(inner, {"int8": 1.7, "int4": 2.3})
        for model in (weight_only, FixedTacticModel(inner, 2048),
                      FixedTacticModel(weight_only, 512)):
            for op in [*_ops(), gemv]:
                assert model.time_s(op) == model.time(op).time_s, op.name
                assert StepOpTimes(model)(op) == model.time(op).time_s

def test_block_pair_is_block_terms_and_ignores_batch():
    """The kept (full, diagonal) blocks equal ``block_terms`` of the shape asked, for
    any batch, heads and queries (block_terms reads none of them: if it did, the
    shapes below would give different blocks and this test would fail)."""
    h100 = load_device("h100-sxm5-80gb")
    for impl, pass_ in (("flash2", "fwd"), ("flash3", "fwd"), ("flash1", "bwd"),
                        ("xformers", "fwd"), ("triton2", "bwd")):
        base = AttnShape(1, 8, 1, 2049, 128, kv_heads=1, causal=True, dtype="bf16")
        first = _block_pair(h100, impl, base, pass_, 64, 128)
        for batch, heads, q_len in ((1, 8, 1), (777, 64, 1), (3, 8, 2049)):
            shape = replace(base, batch=batch, heads=heads, q_len=q_len)
            pair = _block_pair(h100, impl, shape, pass_, 64, 128)
            assert pair == (block_terms(h100, impl, shape, pass_, 64, 128),
                            block_terms(h100, impl, shape, pass_, 64, 128, diagonal=True))
            assert pair == first
        # Another key length is another block (FA1's O round trip, xFormers' smem terms).
        other = _block_pair(h100, impl, replace(base, kv_len=300), pass_, 64, 128)
        assert other == (block_terms(h100, impl, replace(base, kv_len=300), pass_, 64, 128),
                         block_terms(h100, impl, replace(base, kv_len=300), pass_, 64, 128,
                                     diagonal=True))


def test_fused_attention_cost_unchanged_by_kept_blocks():
    """A decode attention priced twice (the second from the kept blocks) is the same
    cost; a hand-computed anchor: 4 KV heads x 2 batch x ceil(2049 / 128) = 17 blocks
    per group; pipeline = total / SMs + one block + the item's I/O."""
    h100 = load_device("h100-sxm5-80gb")
    shape = AttnShape(2, 32, 1, 2049, 128, kv_heads=4, causal=True, dtype="bf16")
    a = _fused_gpu(h100, shape, "flash2", "fwd")
    b = _fused_gpu(h100, shape, "flash2", "fwd")
    assert a == b
    full = block_terms(h100, "flash2", replace(shape, batch=1), "fwd", 16, 64)
    assert a.details["block_s"] == full.block_s
    groups, kv_blocks = 2 * 4, 33  # ceil(2049 / 64) with Bc = 64 at head size 128
    assert a.details["blocks"] == kv_blocks / (2 * 32) * groups * (2 * 32)


def test_toml_kept_by_text(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('a = 1\n[t]\nb = [1, 2, {c = "d"}]\n')
    first = inputs.read_toml(path, "test file")
    assert first == tomllib.loads(path.read_text())
    first["t"]["b"][2]["c"] = "changed"  # a caller's change is its own
    first["a"] = 5
    second = inputs.read_toml(path, "test file")
    assert second == {"a": 1, "t": {"b": [1, 2, {"c": "d"}]}}
    assert second["t"] is not first["t"]
    path.write_text('a = 2\n')  # an edited file is parsed afresh
    assert inputs.read_toml(path, "test file") == {"a": 2}
    path.write_text('a = [\n')  # and a broken one still refused
    with pytest.raises(inputs.InputError, match="not valid TOML"):
        inputs.read_toml(path, "test file")
