"""Megatron-LM's unfused attention with its fused scale-mask-softmax (``fused_softmax``).

Megatron-LM's ``ParallelAttention`` (megatron/model/transformer.py, 2020-2023; Megatron-Core
``DotProductAttention`` keeps it) computes, per tensor-parallel rank,

    scores = torch.baddbmm(empty, q, k^T, beta=0.0, alpha=1/norm_factor)   # one batched GEMM
    probs  = FusedScaleMaskSoftmax(scores, mask)                            # one kernel
    probs  = attention_dropout(probs)                       # sim.training.layers.attention_dropout
    ctx    = torch.bmm(probs, v)

``FusedScaleMaskSoftmax`` (megatron/model/fused_softmax.py; megatron/core/fusions/
fused_softmax.py) runs its custom kernel when the input is 16-bit, ``16 < sk <= 2048``
(the 2021 kernel: ``TORCH_INTERNAL_ASSERT(softmax_elements <= 2048)``; later releases
raised it to 16384, ``MAX_FUSED_KEYS``), ``sq % 4 == 0`` and ``attn_batches % 4 == 0``
(b x heads per rank: the dispatcher's 4 rows per 128-thread block must tile the batch,
``TORCH_INTERNAL_ASSERT(attn_batches % batches_per_block == 0)``). For causal
self-attention it calls ``scaled_upper_triang_masked_softmax``
(megatron/fused_kernels/scaled_upper_triang_masked_softmax.h): row i loads only its first
i + 1 scores (the mask is implicit: no mask tensor is read), and writes the whole row,
zeros above the diagonal; its backward loads the output gradient and the softmax output
over the same triangle and writes the whole row of input gradients. A padding mask takes
``scaled_masked_softmax`` (the row and its byte mask, one per batch, in; the row out).

Otherwise the module falls back to PyTorch ops, with the softmax in fp32
(``attention_softmax_in_fp32``, which query-key layer scaling forces on. Megatron-LM of
2021-22 scaled by default: ``--no-query-key-layer-scaling`` is ``store_false`` into
``apply_query_key_layer_scaling``, and ``--attention-softmax-in-fp32`` "is ignored unless
--no-query-key-layer-scaling is specified" (megatron/arguments.py of that era, beside
``--accumulate-allreduce-grads-in-fp32``); later releases made it opt-in,
``--apply-query-key-layer-scaling``, "Useful for fp16 training", which Megatron-LM's own
fp16 test scripts pass, e.g. tests/functional_tests ``pretrain_gpt3_distributed_test.sh``):
``input.float()``, ``* scale``, ``masked_fill_`` with the byte mask, ``torch.nn.Softmax``,
``.half()``; autograd runs each one's backward (the fp32 softmax backward as eager PyTorch's
two kernels, as in ``sim.cost.attention_eager``).

The GEMMs are eager attention's (``attention_eager.score_gemm_ops``: the same baddbmm/bmm
and their backward, with baddbmm's alpha applied after each backward bmm). Attention dropout is not in this op:
training adds it after the attention (``attention_dropout``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from xpusim.hwprofiles.spec import Device
from xpusim.sim import ops
from xpusim.sim.cost.attention_blocks import roofline_sum, with_bytes
from xpusim.sim.cost.attention_eager import score_gemm_ops
from xpusim.sim.cost.base import OpCost
from xpusim.sim.ir import Op, OpKind, dtype_bytes

if TYPE_CHECKING:
    from xpusim.sim.cost.attention_impl import AttnShape

MAX_FUSED_KEYS = 16384  # Megatron-Core's kernel limit (2048 in the 2021 kernel)
MIN_FUSED_KEYS = 16  # ``16 < sk``
THREADS_PER_BLOCK = 128  # the dispatcher's block ("use 128 threads per block")
MASK_BYTES = 1.0  # torch.bool mask, a byte per (query, key)


def rows_per_block(kv_len: float) -> int:
    """Softmax rows one 128-thread block of the kernel handles, as its dispatcher computes
    them: a warp of min(next power of two of s_k, 32) threads takes 2 rows when that power
    is at most 128, else 1 (``dispatch_scaled_upper_triang_masked_softmax_forward``)."""
    power = 1 << max(0, math.ceil(math.log2(kv_len)))
    warp = min(power, 32)
    return (THREADS_PER_BLOCK // warp) * (2 if power <= 128 else 1)


def fused_kernel_runs(shape: AttnShape) -> bool:
    """Whether ``FusedScaleMaskSoftmax`` takes its custom kernel for ``shape`` (module doc):
    16-bit input, 16 < s_k <= ``MAX_FUSED_KEYS``, s_q % 4 = 0 and b x heads a multiple of
    the kernel's rows per block."""
    if dtype_bytes(shape.dtype) != 2 or not MIN_FUSED_KEYS < shape.kv_len <= MAX_FUSED_KEYS:
        return False
    return shape.q_len % 4 == 0 and (shape.batch * shape.heads) % rows_per_block(shape.kv_len) == 0


def fused_softmax_cost(device: Device, shape: AttnShape, pass_: str) -> OpCost:
    """The kernels of ``fused_softmax_ops`` priced one after another by the roofline."""
    cost = roofline_sum(device, fused_softmax_ops(shape, pass_))
    scores = shape.batch * shape.heads * shape.q_len * shape.kv_len
    details = {**cost.details, "fused_kernel": float(fused_kernel_runs(shape)),
               "score_bytes": scores * dtype_bytes(shape.dtype)}
    return OpCost(cost.time_s, cost.compute_s, cost.memory_s, cost.overhead_s, cost.bound, details)


def fused_softmax_ops(shape: AttnShape, pass_: str = "fwd") -> list[Op]:
    """The kernels of Megatron-LM's unfused attention for ``shape``, in order (module doc):
    the eager GEMMs (``score_gemm_ops``) around the fused kernel or the fp32 fallback."""
    fwd, bwd = _fused(shape) if fused_kernel_runs(shape) else _fp32_fallback(shape)
    return score_gemm_ops(shape, pass_, [], fwd if pass_ == "fwd" else bwd)


def _fused(shape: AttnShape) -> tuple[list[Op], list[Op]]:
    """Forward and backward kernels of the fused softmax: causal reads the triangle it
    scores (``AttnShape.pairs``) and writes full rows; a padding mask reads full rows and
    the mask."""
    bh = shape.batch * shape.heads
    scores = bh * shape.q_len * shape.kv_len
    e = dtype_bytes(shape.dtype)
    if shape.causal:
        read = bh * shape.pairs()
        fwd_bytes = (read + scores) * e
        bwd_bytes = (2 * read + scores) * e
    else:
        mask = shape.batch * shape.q_len * shape.kv_len * MASK_BYTES
        fwd_bytes = 2 * scores * e + mask
        bwd_bytes = 3 * scores * e
    fwd = ops.softmax("fused_scale_mask_softmax", bh * shape.q_len, shape.kv_len, shape.dtype)
    bwd = ops.elementwise("fused_scale_mask_softmax_bwd", scores, shape.dtype, 3.0, 2, 1,
                          OpKind.SOFTMAX)
    return [with_bytes(fwd, fwd_bytes)], [with_bytes(bwd, bwd_bytes)]


def _fp32_fallback(shape: AttnShape) -> tuple[list[Op], list[Op]]:
    """``FusedScaleMaskSoftmax``'s PyTorch path with the softmax in fp32 (module doc)."""
    bh = shape.batch * shape.heads
    scores = bh * shape.q_len * shape.kv_len
    e = dtype_bytes(shape.dtype)
    mask = shape.batch * shape.q_len * shape.kv_len * MASK_BYTES
    f32 = 4.0

    def kernel(name: str, nbytes: float, kind: OpKind = OpKind.ELEMENTWISE) -> Op:
        return with_bytes(ops.elementwise(name, scores, "fp32", 1.0, 1, 1, kind), nbytes)

    fwd = [
        kernel("scores_float", scores * (e + f32)),
        kernel("scores_scale", scores * 2 * f32),
        kernel("scores_masked_fill", scores * 2 * f32 + mask),
        kernel("softmax_fp32", scores * 2 * f32, OpKind.SOFTMAX),
        kernel("probs_half", scores * (f32 + e)),
    ]
    bwd = [
        kernel("grad_float", scores * (e + f32)),
        # eager softmax backward: ``grad * output``, then the backward kernel (attention_eager)
        kernel("softmax_bwd_mul_fp32", scores * 3 * f32),
        kernel("softmax_bwd_fp32", scores * 3 * f32, OpKind.SOFTMAX),
        kernel("masked_fill_bwd", scores * 2 * f32 + mask),
        kernel("scale_bwd", scores * 2 * f32),
        kernel("grad_half", scores * (f32 + e)),
    ]
    return fwd, bwd


__all__ = ["MAX_FUSED_KEYS", "fused_kernel_runs", "fused_softmax_cost", "fused_softmax_ops",
           "rows_per_block"]
