"""GEMMs of a TensorRT engine built with one optimisation profile and no GEMM plugin.

TensorRT-LLM 0.5 builds a Llama engine's token dimension as one profile,
``num_tokens_range = [1, max_batch_size * max_beam_width, max(max_input_len *
max_batch_size, max_beam_width * max_batch_size)]`` ([min, opt, max];
tensorrt_llm/models/llama/model.py ``prepare_inputs`` @ 027cd518), and without
``--use_gemm_plugin`` every linear layer is a TensorRT matrix multiply whose kernel the
builder picks at the profile's opt shape: "the builder selects the kernels that result in
the lowest runtime for the optimum input tensor dimensions, and are valid for all input
tensor sizes in the valid range" (TensorRT Python API, ``IOptimizationProfile``). The
context step of a 2,048-token prompt therefore runs each GEMM with the tile timed at the
opt token count (later TensorRT-LLM added ``--multiple_profiles`` for this, "especially
when GEMM plugin is disabled").

``FixedTacticModel`` marks every generic GEMM (``GemmShape.impl == ""``) with
``tactic_m`` = the engine's ``gemm_tactic_tokens``; the roofline then prices it with the
block shape chosen at that M (sim/cost/roofline.py ``tactic_tile`` / ``fixed_tactic_cost``:
waves and the operand-feed bound of that tile at the actual M). docs/inference_notes.md,
"TensorRT-LLM 0.5: one optimisation profile".
"""

from __future__ import annotations

from dataclasses import replace

from xpusim.sim.cost.base import CostModel, OpCost
from xpusim.sim.ir import GemmShape, Op, OpKind


def with_tactic_m(op: Op, tokens: int) -> Op:
    """``op`` with ``tactic_m = tokens`` when it is a generic GEMM, else ``op`` itself."""
    shape = op.shape
    if (op.kind != OpKind.GEMM or not isinstance(shape, GemmShape) or shape.impl
            or shape.tactic_m > 0):
        return op
    return replace(op, shape=replace(shape, tactic_m=float(tokens)))


class FixedTacticModel:
    """A cost model whose generic GEMMs run the tile chosen at ``tokens`` rows."""

    def __init__(self, inner: CostModel, tokens: int) -> None:
        self.inner, self.tokens = inner, tokens
        self.name = inner.name
        # The inner model's time alone where it has it (the same float as its
        # ``time(op).time_s``: see ``WeightOnlyGemvModel``).
        self._inner_s = getattr(inner, "time_s", None) or (lambda op: inner.time(op).time_s)

    def time(self, op: Op) -> OpCost:
        return self.inner.time(with_tactic_m(op, self.tokens))

    def time_s(self, op: Op) -> float:
        """``time(op).time_s``, the same float, without the inner model's report."""
        return self._inner_s(with_tactic_m(op, self.tokens))


def with_gemm_tactic(inner: CostModel, tokens: int) -> CostModel:
    """``inner`` unchanged when ``tokens`` is 0 (tiles chosen per problem), else wrapped
    in ``FixedTacticModel``."""
    if tokens <= 0:
        return inner
    return FixedTacticModel(inner, tokens)
