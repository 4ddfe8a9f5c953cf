"""Unfused passes of Megatron-Core's grouped experts (``TEGroupedMLP``) that the fused
expert ops of ``workloads.transformer._mlp`` do not carry.

Two features of an expert MLP, and the ``alltoall`` dispatcher's second permutation, leave
Megatron-Core's fused kernels and cost HBM passes of their own (Megatron-LM ``megatron/core/transformer/moe/experts.py`` TEGroupedMLP and
``megatron/core/fusions/fused_bias_geglu.py``, as stored in the search corpus):

- **Clamped GLU inputs** (``activation_func_clamp_value``, gpt-oss's 7.0 with the
  quick-GELU GLU). ``weighted_bias_quick_geglu_impl`` chunks the fc1 output, clamps
  each half with its own ``torch.clamp`` and ``torch.cat``-s them back *before* the
  fused (``jit_fuser``) activation: 2 + 2 element passes of each half for the clamps and
  4 for the cat, i.e. a read and a write of both halves twice (8 x ffn elements per
  routed token). The activation is inside the ``moe_act`` checkpoint, so a selective
  recompute of ``act`` re-runs them; without it autograd keeps the concatenated input
  (both halves) for the fused function's backward.
- **Sorting the received tokens by local expert** (the ``alltoall`` dispatcher,
  ``plan.moe_dispatcher``). ``MoEAlltoAllTokenDispatcher`` permutes the tokens by
  expert before the all-to-all (``permute``), and after it, when a rank holds more than
  one local expert, sorts the received chunks (ordered by source rank, then expert) by
  local expert: ``dispatch_postprocess`` calls ``sort_chunks_by_idxs(...,
  sort_input_by_local_experts, fused=moe_permute_fusion)`` ("Permutation 2"), and
  ``combine_preprocess`` reverses it before the combine (``restore_output_by_local_experts``,
  "Unpermutation 2") (Megatron-LM ``megatron/core/transformer/moe/token_dispatcher.py``
  @ 0014f13713bfa38a8bab4ae11edd6917d35165ce; skipped only for one local expert or the
  drop-and-pad path, which the simulator does not model). Fused or not, each is a read
  and a write of every received token copy (``moe_utils.sort_chunks_by_idxs``:
  TransformerEngine's ``fused_sort_chunks_by_index[_with_probs]`` with
  ``moe_permute_fusion``, else ``torch.cat`` of the ``torch.split`` chunks; Megatron-LM
  ``megatron/core/transformer/moe/moe_utils.py`` @ e61c3841018f23cab2acffc0061da9fe332a68d2),
  the size of the simulator's ``permute``; their backward is the reverse sort (another
  such pass, as ``backward.py`` mirrors a memcpy). The ``flex`` dispatcher (DeepEP /
  HybridEP) has no such step: its dispatch sends each token once per rank and one
  permute expands it per local expert, which the simulator's ``permute`` already is.
- **Expert output bias** (``add_bias_linear``). fc2 is built with ``skip_bias_add=True``
  and ``TEGroupedMLP._apply_bias`` adds each local expert's bias scaled by the router
  probability in eager PyTorch: ``torch.cat([t + b * p for each expert])`` — per element
  of the fc2 output a write of ``b * p``, a read of ``t`` and of ``b * p`` and a write
  of the sum, then a read and a write by the cat (3 reads + 3 writes): two kernels per
  local expert and the cat, each its own launch (op) here. It runs outside
  the ``moe_act`` checkpoint (not recomputed by ``act``). fc1's bias is added inside
  TransformerEngine's GroupedLinear GEMM (``skip_bias_add=False``) and is not a pass.

The backward of each elementwise op follows the simulator's elementwise rule (2x the forward's
bytes, ``backward.py``). For the clamps + cat that is 16 vs ~15 bytes per element-pair
read in PyTorch's ``clamp_backward`` (mask compares, ``logical_and_``, ``where``) and the
chunk's backward cat; for the bias add it overstates PyTorch's mul/sum backward
(2 x 6 vs 8 element passes of the fc2 output).
"""

from __future__ import annotations

from xpusim.sim import ops
from xpusim.sim.ir import ElementwiseShape, GemmShape, MemcpyShape, Op, Role, Saved
from xpusim.sim.training.framework import framework_profile
from xpusim.sim.training.items import Item, SlotContext, act_dtype

# The alltoall dispatcher's "Permutation 2" and "Unpermutation 2" (module docstring).
SORT_CHUNKS = "moe_sort_chunks"
UNSORT_CHUNKS = "moe_unsort_chunks"


def megatron_grouped_experts(ctx: SlotContext) -> bool:
    """Whether the plan's experts run Megatron-Core's TEGroupedMLP: every framework but
    torchtitan's eager model code, which has its own expert module."""
    return not framework_profile(ctx.plan.framework).eager_elementwise


def clamp_op(act_numel: float, ctx: SlotContext) -> Op:
    """Clamp both GLU halves (``act_numel`` elements each) and concatenate them: read and
    write 2 x act_numel twice. Module "act": re-run by a selective recompute of it; its
    concatenated output (both halves) is kept for the fused activation's backward."""
    both = 2.0 * act_numel
    role = Role("act", (Saved(both, "act"),), expert=True)
    return ops.elementwise("experts_clamp", both, act_dtype(ctx.plan), 1.0, inputs=2, outputs=2,
                           role=role)


def bias_ops(out_numel: float, experts: float, ctx: SlotContext) -> list[Op]:
    """fc2's bias, as ``_apply_bias`` launches it over ``out_numel`` output elements: per
    local expert a ``b * p`` (writes its rows) and a ``t + b * p`` (reads 2, writes 1),
    then one cat (reads and writes all): 3 reads + 3 writes an element, 2 x experts + 1
    kernels, each its own op (launch) as in eager PyTorch."""
    n = max(1, round(experts))
    rows = out_numel / n
    dtype, role = act_dtype(ctx.plan), Role("experts", expert=True)
    out: list[Op] = []
    for i in range(n):
        out.append(ops.elementwise(f"experts_bias_scale{i}", rows, dtype, 1.0, inputs=0,
                                   role=role))
        out.append(ops.elementwise(f"experts_bias_add{i}", rows, dtype, 1.0, inputs=2,
                                   role=role))
    out.append(ops.elementwise("experts_bias_cat", out_numel, dtype, 0.0, role=role))
    return out


def sorts_chunks(ctx: SlotContext, local_experts: float) -> bool:
    """Whether the dispatcher sorts the received tokens by local expert (and back): the
    ``alltoall`` dispatcher of Megatron-Core's MoE layer with more than one local expert."""
    return (megatron_grouped_experts(ctx) and ctx.plan.moe_dispatcher == "alltoall"
            and local_experts > 1)


def sort_chunks_op(name: str, permute: Op) -> Op:
    """A pass over the received token copies as large as ``permute`` (same bytes, role)."""
    shape = permute.shape
    assert isinstance(shape, MemcpyShape)
    return ops.memcpy(name, shape.nbytes, permute.role)


def _local_experts(items: list[Item]) -> float:
    for it in items:
        if isinstance(it, Op) and it.name == "experts_up" and isinstance(it.shape, GemmShape):
            return it.shape.batch
    return 0.0


def with_expert_passes(items: list[Item], ctx: SlotContext) -> list[Item]:
    """The expert items with Megatron's unfused clamp (before ``experts_act``) and fc2
    bias (after ``experts_down``) passes, and the ``alltoall`` dispatcher's sort of the
    received tokens by local expert (after ``permute``) and its reverse (before
    ``unpermute``), where the model and plan have them."""
    spec = ctx.spec
    clamp, bias = spec.swiglu_limit > 0, spec.linear_bias
    sort = sorts_chunks(ctx, _local_experts(items))
    if not (clamp or bias or sort) or not megatron_grouped_experts(ctx):
        return items
    out: list[Item] = []
    for it in items:
        shape = it.shape if isinstance(it, Op) else None
        if clamp and it.name == "experts_act" and isinstance(shape, ElementwiseShape):
            out.append(clamp_op(shape.numel, ctx))
        if sort and it.name == "unpermute" and isinstance(it, Op):
            out.append(sort_chunks_op(UNSORT_CHUNKS, it))
        out.append(it)
        if sort and it.name == "permute" and isinstance(it, Op):
            out.append(sort_chunks_op(SORT_CHUNKS, it))
        if bias and it.name == "experts_down" and isinstance(shape, GemmShape):
            out += bias_ops(shape.m * shape.n * shape.batch, shape.batch, ctx)
    return out
