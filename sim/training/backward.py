"""The backward and the recompute of a slot's forward items.

The backward is derived op by op: a GEMM C = A.B becomes dA = dC.B^T (m x k, over n)
and dB = A^T.dC (k x n, over m) — 2x forward FLOPs; fused attention backward is 2.5x
its forward FLOPs (FlashAttention-2 runs 5 matmuls in backward vs 2 forward) and reads
Q, K, V, O, dO while writing dQ, dK, dV (~2x forward bytes); elementwise/norm/softmax
backward moves ~2x the bytes and FLOPs; a low-precision cast of a GEMM input has no
backward op (``lowprec.is_forward_cast``); permutes are permuted back. Collectives are
mirrored: all-reduce stays, all-gather <-> reduce-scatter swap, all-to-all stays
(dispatch <-> combine). A backward op keeps its forward op's role without the saved
tensors (it is part of the same module and weight; it keeps nothing).

A recompute policy re-runs, before the backward, all forward items ("full") or those
whose output module it names ("selective", read from the op's ``Role.module``).
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from xpusim.sim import ops
from xpusim.sim.ir import (
    MAIN_MEMORY,
    AttentionShape,
    CollectiveKind,
    GemmShape,
    Op,
    OpKind,
    Role,
    Shape,
    SoftmaxShape,
    Unit,
    Weight,
    is_low_precision,
)
from xpusim.sim.training.items import Comm, Item
from xpusim.sim.training.lowprec import (
    CastRecipe,
    amax_reduce,
    cast_ops,
    is_forward_cast,
    is_scale_swizzle,
    scale_swizzle_ops,
)
from xpusim.sim.training.megatron_loss import (
    FLASH_XENT,
    MEGATRON_SOFTMAX,
    softmax_backward_bytes,
)

# The rotary embedding's op (built in ``layers._with_rotary``): a rotation, whose
# backward moves the forward's bytes (TransformerEngine ``fused_rope_backward``).
ROTARY = "rotary"
# ALiBi's bias add on unfused scores (``layers._with_alibi``): the bias is a constant, so
# the scores' gradient passes through unchanged (the Q·K^T backward reads it): no op.
ALIBI = "alibi_bias"

_MIRROR = {
    CollectiveKind.ALL_GATHER: CollectiveKind.REDUCE_SCATTER,
    CollectiveKind.REDUCE_SCATTER: CollectiveKind.ALL_GATHER,
}


# Weights whose gradient Megatron-Core's linear layers add straight into the main
# gradient (``gradient_accumulation_fusion``): the transformer's linear layers, the routed
# experts (TransformerEngine GroupedLinear) and the output layer. The router gate is a
# plain parameter whose gradient autograd accumulates.
MAIN_GRAD_WEIGHTS = (Weight.DENSE, Weight.EXPERT, Weight.HEAD)


def _wgrad(op: Op, s: GemmShape, role: Role, main_grad: str, out_dtype: str | None) -> Op:
    """The weight-gradient GEMM dW = A^T dC. With a ``main_grad`` dtype and a weight
    whose gradient Megatron-Core fuses into the main gradient, it accumulates there
    (beta = 1: Megatron-LM ``fused_weight_gradient_mlp_cuda.wgrad_gemm_accum_fp32`` /
    ``wgrad_gemm_accum_fp16`` into ``weight.main_grad``; TransformerEngine's linear and
    GroupedLinear backward ``general_gemm(..., out=main_grad, accumulate=True)``): its
    epilogue reads and writes the main gradient, in its dtype, each micro-batch."""
    m, n, k, batch = s.m, s.n, s.k, s.batch
    if main_grad and role.weight in MAIN_GRAD_WEIGHTS:
        return ops.gemm(f"{op.name}_wgrad", k, n, m, op.dtype, batch, out_dtype=main_grad,
                        role=role, accumulate=True)
    return ops.gemm(f"{op.name}_wgrad", k, n, m, op.dtype, batch, out_dtype=out_dtype, role=role)


def _gemm_backward(op: Op, s: GemmShape, role: Role, main_grad: str = "") -> list[Op]:
    m, n, k, batch = s.m, s.n, s.k, s.batch
    if is_low_precision(op.dtype):
        # dC arrives in bf16 and is cast once (E5M2 in the hybrid FP8 recipe) into both
        # usages: rowwise for the data gradient, transposed/columnwise for the weight
        # gradient (sim.training.lowprec); both GEMMs read the saved low-precision A, B.
        # Each backward GEMM swizzles its operands' block scales first where the forward
        # did (``Role.swizzled_scales``, sim.training.lowprec): dgrad reads dC and B's
        # columnwise copy, wgrad A's and dC's columnwise copies.
        swz = Role(role.module, expert=role.expert)
        dgrad = scale_swizzle_ops(f"{op.name}_dgrad", m, k, n, batch, op.dtype, swz)
        wgrad = scale_swizzle_ops(f"{op.name}_wgrad", k, n, m, batch, op.dtype, swz)
        if not role.swizzled_scales:
            dgrad, wgrad = [], []
        # The output-gradient cast runs as the forward's recipe says (``Role.cast_usages``,
        # ``Role.amax_pass``; lowprec.cast_ops): always its own amax under current scaling.
        recipe = CastRecipe(role.cast_usages, role.amax_pass)
        return [
            *cast_ops(f"{op.name}_dgrad", m * n * batch, op.dtype, recipe,
                      Role(expert=role.expert)),
            *dgrad,
            ops.gemm(f"{op.name}_dgrad", m, k, n, op.dtype, batch, out_dtype="bf16", role=role),
            *wgrad,
            _wgrad(op, s, role, main_grad, "bf16"),
        ]
    return [
        ops.gemm(f"{op.name}_dgrad", m, k, n, op.dtype, batch, role=role),
        _wgrad(op, s, role, main_grad, None),
    ]


def backward_op(op: Op, main_grad: str = "") -> list[Op]:
    """The backward ops of one forward op (see the module docstring for the rules).
    ``main_grad``: the main gradient's dtype when weight gradients accumulate into it
    in the GEMM (``_wgrad``); "" when they are written as a fresh tensor."""
    s = op.shape
    r = op.role
    role = replace(r, saves=()) if r.saves else r
    if op.kind == OpKind.GEMM and isinstance(s, GemmShape):
        return _gemm_backward(op, s, role, main_grad)
    if is_forward_cast(op):
        return []  # straight-through: the dgrad GEMM writes the 16-bit input gradient
    if is_scale_swizzle(op):
        return []  # the backward GEMMs' own swizzles come with them (_gemm_backward)
    if op.name == ALIBI:
        return []  # a constant bias: the identity on the gradient
    if op.kind == OpKind.ATTENTION and isinstance(s, AttentionShape):
        # FlashAttention's backward: 2.5x the forward FLOPs (recomputes the scores).
        return [_pointwise_backward(op, 2.5, replace(s, backward=True), role)]
    if op.kind in (OpKind.MEMCPY, OpKind.EMBEDDING) or op.unit == Unit.DMA or op.name == ROTARY:
        # A copy, a lookup, or the rotary embedding (a rotation: the backward reads the
        # output gradient and writes the input gradient, the forward's bytes).
        return [replace(op, name=f"{op.name}_bwd", role=role)]
    if op.name in (MEGATRON_SOFTMAX, FLASH_XENT) and isinstance(s, SoftmaxShape):
        # Megatron's cross-entropy (megatron_loss.py): the backward scales the kept
        # softmax in place, one fp32 pass; the cast back is the upcast copy's backward.
        # flash-attn's: one kernel reads the logits and writes their gradient.
        bwd = _pointwise_backward(op, 1.0, s, role)
        return [replace(bwd, bytes=MappingProxyType({MAIN_MEMORY: softmax_backward_bytes(op)}))]
    return [_pointwise_backward(op, 2.0, s, role)]


def _pointwise_backward(op: Op, flop_factor: float, shape: Shape, role: Role) -> Op:
    """A backward that reads the forward's tensors and the output gradient and writes the
    input gradient: twice the forward's HBM bytes, ``flop_factor`` x its FLOPs."""
    return Op(
        f"{op.name}_bwd",
        op.kind,
        flop_factor * op.flops,
        MappingProxyType({MAIN_MEMORY: 2.0 * op.main_bytes}),
        op.dtype,
        op.unit,
        shape,
        role,
    )


def backward_items(items: list[Item], sequence_parallel: bool,
                   main_grad: str = "") -> list[Item]:
    """Backward of a forward item list, in reverse order, collectives mirrored.

    With sequence parallelism the saved GEMM inputs are the sequence shards, so the
    backward re-gathers them over TP before the weight gradient (Korthikanti et al. 2022).
    ``main_grad``: see ``backward_op``.
    """
    out: list[Item] = []
    for it in reversed(items):
        if isinstance(it, Comm):
            out += _comm_backward(it, sequence_parallel)
        else:
            out += backward_op(it, main_grad)
    return out


def _comm_backward(it: Comm, sequence_parallel: bool) -> list[Item]:
    """The backward of a forward collective: its mirror, in ``it.grad_nbytes`` where set
    (an FP8 gather's bf16 reduce-scatter, a bf16 reduce-scatter's FP8 gradient gather),
    after an amax all-reduce where ``it.grad_amax``; the re-gather of a sequence-parallel
    input in the forward's bytes (FP8 when gathered in FP8: sim.training.lowprec); none for
    a forward-only collective (an amax all-reduce)."""
    if it.forward_only:
        return []
    nbytes = it.nbytes if it.grad_nbytes is None else it.grad_nbytes
    out: list[Item] = [amax_reduce(f"{it.name}_bwd", it.module, False)] if it.grad_amax else []
    out.append(replace(it, name=f"{it.name}_bwd", kind=_MIRROR.get(it.kind, it.kind),
                       nbytes=nbytes, grad_nbytes=None, grad_amax=False))
    if sequence_parallel and it.name.endswith("_sp_gather"):
        out.append(replace(it, name=f"{it.name}_regather", grad_nbytes=None))
    return out


def recompute_items(items: list[Item], policy: str, modules: tuple[str, ...]) -> list[Item]:
    """Forward items re-run before the backward: all (full) or those of recomputed modules."""
    if policy == "full":
        return list(items)
    if policy == "selective":
        return [it for it in items if recomputed(it, modules)]
    return []


def recomputed(it: Item, modules: tuple[str, ...]) -> bool:
    """Whether a selective recompute of ``modules`` re-runs ``it``. The attention core
    ("core_attn", Megatron's selective recompute: the score computation, not the
    projections around it) is part of "attn"."""
    module = it.module if isinstance(it, Comm) else it.role.module
    return module in modules or (module == "core_attn" and "attn" in modules)
