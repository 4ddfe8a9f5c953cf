"""gpt-fast's engine terms: the int8 and int4 weight-only GEMV factors, the int4 group
scales, and the whole (not vocab-parallel) embedding and LM head of its tp.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim import ops
from xpusim.sim.cost.attention_impl import KernelCostModel
from xpusim.sim.cost.base import OpCost
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import NO_ENGINE, load_engine
from xpusim.sim.inference.lowering import StepBatch, StepSimulator, flatten, step_blocks
from xpusim.sim.inference.weight_only import (
    WeightOnlyGemvModel,
    gemv_memory_factors,
    is_weight_only_gemv,
    with_weight_only_gemv,
)
from xpusim.sim.ir import CollectiveKind, GemmShape, Op, OpKind
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.workloads.transformer import CommNeed


class _Fixed:
    """A cost model that prices every op at compute 1 s, memory 2 s, overhead 0.5 s."""

    name = "fixed"

    def time(self, op: Op) -> OpCost:
        return OpCost(2.5, 1.0, 2.0, 0.5, "memory")


def test_only_one_row_int8_gemms_are_weight_only_gemvs():
    assert is_weight_only_gemv(ops.gemm("g", 1, 4096, 4096, "int8"))
    assert is_weight_only_gemv(ops.gemm("g", 1, 4096, 4096, "int4"))
    assert is_weight_only_gemv(ops.gemm("experts", 1, 28672, 4096, "int8", batch=2))
    assert not is_weight_only_gemv(ops.gemm("g", 8, 4096, 4096, "int8"))  # cuBLAS, not a GEMV
    assert not is_weight_only_gemv(ops.gemm("g", 1, 4096, 4096, "bf16"))
    assert not is_weight_only_gemv(ops.elementwise("add", 4096, "int8"))


def test_factor_scales_the_memory_term_only():
    model = WeightOnlyGemvModel(_Fixed(), {"int8": 1.5, "int4": 2.0})
    cost = model.time(ops.gemm("g", 1, 4096, 4096, "int8"))
    # memory 2 s x 1.5 = 3 s > compute 1 s; plus the 0.5 s overhead.
    assert cost.memory_s == pytest.approx(3.0)
    assert cost.time_s == pytest.approx(3.5)
    assert cost.compute_s == 1.0 and cost.bound == "memory"
    assert model.time(ops.gemm("g", 1, 4096, 4096, "bf16")).time_s == 2.5
    assert model.time(ops.gemm("g", 1, 4096, 4096, "int4")).time_s == pytest.approx(4.5)
    inner = _Fixed()
    assert with_weight_only_gemv(inner, {"int8": 1.0, "int4": 1.0}) is inner


def test_int4_factor_carries_the_group_scales():
    # gpt-fast: a bf16 scale and a bf16 zero (4 B) per 32 int4 weights (16 B): 1.25x the
    # bytes, times the fitted stream factor.
    engine = load_engine("gpt-fast")
    assert (engine.int4_group_size, engine.int4_group_bytes) == (32, 4.0)
    factors = gemv_memory_factors(engine)
    assert factors["int4"] == pytest.approx(engine.weight_only_int4_gemv_factor * 1.25)
    assert factors["int8"] == engine.weight_only_int8_gemv_factor
    # No engine: the default layout (group 128) adds 4 / 64 of the weight bytes.
    assert gemv_memory_factors(NO_ENGINE)["int4"] == pytest.approx(1.0625)


def test_int4_gemms_run_at_the_16_bit_tensor_rate():
    # Weight-only W4A16: no INT4 tensor rate is published; int4 must not fall to the
    # unit's slowest (FP64) rate.
    a100 = load_system("dgx-a100").device
    assert a100.peak_for("matrix", "int4") == a100.peak_for("matrix", "bf16")


def test_gpt_fast_profile_terms():
    engine = load_engine("gpt-fast")
    assert engine.weight_only_int8_gemv_factor == pytest.approx(1.43)
    assert engine.vocab_parallel is False
    assert NO_ENGINE.weight_only_int8_gemv_factor == 1.0 and NO_ENGINE.vocab_parallel


def test_profile_rejects_a_non_positive_factor(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text('kind = "engine"\nname = "e"\n[kernels]\nweight_only_int8_gemv_factor = 0\n')
    with pytest.raises(InputError, match="weight_only_int8_gemv_factor"):
        load_engine(str(path))


def _head_and_embedding(items: list) -> tuple[GemmShape, list[CommNeed]]:
    head = next(x for x in items if isinstance(x, Op) and x.name == "lm_head")
    reduces = [x for x in items if isinstance(x, CommNeed) and x.name == "embedding_reduce"]
    return head.shape, reduces


def test_whole_vocab_layers_on_every_tp_rank():
    spec = load_model("mixtral-8x7b")
    batch = StepBatch.for_phase("decode", 1, 105)
    plan = ParallelPlan(tp=2)
    split, split_reduces = _head_and_embedding(flatten(step_blocks(spec, batch, plan)))
    whole, whole_reduces = _head_and_embedding(flatten(step_blocks(spec, batch, plan,
                                                          vocab_parallel=False)))
    assert split.n == spec.vocab / 2 and whole.n == spec.vocab
    assert [r.kind for r in split_reduces] == [CollectiveKind.ALL_REDUCE]
    assert whole_reduces == []


@pytest.mark.parametrize("dtype, unit_fields", [
    ("int8", {"weight_only_int8_gemv_factor": 1.0}),
    ("int4", {"weight_only_int4_gemv_factor": 1.0, "int4_group_bytes": 0.0}),
])
def test_weight_only_decode_gemms_cost_the_factor_times_their_stream(dtype, unit_fields):
    spec, system = load_model("llama-2-7b"), load_system("dgx-a100")
    engine = load_engine("gpt-fast")
    unit = replace(engine, **unit_fields)
    plan = ParallelPlan(tp=1)
    decode = StepBatch.for_phase("decode", 1, 105)
    plain = StepSimulator(spec, system, plan, unit, dtype).run(decode, host=False)
    slow = StepSimulator(spec, system, plan, engine, dtype).run(decode, host=False)
    # Every GEMM of a batch-1 decode step is a memory-bound one-row weight-only GEMM, so
    # the step grows by (factor - 1) x the GEMMs' memory terms (int4: x its group scales).
    items = flatten(step_blocks(spec, decode, plan, dtype, vocab_parallel=False))
    base = KernelCostModel(system.device)
    gemm_memory_s = sum(base.time(x).memory_s for x in items
                        if isinstance(x, Op) and x.kind == OpKind.GEMM)
    extra = gemv_memory_factors(engine)[dtype] - 1.0
    assert slow.time_s - plain.time_s == pytest.approx(extra * gemm_memory_s)
    # A prefill's GEMMs have many rows (cuBLAS / tinygemm's multi-row path): untouched.
    prefill = StepBatch.for_phase("prefill", 1, 128)
    assert StepSimulator(spec, system, plan, engine, dtype).run(prefill).time_s == (
        StepSimulator(spec, system, plan, unit, dtype).run(prefill).time_s)
