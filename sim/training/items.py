"""What a training slot is made of: ops (each with its ``Role``) and collectives on the
plan's named groups, plus what the plan fixes for one rank's slots.

The op roles (sim.ir.Role: output module, saved tensors, weight read) come from the
builders (sim.workloads.transformer and sim.training.layers); the rules that read them
live in sim.training.saved (memory) and sim.training.backward (backward, recompute).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from xpusim.sim.ir import (
    MAIN_MEMORY,
    NO_ROLE,
    CollectiveKind,
    ElementwiseShape,
    Op,
    OpKind,
    Role,
    Unit,
    dtype_bytes,
    is_low_precision,
)
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan


@dataclass(frozen=True)
class Comm:
    """A collective on a named group of the plan ("tp", "ep", "ep_inter", "ep_intra", "cp",
    "ep_tp", "dp_dense", "dp_expert")."""

    name: str
    kind: CollectiveKind
    nbytes: float
    group: str
    module: str = "out"  # module of its output (sim.ir.Role.module)
    algorithm: str = "auto"
    # Bytes of the backward's mirrored collective when they differ from ``nbytes`` (an
    # FP8 sequence-parallel gather whose gradient reduce-scatter stays bf16, or the
    # reverse; sim.training.lowprec ``sp_fp8_collectives``); None: ``nbytes``.
    grad_nbytes: float | None = None
    # The backward's mirrored collective is preceded by a 4-byte MAX all-reduce of the
    # cast's amax over the group (current scaling; lowprec ``amax_reduce``).
    grad_amax: bool = False
    forward_only: bool = False  # no backward of its own (an amax all-reduce)


Item = Op | Comm

DROPOUT_MASK_BYTES = 1.0  # a byte per element (torch bool / uint8 mask)


@dataclass(frozen=True)
class SlotContext:
    """What the plan fixes for one rank's slots: tokens, sharding and routing."""

    spec: ModelSpec
    plan: ParallelPlan
    tokens: float  # tokens of one micro-batch on this rank: mbs * seq / cp
    # layer -> this rank's expert load / mean (the hottest rank's when representative)
    hot: dict[int, float]
    # layer -> the hottest EP rank's load / mean: the all-to-all waits for it
    hot_comm: dict[int, float]
    ep_spans_nodes: bool
    # The device's block-scaled GEMMs need their scales swizzled first (NVIDIA cuBLASLt;
    # sim.training.lowprec): set from the system by chunks.slot_context.
    scale_swizzle: bool = False
    # The device's FP8 GEMMs take any operand layout, so a per-tensor FP8 cast writes one
    # copy (hwprofiles [kernels] non_tn_fp8_gemm; sim.training.lowprec): from the system.
    non_tn_fp8: bool = False

    @property
    def b(self) -> float:
        """Bytes per element of activations (and of the collectives that move them)."""
        return dtype_bytes(act_dtype(self.plan))


def act_dtype(plan: ParallelPlan) -> str:
    """The dtype of activations, norms, attention and the collectives that carry them.

    A low-precision recipe (``plan.dtype`` fp8, mxfp8, hif8) casts only the inputs of
    the linear layers' GEMMs: TransformerEngine's FP8 training keeps activations,
    normalisations, softmax/attention and communication in bf16 (NVIDIA TransformerEngine
    docs, "Using FP8 with Transformer Engine"; Micikevicius et al. arXiv:2209.05433 s4),
    as do the NeMo/Megatron FP8 runs of the validation corpus. So are the hidden states
    between stages: a stage's saved input and its pipeline sends (Megatron-Core
    ``p2p_communication.py`` allocates them in ``config.pipeline_dtype``, bf16 in the NeMo /
    Megatron-Bridge recipes).
    """
    return "bf16" if is_low_precision(plan.dtype) else plan.dtype


def gemm_dtype(plan: ParallelPlan, layer: int, layers: int) -> str:
    """The dtype of the linear GEMMs of transformer layer ``layer`` (of ``layers``; MTP
    layers, numbered from ``layers``, follow the recipe): ``plan.dtype``, or the activation
    dtype in a layer the plan keeps in bf16 (``ParallelPlan.bf16_layers_at_start`` /
    ``_at_end``: Megatron-Core ``is_first_last_bf16_layer``)."""
    if layer < plan.bf16_layers_at_start or layers - plan.bf16_layers_at_end <= layer < layers:
        return act_dtype(plan)
    return plan.dtype


# Every cast to a low-precision format is named ``<name>_quant`` (lowprec.is_forward_cast).
CAST_SUFFIX = "_quant"


def quantize_op(name: str, numel: float, fmt: str, src: str = "bf16",
                role: Role = NO_ROLE, usages: int = 1, transpose: bool = False) -> Op:
    """The cast of a ``src`` tensor to ``fmt`` before a low-precision GEMM: a memory-bound
    vector pass that reads ``src``, finds the scale (amax over the tensor, or per block for
    MX/NVFP4) and writes ``usages`` copies of the ``fmt`` elements with their block scales
    (~3 FLOPs/element: abs-max, scale, convert). TransformerEngine fuses it with the
    producer only where a fused norm/activation kernel exists; it is priced here as its
    own pass. ``transpose``: the second copy is a transpose (per-tensor FP8 on a TN-only
    device: TransformerEngine's cast-transpose kernel, ``sim.training.lowprec``)."""
    nbytes = numel * (dtype_bytes(src) + usages * dtype_bytes(fmt))
    return Op(f"{name}{CAST_SUFFIX}", OpKind.ELEMENTWISE, 3.0 * numel,
              MappingProxyType({MAIN_MEMORY: nbytes}), src, Unit.VECTOR,
              ElementwiseShape(numel, transpose), role)
