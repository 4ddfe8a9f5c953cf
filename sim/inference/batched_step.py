"""Decode skeletons of a dense model priced for a block of batch sizes at once, to the bit.

A serving run prices one decode skeleton per batch size B it meets (~1,400 per
configuration in TensorRT-LLM 0.17's rows), each by lowering the forward (``step_blocks``,
~140 µs) and pricing its ~15 distinct items (~180 µs): a third of ``validate
--published``'s CPU (docs/performance.md, nineteenth session). Between two batch sizes of
one configuration only numbers change: measured over B = 1..4,096 (llama-3.1-70b TP8 H100
FP8, llama-3.1-8b TP1 H200) and 1..2,048 (gpt-j-6b, llama-2-70b, llama-3.3-70b TP2), the
distinct items, their order and run counts are the same, and every number of every item
(FLOPs, bytes, shapes, buffer sizes) is ``v(1) + (B - 1)·(v(2) - v(1))`` exactly (integers below 2**53).
An MoE layer's routed load is not (padding, experts touched), so an MoE layer's items
after its router (top-k, permute, the expert GEMMs, unpermute, shared experts) are built
at each step's load and priced per step (``_moe_items``, twentieth session: 39,442 MoE
decode skeletons were ~16 s of ``validate --published``'s CPU lowered one at a time); the
rest of an MoE step (attention, router, norms, LM head) is the dense template's. Where a
block's sizes route to one fixed expert count (all experts touched), those items are
affine in B again and the block's device sums are read from a table like a dense
model's (``batched_moe``, ``_moe_block``; twenty-fourth session).

So a ``DecodeTemplate`` lowers B = 1 and 2 once per configuration, and a block of
``BLOCK`` batch sizes is priced in one numpy pass for the items the roofline prices (GEMMs
of the generic path, norms, element-wise ops, softmax, embedding lookups): the same IEEE
operations on the same operands in the same order as ``RooflineModel._terms`` (``max`` /
``min`` as ``np.maximum`` / ``np.minimum``, ``math.ceil`` as ``np.ceil`` on integers), and
``gemm_pipeline.pipelined_time`` called per element (numpy 2.4's SIMD ``power`` is 1 ulp
off libm's ``pow`` near the ridge: measured, 18 of 20,480 GEMM prices differed). The
attention core is built and priced per step as ``StepSimulator._repriced`` does, and the
collectives through the configuration's collective pricer (their buffers from the
template), a block's sizes at once where ``network.block_pricer`` covers them. Each item's run count and the entries' order come from the template, so the
``PricedStep`` is the one ``StepSimulator._priced_step`` builds.

Guards: the MoE items must be one run of the template's distinct items at B = 1 and 2
(equal item by item, at the same place: one MoE layer kind, no expert parallelism), and a
step whose MoE items differ in number keeps the per-step path. A configuration
qualifies only when the cost model is a chain this module repeats
(``KernelCostModel`` under the engine-attention and weight-only wrappers, neither of which
touches these items), no item needs a term left out here (cache tier, named or fixed-tactic
GEMM kernels, weight-only GEMVs, on-chip byte levels), and every template number is an
integer. Each block is checked against the per-step path at its first and last batch size
(``PricedStep`` equality): a mismatch turns the configuration back to the per-step path.
``tests/test_batched_step.py`` compares every batch size of several configurations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from xpusim.sim.cost.attention_impl import KernelCostModel
from xpusim.sim.cost.roofline import RooflineModel
from xpusim.sim.inference.batched_attention import block_core_times, model_ends
from xpusim.sim.inference.batched_moe import affine_moe_items, moe_run, saturated_from
from xpusim.sim.inference.batched_moe import moe_items as _moe_items
from xpusim.sim.inference.block_roofline import price as _price
from xpusim.sim.inference.decode_attention import EngineAttentionModel
from xpusim.sim.inference.priced_step import (
    PricedStep,
    StepOpTimes,
    distinct_items,
    shared_table,
)
from xpusim.sim.inference.weight_only import WEIGHT_ONLY_DTYPES, WeightOnlyGemvModel
from xpusim.sim.ir import (
    MAIN_MEMORY,
    Collective,
    ElementwiseShape,
    GemmShape,
    Op,
    OpKind,
    Unit,
)
from xpusim.sim.network.block_pricer import block_times
from xpusim.sim.network.pricer import CollectivePricer
from xpusim.sim.workloads.transformer import CommNeed

# Batch sizes priced per numpy pass: block k holds k·BLOCK + 1 .. (k + 1)·BLOCK. A pass
# costs ~1 ms for a whole block; two per-step skeletons check it (its ends).
BLOCK = 256
# Op kinds the roofline prices here (with the unit and shape guards of ``_vector_item``).
_ROOFLINE_KINDS = frozenset({OpKind.GEMM, OpKind.NORM, OpKind.ELEMENTWISE, OpKind.SOFTMAX,
                             OpKind.EMBEDDING})
_EXACT = 2.0 ** 53  # integers up to here are exact in float64
# An MoE layer's items after the router (``_moe_block``): also the router's top-k (a
# vector op of its own kind) and the permute/unpermute copies (DMA), which
# ``RooflineModel._terms`` prices as it does the others (``_price``'s DMA branch).
_MOE_KINDS = _ROOFLINE_KINDS | {OpKind.ROUTING, OpKind.MEMCPY}


@dataclass(frozen=True)
class _Item:
    """One distinct item of the template: the item at B = 1, its runs and first layer, and
    per number it carries (FLOPs, main-memory bytes, GEMM rows; a collective's buffer) its
    value at B = 1 and its step per unit of B."""

    item: Op | CommNeed
    count: int
    layer: int
    grows: dict[str, tuple[float, float]]
    # An MoE layer's item after its router (``_moe_items``): built and priced per step.
    fresh: bool = False

    def at(self, name: str, b: Any) -> Any:
        base, step = self.grows[name]
        return base + (b - 1) * step


@dataclass
class DecodeTemplate:
    """The decode skeletons of one configuration (``StepMemo.batched``): the template
    (None until first asked), ``off`` once this configuration keeps the per-step path,
    and the priced blocks."""

    items: tuple[_Item, ...] | None = None
    off: bool = False
    # Priced blocks by (index, cost-model key): a block may straddle the largest batch
    # run in a CUDA graph, on either side of which the launch overhead differs.
    blocks: dict[tuple[int, tuple[bool, bool]], list[list[float] | None]] = field(
        default_factory=dict)
    # Attention cores by (block, cost-model key, context, layer): the block's batch sizes at
    # one context (``batched_attention``; None: that block keeps the per-step path).
    cores: dict[tuple[int, tuple[bool, bool], float, int], list[float] | None] = field(
        default_factory=dict)
    # Device sums by (block, cost-model key, context): ``PricedStep.sums()`` of each of the
    # block's batch sizes at one context (``sums``; None: that block keeps the per-step path).
    sums_at: dict[tuple[int, tuple[bool, bool], float],
                  list[tuple[float, float, float] | None] | None] = field(default_factory=dict)
    # An MoE template's items after the router over a block's sizes of one routed expert
    # count (``batched_moe``), by block: (the first such size, the items, affine from
    # there), None where they are not; and their prices from that size, by (block,
    # cost-model key).
    moe_fits: dict[int, tuple[int, tuple[_Item, ...]] | None] = field(default_factory=dict)
    moe_prices: dict[tuple[int, tuple[bool, bool]], list[np.ndarray] | None] = field(
        default_factory=dict)
    # The priced blocks' tables as arrays (``_block_sums``), by (index, cost-model key).
    arrays: dict[tuple[int, tuple[bool, bool]], list[np.ndarray | None]] = field(
        default_factory=dict)
    # Per cost-model key, the prices kept for its device across configurations (``_priced``).
    shared: dict[tuple[bool, bool], dict[Any, np.ndarray]] = field(default_factory=dict)
    # The collectives' block prices kept for the system (``_comm_prices``), once looked up.
    kept: dict[Any, dict[Any, Any]] = field(default_factory=dict)

    def _items_for(self, sim: Any, batch: Any) -> tuple[_Item, ...] | None:
        """The template's items when ``batch`` is a whole-sequence dense decode step the
        template covers on ``sim`` (built on the first such step; ``off`` when it cannot
        be), else None."""
        if (self.off or batch.phase != "decode" or batch.q_len != 1
                or batch.dummies != 0 or batch.context <= 0 or sim.plan.ep != 1
                or batch.sequences != int(batch.sequences)):
            return None
        if self.items is None:
            self.items = _template(sim, batch)
            if self.items is None:
                self.off = True
        return self.items

    def priced(self, sim: Any, batch: Any) -> PricedStep | None:
        """The ``PricedStep`` of ``batch`` (a ``StepBatch``) on ``sim`` (a
        ``StepSimulator``), or None where the per-step path must price it."""
        items = self._items_for(sim, batch)
        if items is None:
            return None
        b = int(batch.sequences)
        k = (b - 1) // BLOCK
        table = self.blocks.get((k, sim.model_key(batch)))
        if table is None:
            table = self._block(sim, batch, k)
            if table is None:
                return None
        return _step(sim, batch, items, table, b - 1 - k * BLOCK, self.core_time)

    def sums(self, sim: Any, batch: Any) -> tuple[float, float, float] | None:
        """``sim._priced_step(batch).sums()`` of a decode step, read from a table of its
        block's batch sizes at its context (``_block_sums``), or None where the per-step
        path must price it (an MoE step below its block's run of one routed expert count). A serving run asks for ~2 grid contexts of each of
        thousands of batch sizes: ~300,000 points over ``validate --published``'s serving
        rows, each ~60 µs of per-step Python (``_step``, ``PricedStep.sums``)."""
        if batch.sequences < 1 or self._items_for(sim, batch) is None:
            return None
        b = int(batch.sequences)
        k = (b - 1) // BLOCK
        key = (k, sim.model_key(batch), batch.context)
        if key not in self.sums_at:
            self.sums_at[key] = self._block_sums(sim, batch, k)
        table = self.sums_at[key]
        return None if table is None else table[b - 1 - k * BLOCK]

    def _block_sums(self, sim: Any, batch: Any, k: int
                    ) -> list[tuple[float, float, float] | None] | None:
        """Block ``k``'s device sums at ``batch``'s context under its cost model:
        ``PricedStep.sums`` element-wise over the block's batch sizes (each entry's
        ``count * t`` added to the running sums in entry order: the same IEEE operations
        on the same operands), from the block's prices and attention-core tables. Only
        where every entry has a table (every collective in ``block_times``; an MoE
        template's items after the router from the sizes where they are affine,
        ``_moe_block``, the rows below left None); checked against ``_step(...).sums()`` at
        the first and last size of the table."""
        items = self.items
        assert isinstance(items, tuple)
        mkey = sim.model_key(batch)
        prices = self.blocks.get((k, mkey))
        if prices is None:
            prices = self._block(sim, batch, k)
            if prices is None:
                return None
        lo, hi = k * BLOCK + 1, (k + 1) * BLOCK
        start, moe = lo, None
        if any(it.fresh for it in items):
            moe = self._moe_block(sim, batch, k)
            fit = self.moe_fits[k]
            if fit is None or moe is None:
                return None
            start = fit[0]
        columns = self._columns(sim, batch, k, prices, moe)
        if columns is None:
            return None
        total, attention, other = np.zeros(BLOCK), np.zeros(BLOCK), np.zeros(BLOCK)
        for count, column, is_attention in columns:
            part = count * np.asarray(column)
            total = total + part
            if is_attention:
                attention = attention + part
            else:
                other = other + part
        table: list[tuple[float, float, float] | None] = list(
            zip(total.tolist(), attention.tolist(), other.tolist(), strict=True))
        table[:start - lo] = [None] * (start - lo)  # below the MoE items' affine run
        for b in _ends(sim, batch, start, hi):
            step = _step(sim, _replace(batch, b), items, prices, b - lo, self.core_time)
            if step is None or table[b - lo] != step.sums():
                return None
        return table

    def _moe_block(self, sim: Any, batch: Any, k: int) -> list[np.ndarray] | None:
        """The prices of an MoE template's items after the router (in the template's order)
        at block ``k``'s sizes under ``batch``'s cost model: NaN below the block's run of
        one routed expert count, priced from there as the block's roofline items are
        (``_price`` on the affine numbers of ``batched_moe.affine_moe_items``); None where
        the block has no such run of at least three sizes or an item is not one
        ``_price`` covers."""
        if k not in self.moe_fits:
            self.moe_fits[k] = _moe_fit(sim, batch, k * BLOCK + 1, (k + 1) * BLOCK)
        fit = self.moe_fits[k]
        key = (k, sim.model_key(batch))
        if fit is None:
            return None
        if key not in self.moe_prices:
            start, items = fit
            roof = _roofline(sim._cost_model(batch).inner)
            assert roof is not None  # _template checked the chain
            shared = self._shared(key[1], roof)
            below = np.full(start - 1 - k * BLOCK, np.nan)
            self.moe_prices[key] = [
                np.concatenate((below, _priced(shared, roof, it, start, (k + 1) * BLOCK)))
                for it in items]
        return self.moe_prices[key]

    def _columns(self, sim: Any, batch: Any, k: int, prices: list[list[float] | None],
                 moe: list[np.ndarray] | None) -> list[tuple[int, Any, bool]] | None:
        """Each entry of block ``k``'s steps at ``batch``'s context as (runs, its times at
        the block's batch sizes, is an attention core): the block's prices (``prices``,
        as arrays kept per block: its tables at every context read them), the MoE items'
        (``moe``, in order), and the attention cores' tables (``core_time``'s); None where
        an entry has no table."""
        assert isinstance(self.items, tuple)
        mkey = sim.model_key(batch)
        arrays = self.arrays.get((k, mkey))
        if arrays is None:
            arrays = self.arrays[(k, mkey)] = [None if p is None else np.asarray(p)
                                               for p in prices]
        columns: list[tuple[int, Any, bool]] = []
        fresh = iter(moe or ())
        for it, p in zip(self.items, arrays, strict=True):
            if it.fresh:
                columns.append((it.count, next(fresh), False))
                continue
            if p is not None:
                columns.append((it.count, p, False))
                continue
            if isinstance(it.item, CommNeed):
                return None  # a collective priced per step
            ckey = (k, mkey, batch.context, it.layer)
            if ckey not in self.cores:
                self.cores[ckey] = block_core_times(sim, batch, it.layer, k * BLOCK + 1,
                                                    (k + 1) * BLOCK)
            core = self.cores[ckey]
            if core is None:
                return None
            columns.append((it.count, core, True))
        return columns

    def core_time(self, sim: Any, op_time: StepOpTimes, batch: Any, layer: int) -> float:
        """``sim.attention_time(op_time, batch, layer)``: from a table of the block's batch
        sizes at ``batch``'s context where ``batched_attention`` covers it (the same float;
        ``op_time`` prices ``batch``'s ops)."""
        if (batch.phase != "decode" or batch.q_len != 1 or batch.dummies != 0
                or batch.context <= 0 or sim.plan.ep != 1
                or batch.sequences != int(batch.sequences)):
            return sim.attention_time(op_time, batch, layer)
        b = int(batch.sequences)
        k = (b - 1) // BLOCK
        key = (k, sim.model_key(batch), batch.context, layer)
        if key not in self.cores:
            self.cores[key] = block_core_times(sim, batch, layer, k * BLOCK + 1,
                                               (k + 1) * BLOCK)
        table = self.cores[key]
        if table is None:
            return sim.attention_time(op_time, batch, layer)
        return table[b - 1 - k * BLOCK]

    def _shared(self, mkey: tuple[bool, bool], roof: RooflineModel) -> dict[Any, np.ndarray]:
        """The block prices kept for the device of ``roof`` (this template's model
        ``mkey``): ``shared_table`` by the device's ``repr`` (every field, floats exactly),
        taken once per model."""
        if mkey not in self.shared:
            self.shared[mkey] = shared_table("block_prices", repr(roof.device))
        return self.shared[mkey]

    def _block(self, sim: Any, batch: Any, k: int) -> list[list[float] | None] | None:
        """Block ``k``'s roofline prices under ``batch``'s cost model, checked at the
        first and last batch size of the block that model prices (None: turned back)."""
        assert isinstance(self.items, tuple)
        lo, hi = k * BLOCK + 1, (k + 1) * BLOCK
        if any(abs(it.at(n, float(hi))) >= _EXACT for it in self.items for n in it.grows):
            self.off = True
            return None
        key = sim.model_key(batch)
        ends = model_ends(sim, batch, lo, hi)
        roof = _roofline(sim._cost_model(batch).inner)
        assert roof is not None  # _template checked the chain
        shared = self._shared(key, roof)
        # Each item's prices as Python floats (``tolist``: the same values), read per step.
        table = [_priced(shared, roof, it, lo, hi).tolist() if it.item.__class__ is Op
                 and not it.fresh and it.item.kind != OpKind.ATTENTION else None
                 for it in self.items]
        _comm_prices(sim, self.items, lo, hi, table, self.kept)
        for b in ends:
            edge = _replace(batch, b)
            if _step(sim, edge, self.items, table, b - lo, type(sim).attention_time
                     ) != sim._lowered_step(edge):
                self.off = True
                return None
        self.blocks[(k, key)] = table
        return table


def _priced(shared: dict[Any, np.ndarray], roof: RooflineModel, it: _Item, lo: int,
            hi: int) -> np.ndarray:
    """``_price`` of ``it`` at the batch sizes ``lo`` .. ``hi``, kept in ``shared``: the
    price is a function of the device, the op (``Op.cache_key``: all but its name and
    role), its growth and the sizes alone, and configurations on one device (engines of
    one launch overhead, models that share a layer shape, a configuration whose memo
    ``MEMO_CONFIGS`` dropped) price the same item over the same block: 16,327 prices,
    6,829 distinct, over the serving rows of ``validate --published``."""
    assert isinstance(it.item, Op)
    key = (it.item.cache_key(), tuple(sorted(it.grows.items())), lo, hi)
    hit = shared.get(key)
    if hit is None:
        hit = shared[key] = _price(roof, it, np.arange(lo, hi + 1, dtype=np.float64))
    return hit


def _moe_fit(sim: Any, batch: Any, lo: int, hi: int) -> tuple[int, tuple[_Item, ...]] | None:
    """(the first size of ``lo`` .. ``hi`` from which the MoE items are affine, those items
    as ``_Item``s), or None where there is no such run or ``_price`` does not cover an
    item (``batched_moe``)."""
    start = saturated_from(sim, batch, lo, hi)
    if start is None:
        return None
    fitted = affine_moe_items(sim, batch, start, hi)
    if fitted is None or not all(_vector_item(op, _MOE_KINDS) for op, _ in fitted):
        return None
    return start, tuple(_Item(op, 0, -1, grows) for op, grows in fitted)


def _comm_prices(sim: Any, items: tuple[_Item, ...], lo: int, hi: int,
                 table: list[list[float] | None], kept: dict[Any, dict[Any, Any]]) -> None:
    """Each collective's times at the block's batch sizes ``lo`` .. ``hi`` into ``table``,
    priced at once by ``block_times`` (the floats ``sim._comm`` gives, at the buffers
    ``_step`` builds: ``_Item.at`` on the array); left None where it does not cover them.
    A function of the pricer's system, the collective, its group and buffers alone, so
    kept per system (``shared_table`` by its ``repr``, looked up once per template in
    ``kept``): 3,108 block pricings over the serving rows, 878 distinct."""
    pricer = getattr(sim._comm, "pricer", None)
    if not isinstance(pricer, CollectivePricer):
        return  # another pricer (expert-parallel kernels): per step
    if "comm" not in kept:
        kept["comm"] = shared_table("block_comm", repr(pricer.system))
    shared = kept["comm"]
    bs = np.arange(lo, hi + 1, dtype=np.float64)
    for i, it in enumerate(items):
        item = it.item
        if isinstance(item, CommNeed) and not it.fresh:
            group = sim.plan.tp_group() if item.group == "tp" else sim.plan.ep_group()
            key = (item.kind, tuple(group), it.grows["nbytes"], lo, hi)
            if key not in shared:
                prices = block_times(pricer, item.kind, group, it.at("nbytes", bs))
                shared[key] = None if prices is None else prices.tolist()
            if shared[key] is not None:
                table[i] = list(shared[key])


def _ends(sim: Any, batch: Any, lo: int, hi: int) -> tuple[int, ...]:
    """The first and last batch size of ``lo`` .. ``hi`` priced by ``batch``'s cost model
    (``model_ends``), or none where no size there is."""
    key = sim.model_key(batch)
    first = next((b for b in range(lo, hi + 1) if sim.model_key(_replace(batch, b)) == key),
                 None)
    if first is None:
        return ()
    return first, next(b for b in range(hi, lo - 1, -1)
                       if sim.model_key(_replace(batch, b)) == key)


def _replace(batch: Any, sequences: int) -> Any:
    return type(batch)(float(sequences), batch.q_len, batch.context, batch.phase, batch.dummies)


def _roofline(model: Any) -> RooflineModel | None:
    """The roofline under ``model`` when every wrapper leaves the non-attention items of a
    decode step to it (weight-only GEMVs are excluded per item), else None."""
    while type(model) in (WeightOnlyGemvModel, EngineAttentionModel):
        model = model.inner
    if type(model) is not KernelCostModel or type(model.roofline) is not RooflineModel:
        return None
    return model.roofline


def _template(sim: Any, batch: Any) -> tuple[_Item, ...] | None:
    """The template of ``sim``'s decode skeletons (context > 0), or None."""
    roof = _roofline(sim._cost_model(batch).inner)
    if roof is None or roof.device.efficiency.cache_bytes > 0:
        return None  # another chain; or the cache tier's cold-byte terms
    one, two = (distinct_items(sim.lower(_replace(batch, b)), sim.layers[0]) for b in (1, 2))
    if len(one) != len(two):
        return None
    fresh = range(0)
    if sim.spec.moe:  # the MoE items after the router: one run, at the same place
        runs = [moe_run(items, _moe_items(sim, _replace(batch, b)))
                for items, b in ((one, 1), (two, 2))]
        if runs[0] is None or runs[0] != runs[1]:
            return None
        fresh = runs[0]
    items = []
    for i, ((a, count, layer), (b, count2, layer2)) in enumerate(zip(one, two, strict=True)):
        grows = {} if i in fresh else _grows(a, b)
        if grows is None or count != count2 or layer != layer2:
            return None
        items.append(_Item(a, count, layer, grows, i in fresh))
    return tuple(items)


def _grows(a: Op | CommNeed, b: Op | CommNeed) -> dict[str, tuple[float, float]] | None:
    """The numbers of item ``a`` (at B = 1) that ``b`` (B = 2) changes, as (value, step):
    None when the pair is not one this module prices, or a number is not an integer."""
    if isinstance(a, CommNeed) and isinstance(b, CommNeed):
        same = (a.name, a.kind, a.group) == (b.name, b.kind, b.group)
        pairs = {"nbytes": (a.nbytes, b.nbytes)}
    elif isinstance(a, Op) and isinstance(b, Op):
        same = (a.name, a.kind, a.dtype, a.unit) == (b.name, b.kind, b.dtype, b.unit)
        if a.kind == OpKind.ATTENTION:  # built and priced per step (``_step``)
            return {} if same else None
        if not same or not _vector_item(a) or not _vector_item(b):
            return None
        pairs = {"flops": (a.flops, b.flops), "bytes": (a.main_bytes, b.main_bytes)}
        if isinstance(a.shape, GemmShape) and isinstance(b.shape, GemmShape):
            sa, sb = a.shape, b.shape
            if (sa.n, sa.k, sa.batch) != (sb.n, sb.k, sb.batch):
                return None
            pairs["m"] = (sa.m, sb.m)
    else:
        return None
    grows = {n: (float(v1), float(v2) - float(v1)) for n, (v1, v2) in pairs.items()}
    if not same or not all(v.is_integer() and s.is_integer() for v, s in grows.values()):
        return None
    return grows


def _vector_item(op: Op, kinds: frozenset[OpKind] = _ROOFLINE_KINDS) -> bool:
    """An op whose roofline time this module computes: one of ``kinds``, main-memory bytes
    only; a GEMM of the generic path (no named kernel, tactic, accumulation, groups or
    weight footprint) that is not a weight-only GEMV; an element-wise op without a
    transposed copy."""
    if op.kind not in kinds or set(op.bytes) - {MAIN_MEMORY}:
        return False
    shape = op.shape
    if op.kind == OpKind.GEMM:
        return (isinstance(shape, GemmShape) and op.unit == Unit.MATRIX and not shape.impl
                and shape.tactic_m == 0 and not shape.accumulate and not shape.group_rows
                and shape.footprint_bytes == 0 and op.dtype not in WEIGHT_ONLY_DTYPES)
    if isinstance(shape, ElementwiseShape) and shape.transpose:
        return False
    return op.unit in (Unit.VECTOR, Unit.DMA)


def _step(sim: Any, batch: Any, items: tuple[_Item, ...], table: list[list[float] | None],
          row: int, core: Callable[[Any, StepOpTimes, Any, int], float]) -> PricedStep | None:
    """``batch``'s PricedStep: the block's prices at ``row``, the attention cores at its
    context (``core``: ``StepSimulator.attention_time`` or the same float from a table), an
    MoE layer's items after the router built and priced at its routed load, the
    collectives at its buffers (``_priced_step``'s order). None where the MoE items are
    not the template's in number."""
    b = batch.sequences
    op_time = StepOpTimes(sim._cost_model(batch).inner)
    entries: list[tuple[int, float, bool]] = []
    cores: list[tuple[int, int]] = []
    built = _moe_items(sim, batch) if sim.spec.moe else []
    if len(built) != sum(it.fresh for it in items):
        return None  # another MoE layout at this batch size: the per-step path
    fresh = iter(built)
    groups = {"tp": sim.plan.tp_group()}  # a step's collectives: TP ones, or on the EP group
    for it, prices in zip(items, table, strict=True):
        item = it.item
        if it.fresh:  # an MoE item (an Op: ``_moe_run``), built at this step's load
            entries.append((it.count, op_time(next(fresh)), False))
        elif isinstance(item, CommNeed):
            group = groups.get(item.group)
            if group is None:
                group = groups[item.group] = sim.plan.ep_group()
            if prices is None:
                t = sim._comm(Collective(item.name, item.kind, group, it.at("nbytes", b)))
            else:  # the block's prices (``_comm_prices``)
                t = prices[row]
            entries.append((it.count, t, False))
        elif prices is None:  # the attention core
            cores.append((len(entries), it.layer))
            entries.append((it.count, core(sim, op_time, batch, it.layer), True))
        else:
            entries.append((it.count, prices[row], False))
    return PricedStep(tuple(entries), tuple(cores))
