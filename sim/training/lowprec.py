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
"""

from __future__ import annotations

from xpusim.sim.ir import NO_ROLE, Op, OpKind, Role
from xpusim.sim.training.items import CAST_SUFFIX, quantize_op

# Usages a quantised GEMM operand is written in: rowwise (this GEMM) and columnwise
# (the other backward GEMM that reads it along its other axis).
USAGES = 2


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
