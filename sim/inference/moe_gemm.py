"""Routed-expert GEMMs run by an engine's own MoE kernels.

An engine profile's ``[kernels] moe_gemm`` names the library that runs the routed experts'
grouped GEMMs. ``"trtllm"``: TensorRT-LLM's MoE plugin (``CutlassMoeFCRunner``), whose FC1
(gate + up) and FC2 (down) GEMMs are priced by their kernels' tiles and stage counts
(sim/cost/gemm_trtllm.py). ``""`` (the default): the generic GEMM path. No shipped profile
sets it: on the TensorRT-LLM Mixtral rows the kernels' tiles and stage counts move the
errors by at most ~2 points, and the sm80 fused kernel's SwiGLU epilogue (which would move
the A100 rows back the other way) is not expressed (docs/inference_notes.md, "TensorRT-LLM
Mixtral rows").

``MoeGemmModel`` marks the routed experts' GEMMs (``experts_up`` / ``experts_down`` of
``transformer.ffn_items``; the shared experts run as dense MLPs and stay generic) with the
implementation's ``GemmShape.impl``; the roofline then prices them through
``gemm_impl.impl_work`` / ``impl_stages``.
"""

from __future__ import annotations

from dataclasses import replace

from xpusim.hwprofiles.spec import Device
from xpusim.sim.cost.base import CostModel, OpCost
from xpusim.sim.cost.gemm_trtllm import TRTLLM_FC1, TRTLLM_FC2, trtllm_moe_covers
from xpusim.sim.ir import GemmShape, Op, OpKind

MOE_GEMM_KINDS = ("trtllm",)
# The lowering's names of the routed experts' GEMMs (transformer._mlp("experts", ...)).
_TRTLLM_IMPLS = {"experts_up": TRTLLM_FC1, "experts_down": TRTLLM_FC2}


def with_moe_impl(op: Op, kind: str, device: Device) -> Op:
    """``op`` with the ``kind`` engine's implementation named when it is a routed expert's
    generic GEMM that the implementation covers on ``device``, else ``op`` itself."""
    shape = op.shape
    impl = _TRTLLM_IMPLS.get(op.name) if kind == "trtllm" else None
    if (impl is None or not trtllm_moe_covers(device, op.dtype) or op.kind != OpKind.GEMM or not isinstance(shape, GemmShape)
            or shape.impl or not op.role.expert):
        return op
    return replace(op, shape=replace(shape, impl=impl))


class MoeGemmModel:
    """A cost model whose routed-expert GEMMs run the engine's MoE kernels."""

    def __init__(self, inner: CostModel, kind: str, device: Device) -> None:
        self.inner, self.kind, self.device = inner, kind, device
        self.name = inner.name
        self._inner_s = getattr(inner, "time_s", None) or (lambda op: inner.time(op).time_s)

    def time(self, op: Op) -> OpCost:
        return self.inner.time(with_moe_impl(op, self.kind, self.device))

    def time_s(self, op: Op) -> float:
        """``time(op).time_s``, the same float, without the inner model's report."""
        return self._inner_s(with_moe_impl(op, self.kind, self.device))


def with_moe_gemm(inner: CostModel, kind: str, device: Device) -> CostModel:
    """``inner`` unchanged when ``kind`` is "" (the generic path), else wrapped in
    ``MoeGemmModel``."""
    if not kind:
        return inner
    return MoeGemmModel(inner, kind, device)
