"""One-row GEMMs of a weight-only int8 stack that stream below the memory roofline.

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

The cost model streams an int8 weight at the device's memory roofline, as it does a
16-bit one. ``WeightOnlyGemvModel`` multiplies the memory term of such a one-row GEMM
by the engine's ``weight_only_int8_gemv_factor`` (a measured quantity: its value and the
row it was fitted to are in the engine profile). GEMMs with more than one row per
matrix are cuBLAS calls, not this reduction, and are left alone.
"""

from __future__ import annotations

from dataclasses import replace

from xpusim.sim.cost.base import CostModel, OpCost
from xpusim.sim.ir import GemmShape, Op, OpKind

WEIGHT_ONLY_DTYPE = "int8"


def is_weight_only_gemv(op: Op) -> bool:
    """A GEMM with int8 weights and one output row per matrix (the decomposed GEMV)."""
    shape = op.shape
    return (
        op.kind == OpKind.GEMM
        and op.dtype == WEIGHT_ONLY_DTYPE
        and isinstance(shape, GemmShape)
        and shape.m <= 1
    )


class WeightOnlyGemvModel:
    """A cost model whose weight-only int8 GEMVs stream at 1/``factor`` of the rate the
    inner model assumes."""

    def __init__(self, inner: CostModel, factor: float) -> None:
        self.inner, self.factor = inner, factor
        self.name = inner.name

    def time(self, op: Op) -> OpCost:
        cost = self.inner.time(op)
        if not is_weight_only_gemv(op):
            return cost
        memory_s = cost.memory_s * self.factor
        bound = "compute" if cost.compute_s > memory_s else "memory"
        time_s = max(cost.compute_s, memory_s) + cost.overhead_s
        return replace(cost, time_s=time_s, memory_s=memory_s, bound=bound)


def with_weight_only_gemv(inner: CostModel, factor: float) -> CostModel:
    """``inner`` unchanged when ``factor`` is 1 (the engine has no such kernel), else
    wrapped in ``WeightOnlyGemvModel``."""
    if factor == 1.0:
        return inner
    return WeightOnlyGemvModel(inner, factor)
