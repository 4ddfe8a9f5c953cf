"""One-row GEMMs of a weight-only int8 or int4 stack that stream below the memory roofline.

gpt-fast's int8 mode is weight-only: ``WeightOnlyInt8Linear.forward`` is
``F.linear(input, self.weight.to(dtype=input.dtype)) * self.scales`` (quantize.py) and
the Mixtral experts do the same inside the einsums (mixtral-moe/quantize.py
``ConditionalFeedForwardBit8``: ``self.w1.to(x.dtype)[expert_indices]``). generate.py
sets Inductor's ``coordinate_descent_tuning``, under which a matmul with one output row
is decomposed into a multiply-and-sum reduction (torch/_inductor/decomposition.py,
``mm`` / ``bmm``: ``if config.coordinate_descent_tuning`` and one row), so the int8
load, the cast to bf16 and the upcast to fp32 run per weight element inside one Triton
reduction. That kernel reaches less of the bandwidth than the bf16 one: the gpt-fast
README (@ 0f925b5) measures Llama-2-7B at 1397 GB/s effective in bf16 and 1069 GB/s in
int8 on the same A100, and PyTorch's own gpt-fast micro-benchmarks
(benchmarks/gpt_fast/benchmark.py ``run_gemv``) hold the Inductor GEMV to 990 GB/s in
bf16 and 870 GB/s with int8 weights on an A100-40GB.

gpt-fast's int4 mode is weight-only and group-quantised: ``WeightOnlyInt4Linear`` calls
``torch.ops.aten._weight_int4pack_mm(x, weight_int4pack, groupsize, scales_and_zeros)``
(quantize.py ``linear_forward_int4``; the tinygemm kernel: bf16 activations, the 4-bit
weights dequantised to bf16 for the tensor cores), and every group of ``groupsize``
weights along K carries a bf16 scale and a bf16 zero (``pack_scales_and_zeros``: 4 bytes
per group). A one-row int4 GEMM therefore streams 0.5 + 4 / groupsize bytes per weight,
not 0.5: 25% more at the README's groupsize 32. The kernel itself streams below the
roofline as well (its own fitted factor).

The cost model streams a narrow weight at the device's memory roofline, as it does a
16-bit one. ``WeightOnlyGemvModel`` multiplies the memory term of such a one-row GEMM
by the group-scale bytes (int4) and the engine's measured streaming factor
(``weight_only_int8_gemv_factor`` / ``weight_only_int4_gemv_factor``: their values and
the rows they were fitted to are in the engine profile). GEMMs with more than one row
per matrix are other kernels (cuBLAS for int8; tinygemm's multi-row path for int4, not
characterised) and are left alone.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from xpusim.sim.cost.base import CostModel, OpCost
from xpusim.sim.ir import GemmShape, Op, OpKind, dtype_bytes

if TYPE_CHECKING:
    from xpusim.sim.inference.engine_profile import EngineProfile

WEIGHT_ONLY_DTYPES = ("int8", "int4")


def is_weight_only_gemv(op: Op) -> bool:
    """A GEMM with int8 or int4 weights and one output row per matrix (a GEMV)."""
    shape = op.shape
    return (
        op.kind == OpKind.GEMM
        and op.dtype in WEIGHT_ONLY_DTYPES
        and isinstance(shape, GemmShape)
        and shape.m <= 1
    )


def gemv_memory_factors(engine: EngineProfile) -> dict[str, float]:
    """Per weight dtype, the multiple of its memory-roofline time a one-row GEMM takes:
    the engine's streaming factor, times (int4) the group scales' share of the bytes."""
    int4_bytes = dtype_bytes("int4")
    group_share = 1.0 + engine.int4_group_bytes / (int4_bytes * engine.int4_group_size)
    return {
        "int8": engine.weight_only_int8_gemv_factor,
        "int4": engine.weight_only_int4_gemv_factor * group_share,
    }


class WeightOnlyGemvModel:
    """A cost model whose weight-only GEMVs stream at 1/``factors[dtype]`` of the rate the
    inner model assumes."""

    def __init__(self, inner: CostModel, factors: dict[str, float]) -> None:
        self.inner, self.factors = inner, factors
        self.name = inner.name
        # The inner model's time alone where it has it (the same float as its
        # ``time(op).time_s``: RooflineModel, KernelCostModel, EngineAttentionModel).
        self._inner_s = getattr(inner, "time_s", None) or (lambda op: inner.time(op).time_s)

    def time_s(self, op: Op) -> float:
        """``time(op).time_s``, the same float: an op this model leaves alone is the
        inner model's time alone, without its report (the serving step pricing asks
        ~1M ops for their time: ``priced_step.StepOpTimes``)."""
        if not is_weight_only_gemv(op):
            return self._inner_s(op)
        return self.time(op).time_s

    def time(self, op: Op) -> OpCost:
        cost = self.inner.time(op)
        if not is_weight_only_gemv(op):
            return cost
        memory_s = cost.memory_s * self.factors.get(op.dtype, 1.0)
        bound = "compute" if cost.compute_s > memory_s else "memory"
        time_s = max(cost.compute_s, memory_s) + cost.overhead_s
        return replace(cost, time_s=time_s, memory_s=memory_s, bound=bound)


def with_weight_only_gemv(inner: CostModel, factors: dict[str, float]) -> CostModel:
    """``inner`` unchanged when every factor is 1 (no such kernel), else wrapped in
    ``WeightOnlyGemvModel``."""
    if all(f == 1.0 for f in factors.values()):
        return inner
    return WeightOnlyGemvModel(inner, factors)
