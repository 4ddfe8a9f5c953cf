"""NVFP4 training: TransformerEngine's ``NVFP4BlockScaling`` recipe as Megatron-Bridge runs it.

**What runs in FP4.** Megatron-Bridge's ``bf16_with_nvfp4_mixed`` (src/megatron/bridge/
training/mixed_precision.py: ``fp4 = "e2m1"``, ``fp4_recipe = "nvfp4"``, ``fp8 = None``,
``fp8_param_gather = False``) is what its performance scripts run for ``nvfp4``
(scripts/performance ``get_precision_config``: the recipe unmodified, no
``first_last_layers_bf16``). Every TransformerEngine linear runs its three GEMMs (fprop,
dgrad, wgrad) on NVFP4 operands, E2M1 elements with one E4M3 scale per 16 and an fp32
scale per tensor (``LOW_PRECISION["nvfp4"]``), at the device's FP4 tensor-core rate; the
output layer and the MoE router are not TE linears and stay bf16, as do attention,
norms and the collectives' activations (``sim.training.layers._HIGH_PRECISION_WEIGHTS``,
``items.act_dtype``). The NVFP4 paper (arXiv 2509.25149) keeps some linear layers in
BF16, the final blocks being the most sensitive (its appendix E.2: loss converges "when
the linear layers in the last four blocks remain in BF16"); Megatron-Core does that with
``first_last_layers_bf16`` / ``num_layers_at_end_in_bf16`` only where a recipe asks
(``nemotron_3_super_bf16_with_nvfp4_mixed``: the last 14), not in the Llama performance
recipes: ``--bf16-layers-at-start`` / ``--bf16-layers-at-end`` (default 0) keep them
(``items.gemm_dtype``). The weight cast and the cached NVFP4 copies below count every
local weight, those of kept layers (and, as for FP8 before NVFP4, the embedding and
output layer) too: an overcount by their share.

**The casts** (TransformerEngine ``NVFP4BlockScaling.__post_init__``, common/recipe/
__init__.py: inputs ``random_hadamard_transform``; weights ``fp4_2d_quantization``;
gradients ``random_hadamard_transform`` and ``stochastic_rounding``).
``NVFP4Quantizer::quantize_impl`` (pytorch/csrc/quantizer.cpp @ ad3f651f) quantises a
bf16 activation input or output gradient needed in both usages with three kernels:

1. ``nvte_hadamard_transform_amax``: one read of the input, giving the rowwise amax and
   the amax of RHT(x^T) (the per-tensor scales; the amax is always computed, so the
   norm never supplies it as under FP8 current scaling);
2. ``nvte_quantize_v2`` of the rowwise usage: reads the input, writes E2M1 + E4M3
   scales (0.5 + 1/16 B per element);
3. ``nvte_hadamard_transform_cast_fusion_columnwise`` (bf16, rows % 64, cols % 128:
   every training shape here): reads the input, applies the 16x16 random Hadamard
   transform and writes the transposed columnwise copy for the weight gradient (stochastic
   rounding on gradients: in-kernel Philox; the Hadamard multiply on the tensor cores,
   CUTLASS, 32 FLOPs per element, not priced against the memory pass).

Each is a memory-bound pass (``rht_cast_ops``): 3 reads of 2 B and 2 x (0.5 + 1/16) B
written, 7.125 B per element in 3 launches. The columnwise write is not priced at the
device's ``cast_transpose_fraction`` (that fraction is TE's warp-tiled FP8
cast-transpose kernel on Hopper; this one is a TMA/CUTLASS kernel on Blackwell, where no
profile has the fraction). Weights (``weight_cast_ops``, once per step after the
optimizer, TE's ``is_first_microbatch`` cache): ``nvte_compute_amax_with_config`` then one
2D (16x16-block) quantize writing both usages (``quantize_transpose_nvfp4.cuh``).

**Sequence parallelism** (TransformerEngine docs, "NVFP4: Distributed training": "For
tensors which are gathered - input and gradient in sequence parallelism, amax reduction
is performed before quantization ... To make quantized all-gather possible, all nodes
must use the same s_global"): the forward input gather of a column-parallel layer and its
wgrad re-gather move NVFP4 bytes (as MXFP8's rowwise / columnwise gathers,
``sim.training.lowprec``), and the row-parallel output-gradient gather moves both usages
(``GRAD_GATHER_COPIES``: dgrad and wgrad each need one, and the quantizer is set for
both; INFERRED from TE's quantize-then-gather of a high-precision tensor with the
quantizer's usages, ``_all_gather_nvfp4`` not re-read here), each after a MAX all-reduce of
the amax over TP (``with_amax_reduction``; priced as the FP8 one, 4 bytes).

**Parameters** stay bf16 (``fp8_param_gather = False``, no FP4 primary weights), so the
distributed optimizer's all-gather moves 2 B per parameter and a stage's input and
pipeline sends are bf16 (``param_dtype``); TE keeps the step's NVFP4 weight copies
(both usages) across micro-batches (``Linear`` ``_fp8_workspaces`` under
``is_first_microbatch``): ``weight_bytes_per_param`` counts them with the bf16 weights.
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

NVFP4 = "nvfp4"
# Formats whose activation and gradient casts run the RHT columnwise pass (above).
RHT_FORMATS = frozenset({NVFP4})
# Formats whose parameters stay bf16 (no FP4 primary weights; module docstring).
BF16_PARAM_FORMATS = frozenset({NVFP4})
PARAM_DTYPE = "bf16"
AMAX_SUFFIX = "_amax"
RHT_SUFFIX = "_rht"
# Copies of the output gradient the sequence-parallel gather moves (rowwise + columnwise).
GRAD_GATHER_COPIES = 2
COPIES = 2  # rowwise and columnwise usages of a weight, activation or gradient


def amax_op(name: str, numel: float, src: str = "bf16", role: Role = NO_ROLE) -> Op:
    """The per-tensor amax pass before an NVFP4 cast: reads the ``src`` tensor once
    (1 FLOP per element), named ``<name>_amax_quant`` (a cast: ``lowprec.is_forward_cast``)."""
    return Op(f"{name}{AMAX_SUFFIX}{CAST_SUFFIX}", OpKind.ELEMENTWISE, numel,
              MappingProxyType({MAIN_MEMORY: numel * dtype_bytes(src)}), src, Unit.VECTOR,
              ElementwiseShape(numel), role)


def rht_cast_ops(name: str, numel: float, fmt: str, role: Role = NO_ROLE,
                 src: str = "bf16") -> list[Op]:
    """The three kernels casting a ``src`` activation input or output gradient of
    ``numel`` elements into both NVFP4 usages (module docstring): the RHT amax pass, the
    rowwise cast (``<name>_quant``) and the fused RHT columnwise cast
    (``<name>_rht_quant``), each reading the input once."""
    return [amax_op(name, numel, src, role),
            quantize_op(name, numel, fmt, src, role),
            quantize_op(f"{name}{RHT_SUFFIX}", numel, fmt, src, role)]


def weight_cast_ops(numel: float, dtype: str) -> list[Op]:
    """The once-per-step cast of the ``numel`` local weights into ``dtype``: for NVFP4 an
    amax pass then one 2D-block cast writing both usages (module docstring); for other
    formats one cast writing one copy (the rule before NVFP4)."""
    if dtype not in RHT_FORMATS:
        return [quantize_op("weights", numel, dtype)]
    return [amax_op("weights", numel), quantize_op("weights", numel, dtype, usages=COPIES)]


def param_dtype(dtype: str) -> str:
    """The dtype a ``dtype`` run stores its parameters and stage tensors in: bf16 for
    NVFP4 (module docstring), else ``dtype`` (FP8 recipes with FP8 parameters)."""
    return PARAM_DTYPE if dtype in BF16_PARAM_FORMATS else dtype


def weight_bytes_per_param(dtype: str) -> float:
    """Resident weight bytes per parameter of a ``dtype`` run: NVFP4 keeps its bf16
    parameters plus the step's cached NVFP4 copies in both usages (module docstring)."""
    if dtype not in BF16_PARAM_FORMATS:
        return dtype_bytes(dtype)
    return dtype_bytes(PARAM_DTYPE) + COPIES * dtype_bytes(dtype)
