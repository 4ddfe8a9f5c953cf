"""The quantisation passes a low-precision (FP8 / MX) recipe runs around its GEMMs.

A GEMM C = A.B in a low-precision recipe reads each operand in two layouts over the
step: the forward reads A and B with K contiguous, the weight gradient dB = A^T.dC
reads A and dC along the token dimension, and the data gradient dA = dC.B^T reads B
along its other axis. TransformerEngine calls these a quantised tensor's *rowwise* and
*columnwise usage*; on Hopper an FP8 GEMM only runs in the TN layout ("Hopper only
supports TN GEMMs for FP8. Column-wise data is transpose of data", TransformerEngine
common/gemm/cublaslt_gemm.cu, CanonicalizeGemmInput), so the columnwise usage is a
physical transposed FP8 copy, and MXFP8's columnwise usage carries its own block scales
along the other axis (TransformerEngine docs, "Low precision training: Performance
considerations - Handling transposes"). TransformerEngine writes both in one fused
cast-transpose kernel that reads the 16-bit tensor once (``fp8_cast_transpose_fused``;
with the bias gradient for dC, ``fp8_cast_transpose_bgrad_fused``).

Priced here: the activation input of each linear layer's forward GEMM and the output
gradient dC of its backward, each cast once per micro-batch into both usages (read 2 B,
write 2 x the format's bytes per element). Not priced separately: Blackwell's per-tensor
FP8, whose GEMMs accept any layout (one usage would do), is charged the same pass.

A forward cast has no backward pass of its own: the cast runs inside TransformerEngine's
linear autograd function (``_Linear`` / ``_LayerNormLinear`` in
transformer_engine/pytorch/module/linear.py, layernorm_linear.py), whose ``backward``
returns the data-gradient GEMM's output, written in the activation dtype, as the
gradient of the 16-bit input (``dgrad.view(ctx.inp_shape)``): the straight-through
gradient of the quantisation costs no kernel (``is_forward_cast``).

**MXFP8 parameter all-gather in 16 bits.** With FP8 parameters (Megatron-Bridge's
``bf16_with_mxfp8_mixed`` and ``bf16_with_fp8_current_scaling_mixed`` both set
``fp8_param_gather``) the distributed optimizer's all-gather moves per-tensor FP8 weights
as one byte each, but MXFP8 weights in bf16: Megatron-Core's ``_ParamAndGradBuffer``
allocates, for a buffer holding MXFP8 params under the distributed optimizer, one
``shared_buffer`` of the gradient dtype that serves both the gradient reduce-scatter and
the param all-gather ("For FP32 weight grads, only half of the buffer is used to store
params in bf16"; megatron/core/distributed/param_and_grad_buffer.py), and after the
gather each MXFP8 param is re-quantised from its bf16 slice (``param.data.copy_``; the
recipe's ``reuse_grad_buf_for_mxfp8_param_ag``). ``param_gather_bytes``: 2 bytes per
parameter for the formats in ``BF16_GATHER_FORMATS``; the re-quantisation is the weight
cast the lowering already charges once per step.

**Scale swizzle (MXFP8 on NVIDIA).** cuBLASLt's block-scaled GEMMs read the E8M0 scales
in an interleaved 128x4 tile layout, not the row-major layout the quantiser writes
(TransformerEngine docs, C API ``swizzle.h``: ``nvte_swizzle_scaling_factors``, "Swizzling
scaling factors into the required interleaved layout for GEMM"). In the TransformerEngine
2.x of the Megatron-Bridge 25.09-26.02 containers every GEMM call swizzles both operands'
scales first: ``gemm()`` in transformer_engine/pytorch/csrc/extensions/gemm.cpp calls
``swizzle_scaling_factors(A_tensor, transa)`` and ``(B_tensor, !transb)``, each of which
(pytorch/csrc/util.cpp) allocates a scale-sized buffer and launches one
``nvte_swizzle_scaling_factors`` kernel; the grouped GEMM (``te_general_grouped_gemm``)
swizzles all its A's and all its B's with one ``nvte_multi_tensor_swizzle_scaling_factors``
each. The swizzled copy lives only during the GEMM, so cached weights are swizzled again
at every GEMM. Pre-swizzled ("GEMM-ready") scales came later (TransformerEngine issue
#2446, Dec 2025; PR #2486, Jan 2026, still a separate post-quantize swizzle kernel; fused
into the dense MXFP8 cast kernels by PR #3338, Aug 2026). Priced (``scale_swizzle_ops``)
as two memory-bound launches per GEMM (forward, data and weight gradient), each reading
and writing its operand's scales: one byte per 32 elements (the 128x4 tile padding is
ignored). Only where the slot context says the device is NVIDIA
(``SlotContext.scale_swizzle``); ``Role.swizzled_scales`` on the forward GEMM carries it to
the backward (``sim.training.backward``).
"""

from __future__ import annotations

from types import MappingProxyType

from xpusim.sim.ir import (
    MAIN_MEMORY,
    NO_ROLE,
    ElementwiseShape,
    Op,
    OpKind,
    Role,
    Unit,
    dtype_bytes,
)
from xpusim.sim.training.items import CAST_SUFFIX, quantize_op

# Usages a quantised GEMM operand is written in: rowwise (this GEMM) and columnwise
# (the other backward GEMM that reads it along its other axis).
USAGES = 2

# Formats whose GEMMs swizzle their block scales before each call on NVIDIA (module
# docstring): MXFP8, one E8M0 byte per 32-element block (OCP MX v1.0).
SWIZZLED_SCALE_FORMATS = frozenset({"mxfp8"})
SCALE_BLOCK = 32  # elements per E8M0 scale
SWIZZLE_SUFFIXES = ("_swizzle_a", "_swizzle_b")
SWIZZLE_KIND = "scale_swizzle"  # their line in the step breakdown (--explain)
# Formats whose parameters the distributed optimizer all-gathers in bf16 (docstring).
BF16_GATHER_FORMATS = frozenset({"mxfp8"})


def cast_transpose_op(name: str, numel: float, fmt: str, src: str = "bf16",
                      role: Role = NO_ROLE) -> Op:
    """Cast a ``src`` tensor of ``numel`` elements to ``fmt`` in both usages, as one
    memory-bound pass: reads ``src`` once, writes ``USAGES`` ``fmt`` copies (with their
    scales, counted in ``dtype_bytes(fmt)``). The plain cast (``items.quantize_op``) with
    ``USAGES`` outputs, under the same ``<name>_quant`` name."""
    return quantize_op(name, numel, fmt, src, role, usages=USAGES)


def is_forward_cast(op: Op) -> bool:
    """Whether ``op`` is a cast of a GEMM input to a low-precision format: its backward is
    the identity, carried by the data-gradient GEMM's 16-bit output (module docstring)."""
    return op.kind == OpKind.ELEMENTWISE and op.name.endswith(CAST_SUFFIX)


def scale_swizzle_ops(name: str, m: float, n: float, k: float, batch: float, fmt: str,
                      role: Role = NO_ROLE) -> list[Op]:
    """The scale swizzles TransformerEngine runs before the ``fmt`` GEMM ``name``
    (C[batch, m, n] = A[batch, m, k] B[batch, k, n]): one kernel per operand, each reading
    and writing that operand's E8M0 scales (one byte per ``SCALE_BLOCK`` elements); none
    for a format without block scales to swizzle (module docstring)."""
    if fmt not in SWIZZLED_SCALE_FORMATS:
        return []
    out = []
    for suffix, numel in zip(SWIZZLE_SUFFIXES, (m * k * batch, k * n * batch), strict=True):
        scales = numel / SCALE_BLOCK
        out.append(Op(f"{name}{suffix}", OpKind.ELEMENTWISE, 0.0,
                      MappingProxyType({MAIN_MEMORY: 2.0 * scales}), fmt, Unit.VECTOR,
                      ElementwiseShape(scales), role))
    return out


def is_scale_swizzle(op: Op) -> bool:
    """Whether ``op`` is a scale swizzle before a GEMM (its backward is the backward
    GEMMs' own swizzles, emitted with them: none of its own)."""
    return op.kind == OpKind.ELEMENTWISE and op.name.endswith(SWIZZLE_SUFFIXES)


def param_gather_bytes(dtype: str) -> float:
    """Bytes per parameter of the distributed optimizer's param all-gather in a ``dtype``
    run: bf16 for MXFP8 (Megatron-Core's shared param/grad buffer, module docstring),
    else the format's own bytes (FP8 with ``fp8_param_gather``; 16-bit runs)."""
    return 2.0 if dtype in BF16_GATHER_FORMATS else dtype_bytes(dtype)
