"""The quantisation passes a low-precision (FP8 / MX / NVFP4) recipe runs around its GEMMs.

NVFP4's own passes (random Hadamard transform, 2D weight blocks, bf16 parameters) are
described and built in ``sim.training.nvfp4``; this module dispatches to them.

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
write 2 x the format's bytes per element).

**The cast-transpose kernel's rate.** TransformerEngine writes the two per-tensor FP8
copies with one tiled kernel (``transformer_engine/common/transpose/cast_transpose.cu``:
a warp-tile per 32 x 32 vectors, the transposed copy staged through shared memory; the
NVRTC-tuned variant since TE 1.7, NVIDIA/TransformerEngine#258, still the kernel of TE
2.x for delayed and current scaling alike). Measured on H100 SXM (NVIDIA/TransformerEngine#101,
FP16 in, FP8 out): 4096 x 4096 in 51.95 us, i.e. 67.1 MB at 1.29 TB/s, 39% of HBM3's
3.35 TB/s, where the simulator's other memory-bound ops run at ``memory_max`` (0.9).
The casts that write a transposed copy carry ``ElementwiseShape.transpose`` and the
device profile's ``[kernels] cast_transpose_fraction`` (h100-sxm5-80gb: 0.411, fit on
that 4096 x 4096 point with the roofline's memory half size) prices them
(``sim.cost.roofline.memory_fraction``). #258 reports its tuned kernels differ from
#101's "at intermediate scale, but nothing too drastic", so the 2023 point stands for
the 2024-2025 kernels too.

**One FP8 copy where the GEMM takes any layout.** TransformerEngine writes the transposed
columnwise copy of a per-tensor FP8 tensor only when ``!nvte_is_non_tn_fp8_gemm_supported()``
(transformer_engine/pytorch/csrc/quantizer.cpp, ``Float8Quantizer`` and
``Float8CurrentScalingQuantizer::create_tensor``: ``create_transpose = columnwise_usage &&
!nvte_is_non_tn_fp8_gemm_supported()``); that function (common/transformer_engine.cpp) is
true for compute capability 10.0 up to 12.0 and from 13.0 (B200, GB200, B300/GB300), false
on Hopper, Ada and sm_120; there cuBLASLt reads the rowwise copy in the other layout
(common/gemm/cublaslt_gemm.cu ``CanonicalizeGemmInput``). TE 2.0-2.2 had the same rule as
``non_tn_fp8_gemm_supported()`` (compute capability major >= 10) in pytorch/csrc/util.cpp.
The device profile's ``[kernels] non_tn_fp8_gemm`` says so; per-tensor FP8 casts then
write one copy (``CastRecipe.usages`` 1). MXFP8 keeps both: its block scales run along
different axes for the two usages.

**Current scaling.** TransformerEngine's ``Float8CurrentScaling`` recipe (Megatron-Bridge's
``bf16_with_fp8_current_scaling_mixed``, the "fp8cs" rows) takes each tensor's scale from
its own amax: ``Float8CurrentScalingQuantizer::quantize_impl`` (quantizer.cpp) runs
``nvte_compute_amax_with_config`` over the input (one more full read of the 16-bit
tensor), ``nvte_compute_scale_from_amax`` (one thread), then ``nvte_quantize_v2`` (the
cast). Delayed scaling (``DelayedScaling``, TE 1.x's default and the NeMo 24.07 /
Megatron-LM rows) uses the previous steps' amax history and takes the new amax inside
the cast kernel: no extra pass. Priced (``cast_ops``) as a memory-bound amax op before the
cast, reading the 16-bit input once, named ``<name>_amax_quant`` (a cast for the
backward and overlap rules, and in the casts' ``elementwise`` line of --explain). Not for
the inputs of TransformerEngine's LayerNormLinear (Megatron-Core's ``linear_qkv`` and a
dense MLP's ``linear_fc1``, gpt_layer_specs.py ``TELayerNormColumnParallelLinear``): the
normalisation computes the amax of its high-precision output in the same kernel
(pytorch/csrc/extensions/normalization.cpp ``Impl::FUSED_NORM_AMAX_FP8`` then
``quantize_with_amax``), so those casts are priced as under delayed scaling
(``NORM_FUSED_GEMMS``). Every output-gradient cast computes its amax
(``grad_output_preprocess`` quantizes dC with the quantizer).

**Sequence-parallel gathers in FP8** (``sp_fp8_collectives``). With sequence parallelism
a per-tensor FP8 recipe casts on the local shard and all-gathers the FP8 bytes, one byte
per element (the per-tensor scale is not gathered), in TransformerEngine 1.x and 2.x
alike: (a) the forward input of a column-parallel LayerNormLinear (qkv, dense fc1): TE
1.x ``_LayerNormLinear.forward`` normalises into an FP8 ``ln_out``
(``_apply_normalization(..., fp8 and not return_layernorm_output)``) then
``gather_along_first_dim(ln_out, tp_group)``; TE 2.x quantizes the local input
(``input_quantizer.set_usage(columnwise=False)``, "All-gather is not supported with FP8
column-wise data") and gathers with the quantizer (distributed.py ``_all_gather_fp8``:
``all_gather_into_tensor`` of ``_data``). (b) The backward re-gather of that input for
the weight gradient: the saved ``ln_out`` / ``inputmat`` is the FP8 shard (TE 1.x
``gather_along_first_dim(ln_out, ..., async_op=True)`` then ``fp8_transpose``; TE 2.x
"If data is in FP8, we compute FP8 transposes manually", a rowwise gather with the
quantizer). (c) The backward gather of a row-parallel layer's output gradient (o_proj,
dense fc2): base.py ``grad_output_preprocess`` "FP8 case with gather: unfused bgrad,
cast, transpose for efficient gather" (TE 1.x ``cast_to_fp8`` then
``gather_along_first_dim``; TE 2.x ``gather_along_first_dim(grad_output, tp_group,
quantizer=quantizer)``). The dgrad reduce-scatters stay in bf16. Only on
TransformerEngine stacks (``TE_FRAMEWORKS``) and for the dense linears above; MoE blocks
(router input, grouped experts) and MLA's down-projections are unchanged (not read).
MXFP8 (TE 2.x, 2026-12-06): (a) and (b) move MXFP8 bytes, 1 + 1/32 per element (FP8 data
and the E8M0 block scales): ``linear.py`` / ``layernorm_linear.py`` forward quantize the
local shard and gather it with ``quantizer.set_usage(rowwise=True, columnwise=False)``,
and since ``MXFP8Quantizer.supports_only_rowwise_all_gather()`` is false the saved shard
keeps its columnwise data ("Discard row-wise data since it is not needed in backward
pass") and the backward re-gathers it columnwise ("wgrad GEMM requires input with
column-wise usage"). (c) stays bf16: ``grad_output_preprocess`` gathers the gradient with
the quantizer, but dgrad (rowwise) and wgrad (columnwise) both need it, 2 x (1 + 1/32)
bytes if both usages travel, within 3% of bf16; ``_all_gather_mxfp8`` was not read. Where the cast runs (shard vs gathered tensor) and the post-gather
``fp8_transpose`` on TN-only devices are not re-priced.

**Amax all-reduce under current scaling** (``amax_reduce``). With sequence parallelism
TransformerEngine 2.x sets ``with_amax_reduction`` on a column-parallel layer's input
quantizer and a row-parallel layer's output-gradient quantizer (module/linear.py,
layernorm_linear.py, layernorm_mlp.py ``_customize_quantizers_float8_current_scaling``:
``amax_reduction_group = tp_group``), and ``Float8CurrentScalingQuantizer::quantize_impl``
(quantizer.cpp) then all-reduces the fp32 amax with ``ReduceOp::MAX`` over the TP group
before computing the scale, also when the norm computed the amax (``compute_amax``
false). Priced as a 4-byte all-reduce on the TP group before the forward gather of (a)
and before the gradient gather of (c): a latency-bound collective in stream order.

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

from dataclasses import dataclass
from types import MappingProxyType

from xpusim.sim.ir import (
    LOW_PRECISION,
    MAIN_MEMORY,
    NO_ROLE,
    CollectiveKind,
    ElementwiseShape,
    Op,
    OpKind,
    Role,
    Unit,
    dtype_bytes,
)
from xpusim.sim.training.items import CAST_SUFFIX, Comm, quantize_op
from xpusim.sim.training.nvfp4 import GRAD_GATHER_COPIES, RHT_FORMATS, rht_cast_ops

# Usages a quantised GEMM operand is written in: rowwise (this GEMM) and columnwise
# (the other backward GEMM that reads it along its other axis).
USAGES = 2
# Per-tensor-scaled formats: the ones current scaling and the single-copy rule apply to.
PER_TENSOR_FORMATS = frozenset({"fp8"})
# GEMMs whose input is a normalisation's output in the same TransformerEngine module
# (LayerNormLinear): the norm computes the amax (module docstring).
NORM_FUSED_GEMMS = frozenset({"qkv_proj", "mlp_up"})
AMAX_SUFFIX = "_amax"


@dataclass(frozen=True)
class CastRecipe:
    """How a recipe casts a GEMM operand: ``usages`` copies written per cast, and whether a
    separate amax pass reads the input first (``amax_pass``: current scaling)."""

    usages: int = USAGES
    amax_pass: bool = False


# Two copies, amax inside the cast: TE's delayed scaling on a TN-only device (the default).
HOPPER_DELAYED = CastRecipe()


def cast_recipe(fmt: str, scaling: str = "delayed", non_tn_fp8: bool = False) -> CastRecipe:
    """The casts of format ``fmt`` under FP8 ``scaling`` on a device whose FP8 GEMMs take
    any layout (``non_tn_fp8``): one copy and an amax pass apply to per-tensor FP8 only
    (module docstring); NVFP4 always takes its per-tensor amax (``sim.training.nvfp4``)."""
    if fmt in RHT_FORMATS:
        return CastRecipe(USAGES, True)
    if fmt not in PER_TENSOR_FORMATS:
        return CastRecipe()
    return CastRecipe(1 if non_tn_fp8 else USAGES, scaling == "current")


def cast_ops(name: str, numel: float, fmt: str, recipe: CastRecipe = HOPPER_DELAYED,
             role: Role = NO_ROLE, norm_amax: bool = False, src: str = "bf16") -> list[Op]:
    """The cast of a ``src`` GEMM operand of ``numel`` elements under ``recipe``: with
    ``recipe.amax_pass`` (and no ``norm_amax``, an amax the producing norm computed) an amax
    op reading the input (1 FLOP, ``dtype_bytes(src)`` bytes per element), then the cast
    writing ``recipe.usages`` copies (``items.quantize_op``). NVFP4: its amax, rowwise and
    RHT columnwise passes (``nvfp4.rht_cast_ops``; the norm never supplies its amax)."""
    if fmt in RHT_FORMATS:
        return rht_cast_ops(name, numel, fmt, role, src)
    cast = quantize_op(name, numel, fmt, src, role, usages=recipe.usages,
                       transpose=writes_transpose(fmt, recipe.usages))
    if not recipe.amax_pass or norm_amax:
        return [cast]
    amax = Op(f"{name}{AMAX_SUFFIX}{CAST_SUFFIX}", OpKind.ELEMENTWISE, numel,
              MappingProxyType({MAIN_MEMORY: numel * dtype_bytes(src)}), src, Unit.VECTOR,
              ElementwiseShape(numel), role)
    return [amax, cast]

# Formats whose GEMMs swizzle their block scales before each call on NVIDIA (module
# docstring): MXFP8, one E8M0 byte per 32-element block (OCP MX v1.0), and NVFP4, one E4M3
# byte per 16 (TransformerEngine util.cpp ``swizzle_scaling_factors`` takes
# NVTE_MXFP8_1D_SCALING and NVTE_NVFP4_1D_SCALING alike); ``LOW_PRECISION`` gives the block.
SWIZZLED_SCALE_FORMATS = frozenset({"mxfp8", "nvfp4"})
SWIZZLE_SUFFIXES = ("_swizzle_a", "_swizzle_b")
SWIZZLE_KIND = "scale_swizzle"  # their line in the step breakdown (--explain)
# Formats whose parameters the distributed optimizer all-gathers in bf16 (docstring):
# MXFP8 through the shared buffer; NVFP4 parameters are bf16 (``sim.training.nvfp4``).
BF16_GATHER_FORMATS = frozenset({"mxfp8", "nvfp4"})


def cast_transpose_op(name: str, numel: float, fmt: str, src: str = "bf16",
                      role: Role = NO_ROLE) -> Op:
    """Cast a ``src`` tensor of ``numel`` elements to ``fmt`` in both usages, as one
    memory-bound pass: reads ``src`` once, writes ``USAGES`` ``fmt`` copies (with their
    scales, counted in ``dtype_bytes(fmt)``). The plain cast (``items.quantize_op``) with
    ``USAGES`` outputs, under the same ``<name>_quant`` name."""
    return quantize_op(name, numel, fmt, src, role, usages=USAGES,
                       transpose=writes_transpose(fmt, USAGES))


def writes_transpose(fmt: str, usages: int) -> bool:
    """Whether a cast into ``fmt`` writing ``usages`` copies writes a physically transposed
    one: per-tensor FP8 with a columnwise usage (TransformerEngine's cast-transpose kernel,
    module docstring). MXFP8's columnwise usage keeps the layout and scales along the other
    axis (no transpose)."""
    return usages > 1 and fmt in PER_TENSOR_FORMATS


def is_forward_cast(op: Op) -> bool:
    """Whether ``op`` is a cast of a GEMM input to a low-precision format: its backward is
    the identity, carried by the data-gradient GEMM's 16-bit output (module docstring)."""
    return op.kind == OpKind.ELEMENTWISE and op.name.endswith(CAST_SUFFIX)


def scale_swizzle_ops(name: str, m: float, n: float, k: float, batch: float, fmt: str,
                      role: Role = NO_ROLE) -> list[Op]:
    """The scale swizzles TransformerEngine runs before the ``fmt`` GEMM ``name``
    (C[batch, m, n] = A[batch, m, k] B[batch, k, n]): one kernel per operand, each reading
    and writing that operand's block scales (one byte per block of the format: 32 for
    MXFP8, 16 for NVFP4); none for a format without block scales to swizzle (module
    docstring)."""
    if fmt not in SWIZZLED_SCALE_FORMATS:
        return []
    block = LOW_PRECISION[fmt].block
    out = []
    for suffix, numel in zip(SWIZZLE_SUFFIXES, (m * k * batch, k * n * batch), strict=True):
        scales = numel / block
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


# Stacks whose linear layers are TransformerEngine modules (Megatron-Core / NeMo /
# Megatron-Bridge: the frameworks of sim.training.units.MAIN_GRAD_FRAMEWORKS).
TE_FRAMEWORKS = ("eager", "cuda-graphs")
# GEMMs whose input a sequence-parallel FP8 recipe gathers in FP8 (column-parallel
# LayerNormLinear), and whose output gradient it gathers in FP8 (row-parallel Linear).
SP_FP8_INPUT_GEMMS = NORM_FUSED_GEMMS
SP_FP8_GRAD_GEMMS = frozenset({"o_proj", "mlp_down"})
# Formats whose input gather (a) and wgrad re-gather (b) move the quantised bytes: the
# per-tensor FP8 ones, MXFP8 and NVFP4 (module docstring; ``sim.training.nvfp4``); the
# gradient gather (c) per-tensor FP8 (one copy) and NVFP4 (both usages).
SP_QUANTIZED_INPUT_GATHER_FORMATS = PER_TENSOR_FORMATS | {"mxfp8"} | RHT_FORMATS
SP_QUANTIZED_GRAD_GATHER_FORMATS = PER_TENSOR_FORMATS | RHT_FORMATS
AMAX_REDUCE_BYTES = 4.0  # one fp32 amax
AMAX_REDUCE_SUFFIX = "_amax_reduce"


def _sp_fp8_format(body: list, names: frozenset[str], formats: frozenset[str]) -> str:
    """The format in ``formats`` of the first GEMM of ``body`` named in ``names``, or ""."""
    for it in body:
        if (isinstance(it, Op) and it.kind == OpKind.GEMM and it.name in names
                and it.dtype in formats):
            return it.dtype
    return ""


@dataclass(frozen=True)
class SpFp8:
    """Bytes per element of a block's sequence-parallel collectives under a per-tensor FP8
    or MXFP8 recipe (module docstring): ``gather`` for the forward input gather and its backward
    re-gather, ``grad_gather`` for the backward output-gradient gather (0: bf16, as
    built); ``amax``: each FP8 gather is preceded by an amax all-reduce (current scaling)."""

    gather: float = 0.0
    grad_gather: float = 0.0
    amax: bool = False


def sp_fp8_collectives(body: list, framework: str, scaling: str) -> SpFp8:
    """What a TransformerEngine FP8 recipe gathers in FP8 around the block ``body`` with
    sequence parallelism (module docstring): nothing off TE stacks or for a body without
    the dense TE linears. NVFP4 gathers the gradient's two usages and reduces the amax
    before every quantised gather (``sim.training.nvfp4``)."""
    if framework not in TE_FRAMEWORKS:
        return SpFp8()
    fwd = _sp_fp8_format(body, SP_FP8_INPUT_GEMMS, SP_QUANTIZED_INPUT_GATHER_FORMATS)
    bwd = _sp_fp8_format(body, SP_FP8_GRAD_GEMMS, SP_QUANTIZED_GRAD_GATHER_FORMATS)
    copies = GRAD_GATHER_COPIES if bwd in RHT_FORMATS else 1
    return SpFp8(dtype_bytes(fwd) if fwd else 0.0, copies * dtype_bytes(bwd) if bwd else 0.0,
                 scaling == "current" or fwd in RHT_FORMATS)


def amax_reduce(name: str, module: str = "out", forward_only: bool = True) -> Comm:
    """The amax all-reduce of current scaling with sequence parallelism: 4 bytes, MAX over
    the TP group (``Float8CurrentScalingQuantizer`` ``with_amax_reduction``)."""
    return Comm(f"{name}{AMAX_REDUCE_SUFFIX}", CollectiveKind.ALL_REDUCE, AMAX_REDUCE_BYTES,
                "tp", module, forward_only=forward_only)
