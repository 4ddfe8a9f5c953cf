"""Megatron-Core's vocab-parallel cross-entropy as its kernels move the logits.

Megatron-LM ``megatron/core/fusions/fused_cross_entropy.py`` (``cross_entropy_loss_fusion``
with the ``native`` implementation, Megatron-Bridge's default; the unfused
``tensor_parallel/cross_entropy.py`` runs the same steps as separate kernels), per logit
of the rank's ``tokens x vocab/tp`` slice:

- ``calculate_logits_max``: ``logits.float()`` and the row max, one compiled kernel:
  read the 16-bit logits, write an fp32 copy (no copy when the logits are fp32: the max
  alone reads them).
- ``_exp_logits_inplace`` (read 4, write 4), the row ``sum`` (read 4) and
  ``calculate_cross_entropy_loss``'s in-place divide (read 4, write 4): 20 bytes. The
  fp32 softmax is kept for the backward.
- Backward: ``_scale_gradients_inplace`` multiplies the saved softmax by the loss
  gradient in place (read 4, write 4; the target scatter touches one logit per row),
  then ``grad_input.to(logits_dtype)`` (read 4, write the 16-bit gradient).

The stored file is the in-place version: its note says an older compiled version
materialised one more logits-sized pass, so these counts are a lower bound.

The cast is a copy op (``loss_upcast``): its backward, the cast back, moves the same
bytes (``backward.py``'s copy rule). The softmax op (``MEGATRON_SOFTMAX``) is priced with
the 20 bytes above and a backward of one in-place fp32 pass (``softmax_backward_bytes``).

The FlashAttention repository's training runs flash-attn's fused cross-entropy instead
(``flash_attn/losses/cross_entropy.py``, framework ``flash-attn-training``): the forward
Triton kernel (``cross_entropy_fwd_kernel``) reads each row's 16-bit logits once (online max
and log-sum-exp) and writes a loss and an LSE per row; the backward
(``cross_entropy_bwd_kernel``) reads the logits and writes the gradient (in place with
``inplace_backward``): 2 bytes per 16-bit logit forward, 4 backward (``FLASH_XENT``).
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from xpusim.sim import ops
from xpusim.sim.ir import MAIN_MEMORY, Op, Role, SoftmaxShape, dtype_bytes
from xpusim.sim.training.framework import framework_profile
from xpusim.sim.training.items import Item, SlotContext, act_dtype

# The softmax op of the loss as ``workloads.transformer.lm_head_forward`` names it, and
# the name it takes here (``backward.py`` prices its backward by that name).
LOSS_SOFTMAX = "logits_softmax"
MEGATRON_SOFTMAX = "loss_softmax"
FLASH_XENT = "loss_flash_xent"
FP32 = 4.0
FORWARD_SOFTMAX_BYTES = 5 * FP32  # exp in place (2), row sum (1), divide in place (2)
BACKWARD_SOFTMAX_BYTES = 2 * FP32  # the in-place scale by the loss gradient


def loss_kernel(ctx: SlotContext) -> str:
    """The plan's loss kernel: "megatron" (every framework but these two), "flash-attn"
    (the FlashAttention repository's training), or "eager" (torchtitan's eager model code,
    priced by the default softmax op)."""
    profile = framework_profile(ctx.plan.framework)
    return "eager" if profile.eager_elementwise else profile.loss


def megatron_loss(ctx: SlotContext) -> bool:
    """Whether the plan computes its loss with Megatron-Core's cross-entropy."""
    return loss_kernel(ctx) == "megatron"


def softmax_backward_bytes(op: Op) -> float:
    """HBM bytes of the loss softmax's backward: one in-place fp32 pass (Megatron), or a
    read of the 16-bit logits and a write of their gradient (flash-attn)."""
    assert isinstance(op.shape, SoftmaxShape)
    per_logit = 2 * dtype_bytes(op.dtype) if op.name == FLASH_XENT else BACKWARD_SOFTMAX_BYTES
    return op.shape.rows * op.shape.cols * per_logit


def with_flash_xent(items: list[Item], ctx: SlotContext) -> list[Item]:
    """The head's items with the loss as flash-attn's fused cross-entropy: one read of the
    16-bit logits forward (module docstring)."""
    out: list[Item] = []
    for it in items:
        if isinstance(it, Op) and it.name == LOSS_SOFTMAX and isinstance(it.shape, SoftmaxShape):
            logits = it.shape.rows * it.shape.cols
            it = replace(it, name=FLASH_XENT, dtype=act_dtype(ctx.plan),
                         bytes=MappingProxyType({MAIN_MEMORY: logits * ctx.b}))
        out.append(it)
    return out


def with_megatron_loss(items: list[Item], ctx: SlotContext) -> list[Item]:
    """The head's items with the loss as the plan's loss kernel moves the logits."""
    kernel = loss_kernel(ctx)
    if kernel == "flash-attn":
        return with_flash_xent(items, ctx)
    if kernel != "megatron":
        return items
    out: list[Item] = []
    for it in items:
        if isinstance(it, Op) and it.name == LOSS_SOFTMAX and isinstance(it.shape, SoftmaxShape):
            logits = it.shape.rows * it.shape.cols
            if ctx.b < FP32:
                # 16-bit logits read, fp32 copy written (the row max rides on it); a copy
                # op moves its ``nbytes`` twice (read + write), so half the sum
                upcast = logits * (ctx.b + FP32) / 2
                out.append(ops.memcpy("loss_upcast", upcast, Role("out")))
                body = FORWARD_SOFTMAX_BYTES
            else:
                body = FORWARD_SOFTMAX_BYTES + FP32  # the max reads the fp32 logits
            it = replace(it, name=MEGATRON_SOFTMAX,
                         bytes=MappingProxyType({MAIN_MEMORY: logits * body}))
        out.append(it)
    return out
