"""Decode attention cores priced for a block of batch sizes at once, to the bit.

The attention core is the one item of a dense decode skeleton that ``batched_step`` still
built and priced per step, and the only item a re-pricing at another context changes
(``priced_step``): ~450,000 cores over ``validate --published``'s serving rows, ~17 µs
each (~10 µs building the op, ~7 µs pricing it; 2026-12-07, twenty-second session), about
a tenth of the serving rows' CPU.

At one context, between the batch sizes of one configuration only the call's ``batch``
changes (``AttnShape``: heads, head sizes, ``kv_len`` = context + 1, dtype and window are
the layer's). The two decode kernels the template's cost-model chain prices are
arithmetic in it:

* the fused kernel's split-KV path (``attention_impl._fused_gpu`` where ``q_len x group <
  Br``: FlashDecoding, one item per K/V head and key split), whose block terms do not
  read the batch (``attention_impl._block_pair``);
* TensorRT-LLM's masked MHA (``decode_attention.masked_mha_cost``), where the engine's
  rule picks it (``GenerationAttention.picks_masked_mha``: XQA's CTA gate reads the batch).

So a block's cores at one context are priced in one numpy pass doing the scalar code's
IEEE operations on the same operands in the same order (``max`` as ``np.maximum``: the
operands are finite), the B-independent terms computed by the scalar functions
themselves. Covered: ``KernelCostModel`` with a fused implementation under the
engine-attention rule (``EngineAttentionModel``) and the wrappers that leave an attention
op as it is (MoE kernels, a fixed GEMM tactic, weight-only GEMVs); anything else
(the eager and Ascend implementations, a non-split grid) keeps the per-step path. Each
table is checked against the per-step path (``StepSimulator.attention_time``) at the
first and last batch size of the block its cost model prices; a mismatch turns the
configuration back to the per-step path. ``tests/test_batched_attention.py`` compares
every batch size of several configurations and contexts with ``==``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from xpusim.sim.cost.attention_blocks import bwd_prologue_bytes_per_item, l2_bytes_per_s
from xpusim.sim.cost.attention_hopper import out_bytes
from xpusim.sim.cost.attention_impl import (
    ASCEND,
    SEQ_PARALLEL_AUTOTUNED_BWD,
    AttnShape,
    KernelCostModel,
    _block_pair,
    shape_of,
    tiles,
)
from xpusim.sim.inference.decode_attention import (
    XQA_MIN_BLOCK_FACTOR,
    EngineAttentionModel,
    GenerationAttention,
    masked_mha_bytes,
    masked_mha_ops,
)
from xpusim.sim.inference.gemm_tactic import FixedTacticModel
from xpusim.sim.inference.kvcache import in_kv_format
from xpusim.sim.inference.moe_gemm import MoeGemmModel
from xpusim.sim.inference.priced_step import StepOpTimes
from xpusim.sim.inference.weight_only import WeightOnlyGemvModel
from xpusim.sim.ir import AttentionShape, OpKind, dtype_bytes
from xpusim.sim.workloads.transformer import Sharding, attention_core_op


def block_core_times(sim: Any, batch: Any, layer: int, lo: int, hi: int) -> list[float] | None:
    """The attention core of ``layer`` at ``batch``'s context for each batch size ``lo`` ..
    ``hi`` under ``batch``'s cost model (``sim.attention_time``'s floats; values at batch
    sizes another cost model prices are not read), or None where this module does not
    cover the chain or the kernel, or the check at the block's ends fails."""
    model = sim._cost_model(batch).inner
    while type(model) in (MoeGemmModel, FixedTacticModel, WeightOnlyGemvModel):
        model = model.inner  # each leaves an attention op to its inner model as it is
    rule: tuple[GenerationAttention, Any] | None = None
    if type(model) is EngineAttentionModel:
        rule, model = (model.rule, model.device), model.inner
    if type(model) is not KernelCostModel:
        return None
    ends = model_ends(sim, batch, lo, hi)
    shape = _call(sim, _at(batch, ends[0]), layer)
    if shape is None or shape.q_len != 1:
        return None
    bs = np.arange(lo, hi + 1, dtype=np.float64)
    times = _fused_split(model, shape, bs)
    if times is None:
        return None
    if rule is not None:
        masked = _masked_rows(rule[0], shape, rule[1].matrix_cores, bs)
        if bool(masked.any()):
            times = np.where(masked, _masked_mha(rule[1], shape, rule[0].kv_cache, bs), times)
    table: list[float] = times.tolist()
    for b in ends:  # the per-step path at the block's ends (this cost model's)
        edge = _at(batch, b)
        if table[b - lo] != sim.attention_time(StepOpTimes(sim._cost_model(edge).inner), edge,
                                               layer):
            return None
    return table


def model_ends(sim: Any, batch: Any, lo: int, hi: int) -> tuple[int, int]:
    """The first and the last batch size of ``lo`` .. ``hi`` (which holds ``batch``'s)
    priced by ``batch``'s cost model (``StepSimulator.model_key``), looked for from each
    end: the blocks' checks run there."""
    key = sim.model_key(batch)
    return (next(b for b in range(lo, hi + 1) if sim.model_key(_at(batch, b)) == key),
            next(b for b in range(hi, lo - 1, -1) if sim.model_key(_at(batch, b)) == key))


def _at(batch: Any, sequences: int) -> Any:
    return type(batch)(float(sequences), batch.q_len, batch.context, batch.phase, batch.dummies)


def _call(sim: Any, batch: Any, layer: int) -> AttnShape | None:
    """The attention call of ``layer``'s core at ``batch`` (built as
    ``StepSimulator.attention_time`` builds it), when it is a one-token forward call whose
    shape has ``batch``'s sequences as its batch; else None."""
    op = in_kv_format(attention_core_op(
        sim.spec, _step_shape(sim, batch), Sharding(tp=sim.plan.tp, ep=sim.plan.ep), sim.dtype,
        layer), sim.dtype)
    s = op.shape
    if (op.kind != OpKind.ATTENTION or not isinstance(s, AttentionShape) or s.backward
            or s.cp != 1 or s.batch != batch.sequences):
        return None
    return shape_of(op)


def _step_shape(sim: Any, batch: Any) -> Any:
    from xpusim.sim.inference.lowering import step_shape  # lowering imports batched_step

    return step_shape(batch, sim.plan)


def _fused_split(model: KernelCostModel, shape: AttnShape, bs: np.ndarray) -> np.ndarray | None:
    """``attention_time_s(device, shape, impl, "fwd")`` at each batch of ``bs``: the fused
    kernel's split-KV path of ``_fused_gpu`` (None: another implementation or grid)."""
    impl, device, pass_ = model.attention_impl, model.device, "fwd"
    if impl in ("standard", "attention_pytorch", "fused_softmax") or impl in ASCEND:
        return None
    impl = SEQ_PARALLEL_AUTOTUNED_BWD.get(impl, impl)
    br, bc = tiles(impl, device, shape.head_dim, pass_, shape.dtype, shape.causal)
    group = shape.heads / shape.kvh
    if not shape.q_len * group < br:
        return None  # the query-block grid (place_items): not this path
    br = max(16, math.ceil(shape.q_len * group / 16) * 16)
    full, _ = _block_pair(device, impl, shape, pass_, br, bc)
    eff = device.efficiency
    elt = dtype_bytes(shape.dtype)
    sms = device.matrix_cores
    sm_bw = device.hbm_bandwidth * eff.memory_max / sms
    o_elt = out_bytes(impl, shape.dtype)
    io_rows = br * (shape.head_dim * elt + shape.vd * o_elt) * 1.0
    # The backward's prologue bytes: 0 for a forward whatever the batch.
    io_s = io_rows / sm_bw + bwd_prologue_bytes_per_item(
        impl, pass_, shape.batch, shape.heads, shape.q_len, shape.kv_len, shape.head_dim,
        shape.vd, shape.dtype, br) / (l2_bytes_per_s(device) / sms)
    groups = bs * shape.kvh
    kv_blocks = math.ceil(shape.kv_span / bc)
    total = groups * kv_blocks * full.block_s
    pipeline_s = total / sms + full.block_s + io_s
    # attention_items.fused_hbm_bytes (forward)
    bh = bs * shape.heads
    q_bytes = bh * shape.q_len * (shape.head_dim * elt + shape.vd * o_elt)
    kv_bytes = bs * shape.kvh * shape.kv_span * (shape.head_dim + shape.vd) * elt
    hbm_s = (q_bytes + kv_bytes) / (device.hbm_bandwidth * eff.memory_max)
    overhead_s = 1 * eff.launch_overhead_s  # one kernel forward
    result: np.ndarray = np.maximum(pipeline_s, hbm_s) + overhead_s
    return result


def _masked_rows(rule: GenerationAttention, shape: AttnShape, sms: int,
                 bs: np.ndarray) -> np.ndarray:
    """``rule.picks_masked_mha`` at each batch of ``bs``."""
    if rule.kernel == "fused":
        return np.zeros(bs.shape, dtype=bool)
    if rule.kernel == "masked-mha":
        return np.ones(bs.shape, dtype=bool)
    group = shape.heads / shape.kvh
    has_cubin = group in rule.xqa_group_sizes and shape.head_dim in rule.xqa_head_dims
    enough_ctas = shape.kvh * bs * XQA_MIN_BLOCK_FACTOR >= sms
    result: np.ndarray = ~(has_cubin & enough_ctas)
    return result


def _masked_mha(device: Any, shape: AttnShape, kv_cache: str, bs: np.ndarray) -> np.ndarray:
    """``masked_mha_cost(device, shape, kv_cache).time_s`` at each batch of ``bs``."""
    eff = device.efficiency
    fp32_ops, issued_ops, fp32_per_s, issue_per_s = masked_mha_ops(device, shape, kv_cache, bs)
    compute_s = np.maximum(fp32_ops / fp32_per_s, issued_ops / issue_per_s)
    kv_bytes, q_bytes = masked_mha_bytes(shape, bs)
    memory_s = (kv_bytes + q_bytes) / device.main_memory_rate(eff.memory_max)
    result: np.ndarray = np.maximum(compute_s, memory_s) + eff.launch_overhead_s
    return result


__all__ = ["block_core_times", "model_ends"]
