"""Analytic cost model: a roofline over the memory hierarchy with efficiency curves.

For one op on one device (docs/cost_model.md derives each term):

* compute_s = (work + half) / (peak(unit, dtype) * max)
  - ``max`` and ``half`` are the unit's efficiency parameters: an op of w FLOPs
    reaches ``eff(w) = max * w / (w + half)`` of peak, i.e. it pays a fixed "half"
    of work (pipeline fill, tail effects) on top of its own.
  - ``work`` is the FLOPs the hardware really executes. For GEMM-shaped ops (a
    ``GemmShape``: GEMMs and convolutions) the output is cut into per-core blocks
    (``core_block_m x core_block_n``, operands padded to the matrix tile: 16x16x16 Cube
    fractal, tensor-core MMA tile) that run in waves over the cores; a wave lasts as long as its largest block, so
    ``work = waves * cores * 2 * min(bm, m) * min(bn, n) * k`` (padded dims). A device
    may list several block shapes (``core_blocks``); the least ``work`` among them is
    taken, as GEMM libraries choose the CTA tile per problem.
  - operand feed (NVIDIA profiles with an L2 bandwidth): a block cannot run its MMAs
    faster than the SM's share of L2 bandwidth delivers its operands, ``(bm + bn) x k``
    elements (Hopper clusters multicast the larger tile: ``min + max / 2``), so each
    block costs ``max(2 bm bn, per_element x loads) x k`` FLOPs, ``per_element`` =
    peak x max / L2 bandwidth x element size; the tile choice takes the cheapest shape
    (``block_work``, docs/cost_model.md "Operand feed").
* memory_s = max over levels of (bytes + half_bytes) / (bandwidth * memory_max);
  on main memory an op running on the cores (not a DMA-engine copy) moves its bytes at
  most at the cores' own HBM data-move rate where the profile gives one (Ascend: AI
  cores x the CANN ini's ``ddr_rate`` x clock, ``Device.main_memory_rate``);
  a cast that writes a transposed copy runs at the profile's measured
  ``kernels.cast_transpose_fraction`` instead, where it has one (``memory_fraction``);
  a calibrated last-level-cache tier multiplies the main-memory bandwidth by
  ``cache_speedup`` for ops moving at most ``cache_bytes`` (off by default). Weights
  of a graph whose weight footprint exceeds the cache (``cold_bytes``) are never
  cached: memory_s = (cold + hot / speedup + half_bytes) / (bandwidth * max). On a CPU
  calibrated with it an op's first-touch bytes count as cold (``first_touch.py``).
* body = max(compute_s, memory_s) + (1 - overlap) * min(compute_s, memory_s): a
  calibrated ``overlap`` < 1 says the phases run partly one after the other (a CPU
  BLAS call packs its operands before computing); 1 (default) is the roofline.
* a calibrated CPU GEMM whose graph sweeps more weights than the core's L2 holds reads
  its weight in the packing phase, before the compute: those bytes leave memory_s and
  ``pack_read_time`` (weight / the cache tier's or main memory's rate) is added to the body.
* overhead_s = the per-op launch overhead (+ a calibrated per-op-kind extra).
* a CPU op with a fresh output of >= 32 MiB adds the first touch of its newly mapped
  pages to the body (``page_faults.fault_time_s``; 0 on every other device).
* a calibrated ``kind_speed[kind]`` (default 1) divides compute_s and memory_s of that
  op kind: one implementation family (e.g. CPU conv2d via oneDNN) may run faster or
  slower than the GEMM/elementwise curves predict.

``work`` >= the op's FLOPs and ``max`` <= 1, so no op ever beats the physical roofline
max(flops / peak, bytes / bandwidth) (unless a calibration measured a kind_speed > 1
on that device); ``work`` never decreases when m, n or k grow, so
time is monotone in the problem size.
"""

from __future__ import annotations

import math
from functools import lru_cache

from xpusim.hwprofiles.loader import load_device
from xpusim.hwprofiles.spec import Device
from xpusim.sim import ops
from xpusim.sim.cost.base import OpCost
from xpusim.sim.cost.first_touch import first_touch_bytes
from xpusim.sim.cost.gemm_impl import BLOCK_IMPLS, impl_stages, impl_work
from xpusim.sim.cost.gemm_pipeline import pipeline_stages, pipelined_time
from xpusim.sim.cost.gemm_xla import (
    XLA_IMPLS,
    XLA_MEASURED_DEVICE,
    ZERO_WORK_DOT_MNK,
    xla_fixed_s,
)
from xpusim.sim.cost.operand_feed import feed_flops_per_element
from xpusim.sim.cost.page_faults import fault_time_s
from xpusim.sim.cost.priced_kind import priced_kind
from xpusim.sim.cost.upsample_path import main_memory_bytes as upsample_main_bytes
from xpusim.sim.ir import (
    MAIN_MEMORY,
    ElementwiseShape,
    GemmShape,
    Op,
    OpKind,
    Unit,
    dtype_bytes,
    is_low_precision,
)


def stream_time_s(device: Device, nbytes: float) -> float:
    """Seconds to move ``nbytes`` (reads + writes) through main memory at the profile's
    achievable share, the memory curve of ``RooflineModel.memory_time`` for a plain stream
    run by the cores: (bytes + ``memory_half_bytes``) / (HBM bandwidth x ``memory_max``,
    capped by the cores' HBM data-move rate, ``Device.main_memory_rate``)."""
    eff = device.efficiency
    return (nbytes + eff.memory_half_bytes) / device.main_memory_rate(eff.memory_max)


def memory_fraction(op: Op, device: Device) -> float:
    """Share of main-memory bandwidth ``op`` reaches: ``memory_max``, except a cast that
    writes a transposed copy (``ElementwiseShape.transpose``: TransformerEngine's FP8
    cast-transpose kernel) on a device whose profile measured that kernel
    (``kernels.cast_transpose_fraction``; h100-sxm5-80gb: NVIDIA/TransformerEngine#101,
    4096 x 4096 in 51.95 us; sim.training.lowprec)."""
    measured = device.kernels.cast_transpose_fraction
    shape = op.shape
    if measured is not None and isinstance(shape, ElementwiseShape) and shape.transpose:
        return measured
    return device.efficiency.memory_max


def saturating_efficiency(work: float, max_eff: float, half: float) -> float:
    """Fraction of peak reached by an op of ``work`` (FLOPs or bytes)."""
    if work <= 0:
        return max_eff
    return max_eff * work / (work + half)


def gemm_quantisation(
    m: float, n: float, k: float, batch: float, device: Device
) -> tuple[float, float]:
    """(executed FLOPs, wave efficiency) of a (batched) GEMM on the device's matrix unit.

    Executed FLOPs count padding to the matrix tile and the idle cores of the last wave.
    The library picks, among the device's block shapes (``efficiency.block_shapes``),
    the one that executes the least work (ties: the first listed), as cuBLAS/CUTLASS
    heuristics pick a CTA tile per problem to cut wave-quantisation waste. (The cost
    model adds the operand-feed bound to that choice: ``gemm_tile_cost``.)
    """
    _, executed = gemm_tile_cost(m, n, k, batch, device)
    if executed == 0:
        return 0.0, 1.0
    return executed, 2.0 * batch * _padded(m, n, k, device) / executed


def gemm_tile_cost(
    m: float, n: float, k: float, batch: float, device: Device,
    flops_per_element: float = 0.0, multicast: bool = False,
) -> tuple[float, float]:
    """(cost in FLOPs, executed FLOPs) of the block shape the library picks for a GEMM.

    A shape's cost is its ``block_work`` with the operand-feed bound (``flops_per_element``
    FLOPs per operand element a block loads; 0: no bound), its executed FLOPs the same
    without the bound. The cheapest shape wins (ties: the first listed), as cuBLAS/CUTLASS
    heuristics pick the CTA tile per problem. (0, 0) for an empty GEMM.
    """
    tm, tn, tk = device.matrix_tile
    pm, pn, pk = _pad(m, tm), _pad(n, tn), _pad(k, tk)
    if pm == 0 or pn == 0 or pk == 0 or batch <= 0:
        return 0.0, 0.0
    return _cheapest_block(pm, pn, pk, batch, device.matrix_cores,
                           device.efficiency.block_shapes, flops_per_element, multicast)


@lru_cache(maxsize=1 << 16, typed=True)
def _cheapest_block(
    pm: float, pn: float, pk: float, batch: float, cores: int,
    shapes: tuple[tuple[int, int], ...], flops_per_element: float, multicast: bool,
) -> tuple[float, float]:
    """``gemm_tile_cost`` of the padded dims: the least (cost, executed) over ``shapes``.
    A pure function of its arguments, kept: decode GEMMs of nearby batch sizes pad to
    the same tile multiple, so a serving run meets each padded shape many times."""
    return min(_block_works(pm, pn, pk, batch, bm, bn, cores, flops_per_element, multicast)
               for bm, bn in shapes)


def _block_works(
    pm: float, pn: float, pk: float, batch: float, bm: int, bn: int, cores: int,
    flops_per_element: float, multicast: bool,
) -> tuple[float, float]:
    """(``block_work`` with the operand-feed bound, ``block_work`` without it): the same
    arithmetic as the two calls, sharing the block and wave counts (the pricing of every
    GEMM shape runs this per block shape; tests/test_gemm_operand_feed.py compares)."""
    blocks = math.ceil(batch) * math.ceil(pm / bm) * math.ceil(pn / bn)
    waves = math.ceil(blocks / cores)
    rows, cols = min(bm, pm), min(bn, pn)
    loads = min(rows, cols) + max(rows, cols) / 2.0 if multicast else rows + cols
    mma = 2.0 * rows * cols
    return waves * cores * max(mma, flops_per_element * loads) * pk, waves * cores * mma * pk


def tactic_tile(
    opt_m: float, n: float, k: float, batch: float, device: Device,
    flops_per_element: float = 0.0, multicast: bool = False,
) -> tuple[int, int]:
    """The block shape a library that times its tactics at ``opt_m`` rows keeps for every M.

    TensorRT builds each layer's kernel choice once per optimisation profile: "the builder
    selects the kernels that result in the lowest runtime for the optimum input tensor
    dimensions, and are valid for all input tensor sizes in the valid range" (TensorRT
    Python API, ``IOptimizationProfile``). At that timing a CTA tile runs its whole
    ``bm x bn`` MMAs even where the problem has fewer rows or columns (CUTLASS's multistage
    main loop zero-fills out-of-bounds operand rows with predicated ``cp_async_zfill``
    loads rather than skipping their MMAs: cutlass/gemm/threadblock/mma_multistage.h), so
    each shape is costed here over its full tile (``block_work`` of the dims rounded up to
    the tile, with the operand-feed bound); the cheapest wins (ties: the first listed).
    docs/inference_notes.md, "TensorRT-LLM 0.5: one optimisation profile"."""
    tm, tn, tk = device.matrix_tile
    pm, pn, pk = _pad(opt_m, tm), _pad(n, tn), _pad(k, tk)
    return _tactic_tile(pm, pn, pk, batch, device.matrix_cores, device.efficiency.block_shapes,
                        flops_per_element, multicast)


@lru_cache(maxsize=1 << 12, typed=True)
def _tactic_tile(
    pm: float, pn: float, pk: float, batch: float, cores: int,
    shapes: tuple[tuple[int, int], ...], flops_per_element: float, multicast: bool,
) -> tuple[int, int]:
    def full_tile_cost(shape: tuple[int, int]) -> float:
        bm, bn = shape
        return _block_works(max(pm, bm), max(pn, bn), pk, batch, bm, bn, cores,
                            flops_per_element, multicast)[0]

    return min(shapes, key=full_tile_cost)


def fixed_tactic_cost(
    shape: GemmShape, device: Device, flops_per_element: float,
) -> tuple[float, float]:
    """(cost in FLOPs, executed FLOPs) of ``shape`` run with the tile ``tactic_tile`` keeps
    for ``shape.tactic_m`` rows: ``block_work`` at the actual M with that one block shape
    (waves, and the operand-feed bound of a tile smaller than the problem's best), where
    the generic path (``gemm_tile_cost``) takes the cheapest shape for each M."""
    tm, tn, tk = device.matrix_tile
    pm, pn, pk = _pad(shape.m, tm), _pad(shape.n, tn), _pad(shape.k, tk)
    if pm == 0 or pn == 0 or pk == 0 or shape.batch <= 0:
        return 0.0, 0.0
    multicast = device.kernels.async_mma
    bm, bn = tactic_tile(shape.tactic_m, shape.n, shape.k, shape.batch, device,
                         flops_per_element, multicast)
    return _block_works(pm, pn, pk, shape.batch, bm, bn, device.matrix_cores,
                        flops_per_element, multicast)


def _padded(m: float, n: float, k: float, device: Device) -> float:
    tm, tn, tk = device.matrix_tile
    return _pad(m, tm) * _pad(n, tn) * _pad(k, tk)


def gemm_work(op: Op, device: Device) -> tuple[float, float]:
    """(cost, executed) FLOPs of a GEMM op's blocks on ``device``: the library's block shape
    with the operand-feed bound (a named kernel's own cut, or a tile fixed at ``tactic_m``),
    and its executed FLOPs; each at least the op's FLOPs. ``RooflineModel`` prices with it
    and calibrate/fit.py builds its table with it, so both see the same blocks."""
    shape = op.shape
    assert isinstance(shape, GemmShape)
    # Operand-feed bound (``block_work``, sim/cost/operand_feed.py). Hopper (async_mma)
    # runs 2-CTA clusters with TMA multicast (CUTLASS cutlass_library/generator.py
    # GenerateSM90_TensorOp_16b_WGMMA_gemm: cluster shapes [2,1,1] / [1,2,1]).
    per_element = feed_flops_per_element(device, op.dtype)
    if shape.impl in BLOCK_IMPLS:  # a named library kernel cuts the blocks its own way
        work, executed = impl_work(shape, device, op.dtype, per_element)
    elif shape.tactic_m > 0:  # a tile chosen once, at tactic_m rows (tactic_tile)
        work, executed = fixed_tactic_cost(shape, device, per_element)
    else:
        work, executed = gemm_tile_cost(shape.m, shape.n, shape.k, shape.batch, device,
                                        per_element, device.kernels.async_mma)
    return max(work, op.flops), max(executed, op.flops)


def epilogue_bytes(op: Op, device: Device) -> float:
    """Output bytes a GEMM's epilogue stores after its last MMA on an NVIDIA GPU (0 for
    other ops and devices): ``RooflineModel.epilogue_time`` prices them at the stream rate."""
    shape = op.shape
    if op.unit != Unit.MATRIX or not isinstance(shape, GemmShape) or device.arch != "nvidia":
        return 0.0
    nbytes = op.bytes.get(MAIN_MEMORY, 0.0)
    out_elt = 2.0 if is_low_precision(op.dtype) else dtype_bytes(op.dtype)
    if shape.accumulate:  # the epilogue reads C and writes it back (beta = 1)
        out_elt = 2.0 * dtype_bytes(shape.accumulate)
    out = min(shape.batch * shape.m * shape.n * out_elt, nbytes)
    if out > 0 and device.kernels.epilogue_overlap:
        # Two accumulator stages (Blackwell tensor memory; CUTLASS SM100
        # AccumulatorPipelineStageCount = 2, sm100_gemm_tma_warpspecialized.hpp): the
        # epilogue warps drain one tile while the MMA warp computes the next, so only
        # the last wave's stores follow the last MMA: one output tile per core.
        bm, bn = device.efficiency.block_shapes[0]
        out = min(out, device.matrix_cores * bm * bn * out_elt)
    return max(out, 0.0)


def block_work(
    pm: float, pn: float, pk: float, batch: float, bm: int, bn: int, cores: int,
    flops_per_element: float = 0.0, multicast: bool = False,
) -> float:
    """FLOPs executed by a padded GEMM cut into ``bm x bn`` output blocks run in waves.

    A wave lasts as long as its largest block, so every core of every wave counts a
    full block. Operand-feed bound (``flops_per_element`` > 0): a block's main loop
    cannot run faster than its operands arrive, so it costs at least
    ``flops_per_element`` FLOPs per operand element it loads per k: ``rows + cols``
    (one A row and one B column each), or with ``multicast`` (a Hopper 2-CTA cluster
    whose TMA loads the larger of the two tiles once for both CTAs)
    ``min(rows, cols) + max(rows, cols) / 2``. Every factor is non-decreasing in pm, pn,
    pk and batch, so this is too; the minimum over block shapes of non-decreasing
    functions is non-decreasing, which keeps GEMM time monotone in the problem size.
    """
    blocks = math.ceil(batch) * math.ceil(pm / bm) * math.ceil(pn / bn)
    waves = math.ceil(blocks / cores)
    rows, cols = min(bm, pm), min(bn, pn)
    loads = min(rows, cols) + max(rows, cols) / 2.0 if multicast else rows + cols
    return waves * cores * max(2.0 * rows * cols, flops_per_element * loads) * pk


def cold_bytes(op: Op, cache_bytes: float) -> float:
    """Main-memory bytes of ``op`` that the cache tier cannot serve.

    A GEMM may state the weights it reads (``GemmShape.weight_bytes``) and the weight
    footprint of the graph it belongs to (``GemmShape.footprint_bytes``, every weight
    read once per forward). A forward that sweeps more weights than the cache
    holds evicts each before its next use (LRU on a cyclic sweep), so those bytes come
    from main memory; activations handed over from the previous op stay eligible.
    Zero when the op states no weights or the footprint fits.
    """
    if cache_bytes <= 0:
        return 0.0
    shape = op.shape
    if not isinstance(shape, GemmShape) or shape.footprint_bytes <= cache_bytes:
        return 0.0
    return min(float(shape.weight_bytes), op.bytes.get(MAIN_MEMORY, 0.0))


def l2_missed_weight_bytes(op: Op, device: Device, cache_bytes: float) -> float:
    """Weight bytes a CPU GEMM reads from beyond the core's own L2, in its packing phase.

    A BLAS GEMM copies its B operand (here the weight) into a packed buffer before the
    micro-kernel runs over it (Goto & van de Geijn, ACM TOMS 34(3), 2008, sections 4-5):
    the copy's read is a phase of its own, not hidden under the compute it feeds. When
    the weight sits in the core's L2 (a GEMM timed back to back, the calibration grid)
    that read is short and the fitted ``overlap`` of the op's memory term covers it; when
    the graph sweeps more weights per forward than the per-core L2 holds
    (``GemmShape.footprint_bytes`` > the profile's per-core ``l2``), each weight has been
    evicted from L2 before its next use and the copy reads it from the last-level cache
    (or, past that tier, main memory). Measured on the dev VM (Intel Xeon, torch 2.13,
    MKL, one thread, 2026-12-07; docs/calibration_notes.md, twenty-second session): ``x @
    w.t()`` with a 0.5 MiB weight cycled over 8-24 distinct weights (4-12 MiB) took
    +11..+14 us per call over the same weight repeated, at every m from 1 to 64; a 2 MiB
    weight cycled over 96 MiB +112..+176 us. Only on a CPU (per-core L2) with a
    calibrated cache tier (``cache_bytes`` > 0): 0 everywhere else, so uncalibrated and
    GPU/NPU predictions are unchanged.
    """
    shape = op.shape
    if device.arch != "cpu" or cache_bytes <= 0 or not isinstance(shape, GemmShape):
        return 0.0
    l2 = device.level("l2")
    if l2 is None or l2.scope != "per_core" or shape.footprint_bytes <= l2.capacity_bytes:
        return 0.0
    return min(float(shape.weight_bytes), op.bytes.get(MAIN_MEMORY, 0.0))


def _pad(x: float, tile: int) -> float:
    return math.ceil(x / tile) * tile if x > 0 else 0.0


@lru_cache(maxsize=8)
def _xla_zero_work_model_s(dtype: str) -> float:
    """The model's device-body price of XLA's zero-work dot on the part its floor was
    measured on (``XLA_MEASURED_DEVICE``); a pure function of the shipped profile."""
    model = RooflineModel(load_device(XLA_MEASURED_DEVICE))
    cost = model.time(ops.gemm("xla-zero-work-dot", *ZERO_WORK_DOT_MNK, dtype))
    return cost.time_s - cost.overhead_s


class RooflineModel:
    """``time(op)`` for one device; parameters come from the profile's ``efficiency``."""

    def __init__(self, device: Device, name: str = "roofline") -> None:
        self.device = device
        self.name = name
        # Per-device facts of the GEMM main-loop term, derived once (``gemm_stages``,
        # ``_terms``): the SM's shared memory, the depth of the preferred block shape, and
        # the HBM fill time.
        smem = device.level("smem") if device.arch == "nvidia" else None
        self._smem_bytes = smem.capacity_bytes if smem is not None else 0.0
        self._default_stages = (pipeline_stages(*device.efficiency.block_shapes[0],
                                                self._smem_bytes)
                                if self._smem_bytes > 0 else 0)
        self._reads_fill_s = stream_time_s(device, 0.0)

    def compute_time(self, op: Op) -> tuple[float, dict[str, float]]:
        t, out, _ = self._compute(op, True)
        return t, out

    def _compute(self, op: Op, details: bool) -> tuple[float, dict[str, float], float]:
        """``compute_time`` and the MMA-only part of it: (seconds, details, seconds of the
        op's FLOPs alone, without fill, padding, waves or the operand-feed bound). With ``details`` False the
        details (wave and size efficiency, executed FLOPs) are left out and the dict is
        empty: the same times, for ``time_s``."""
        if op.unit == Unit.DMA or op.flops == 0:
            return 0.0, {}, 0.0
        dev, eff = self.device, self.device.efficiency
        unit = "matrix" if op.unit == Unit.MATRIX else "vector"
        peak = dev.peak_for(unit, op.dtype)
        if op.unit == Unit.MATRIX:
            max_eff, half = eff.matrix_max_for(op.dtype), eff.matrix_half_flops
        else:
            max_eff, half = eff.vector_max, eff.vector_half_flops
        work, executed, wave_eff = op.flops, op.flops, 1.0
        shape = op.shape
        if op.unit == Unit.MATRIX and isinstance(shape, GemmShape):
            work, executed = gemm_work(op, dev)
            if details and executed > 0:
                wave_eff = 2.0 * shape.batch * _padded(shape.m, shape.n, shape.k, dev) / executed
        t = (work + half) / (peak * max_eff)
        # The MMAs of the op's own FLOPs alone, at the unit's rate, without the fill: the
        # consumer side of a GEMM main loop (``_terms``); monotone in the problem size,
        # unlike the executed FLOPs of the block shape chosen for it.
        mma_t = op.flops / (peak * max_eff)
        if not details:
            return t, {}, mma_t
        out = {"peak_flops": peak, "executed_flops": executed, "wave_efficiency": wave_eff,
               "size_efficiency": saturating_efficiency(op.flops, max_eff, half)}
        if work > executed:
            out["feed_bound_flops"] = work
        return t, out, mma_t

    def gemm_stages(self, op: Op) -> int:
        """Shared-memory stages of the main loop that runs ``op`` on an NVIDIA GPU: the
        depth of its load/MMA pipeline (``gemm_pipeline``). A named library kernel uses its
        own tile or stage count (``gemm_impl.impl_stages``); any other GEMM the depth of the
        device's preferred block shape (``core_blocks[0]``, the library's default tile), one
        depth per device, so that GEMM time stays monotone in the problem size (a depth
        that followed the per-problem tile choice could shorten a larger GEMM). 0 (no
        finite-pipeline term) for other ops and devices and where the profile gives no
        ``smem`` level."""
        shape = op.shape
        if self._smem_bytes <= 0 or op.unit != Unit.MATRIX or not isinstance(shape, GemmShape):
            return 0
        if shape.impl in BLOCK_IMPLS:  # a named library kernel: its own tile or stage count
            return impl_stages(shape, self.device, op.dtype, self._smem_bytes)
        return self._default_stages

    def memory_time(self, op: Op) -> float:
        dev, eff = self.device, self.device.efficiency
        worst = 0.0
        for level_name, nbytes in op.bytes.items():
            if nbytes <= 0:
                continue
            if level_name == MAIN_MEMORY:
                if op.kind == OpKind.UPSAMPLE:  # a CPU's channels-last path: its copies
                    nbytes = upsample_main_bytes(op, dev)
                worst = max(worst, self._main_memory_time(op, nbytes))
                continue
            level = dev.level(level_name)
            if level is None or level.bandwidth is None:
                continue  # unpublished on-chip bandwidth: the level is assumed not to bind
            worst = max(worst, (nbytes + eff.memory_half_bytes) / (level.bandwidth * eff.memory_max))
        return worst

    def _main_memory_time(self, op: Op, nbytes: float) -> float:
        """Seconds ``op`` spends on its ``nbytes`` of main-memory traffic. An op the cores
        run (not ``Unit.DMA``) moves HBM bytes at ``Device.main_memory_rate``: the HBM
        share, capped by the cores' own data-move rate where the profile gives one (Ascend
        ``cores.hbm_bytes_per_cycle``, CANN ini ``ddr_rate``; docs/cost_model.md)."""
        dev, eff = self.device, self.device.efficiency
        fraction = memory_fraction(op, dev)
        rate = dev.hbm_bandwidth * fraction if op.unit == Unit.DMA else dev.main_memory_rate(fraction)
        packed = l2_missed_weight_bytes(op, dev, eff.cache_bytes)
        if packed > 0:
            # Those weights are read in the packing phase (``pack_read_time``), not in
            # this overlapped term; the rest (activations) takes the tier of its size.
            nbytes -= packed
            if 0 < nbytes <= eff.cache_bytes:
                rate = dev.hbm_bandwidth * eff.cache_speedup * fraction
            return (nbytes + eff.memory_half_bytes) / rate
        cold = cold_bytes(op, eff.cache_bytes)
        if op.first_touch_bytes:  # only a CPU kernel graph states them: main memory
            cold += first_touch_bytes(op, dev, nbytes - cold)
        if cold > 0:  # weights that cannot stay cached stream from main memory
            hot = nbytes - cold
            speed = eff.cache_speedup if 0 < hot <= eff.cache_bytes else 1.0
            return (cold + hot / speed + eff.memory_half_bytes) / rate
        if 0 < nbytes <= eff.cache_bytes:  # calibrated LLC tier (off by default): no HBM cap
            rate = dev.hbm_bandwidth * eff.cache_speedup * fraction
        return (nbytes + eff.memory_half_bytes) / rate

    def pack_read_time(self, op: Op) -> float:
        """Seconds of a CPU GEMM's packing-phase read of weights not in the core's L2
        (``l2_missed_weight_bytes``): at the cache tier's rate while the graph's weights fit
        the last-level cache, at the main-memory rate past it; added to the op's body."""
        dev, eff = self.device, self.device.efficiency
        weights = l2_missed_weight_bytes(op, dev, eff.cache_bytes)
        if weights <= 0:
            return 0.0
        rate = dev.main_memory_rate(memory_fraction(op, dev))
        shape = op.shape
        assert isinstance(shape, GemmShape)
        if shape.footprint_bytes <= eff.cache_bytes:
            rate = dev.hbm_bandwidth * eff.cache_speedup * memory_fraction(op, dev)
        return weights / rate

    def epilogue_time(self, op: Op) -> float:
        """Main-memory time of a GEMM's output write on an NVIDIA GPU (0 for other ops and
        devices: a CPU's BLAS phases are the calibrated ``overlap``; Ascend's Cube hands
        L0C to the FixPipe unit, a separate pipe that drains a double-buffered L0C while
        the Cube runs the next tile, so its write overlaps).

        A CUTLASS/cuBLAS GEMM computes an output tile in its main loop (operand loads
        pipelined with the MMAs) and only then runs the epilogue that converts and
        stores the tile (CUTLASS docs, "Efficient GEMM in CUDA": the epilogue follows the
        main loop; Hopper's cooperative kernels and DeepGEMM store through TMA after the
        last WGMMA of the tile). With output-heavy shapes (small k: attention scores,
        k = 512 expert GEMMs, 802816x192x768) both the tensor cores and HBM are near
        their limits and the kernel takes their sum, not their max. Operand reads stay
        overlapped with the MMAs. Output bytes: batch x m x n x the output element size
        (16-bit for FP8 inputs, as ``sim.ops.gemm`` writes), at most the op's bytes; where
        the device overlaps epilogues with the next tile's MMAs (``epilogue_overlap``) only
        the last wave's tiles."""
        out = epilogue_bytes(op, self.device)  # the output tile bytes (helper above)
        if out <= 0:
            return 0.0
        return out / (self.device.hbm_bandwidth * self.device.efficiency.memory_max)

    def impl_fixed_s(self, op: Op) -> float:
        """Per-call seconds a named GEMM implementation adds to the device body: for
        ``xla-sm90`` the measured zero-work XLA dot less the model's own price of that dot
        on the measured part (a 16x16x16 GEMM in the op's dtype, device body without the
        launch; sim/cost/gemm_xla.py): a constant, whatever device is priced. 0 for every
        other op."""
        shape = op.shape
        if not isinstance(shape, GemmShape) or shape.impl not in XLA_IMPLS:
            return 0.0
        return xla_fixed_s(_xla_zero_work_model_s(op.dtype))

    def time(self, op: Op) -> OpCost:
        body, compute_s, memory_s, overhead_s, details = self._terms(op, True)
        if overhead_s > body:
            bound = "overhead"
        else:
            bound = "compute" if compute_s >= memory_s else "memory"
        return OpCost(body + overhead_s, compute_s, memory_s, overhead_s, bound, details)

    def time_s(self, op: Op) -> float:
        """``time(op).time_s``, the same float, without the report (bound, details):
        the serving step pricing asks ~1M ops for their time alone
        (``priced_step.StepOpTimes``; docs/performance.md)."""
        body, _, _, overhead_s, _ = self._terms(op, False)
        return body + overhead_s

    def _terms(
        self, op: Op, details: bool
    ) -> tuple[float, float, float, float, dict[str, float]]:
        """(body, compute_s, memory_s, overhead_s, details) of ``time``; ``details``
        False leaves the details out (empty), the terms the same floats."""
        eff = self.device.efficiency
        compute_s, out, mma_s = self._compute(op, details)
        memory_s = self.memory_time(op)
        kind = priced_kind(op, self.device)  # a CPU's ATen path: conv2d_im2col, upsample_cl
        overhead_s = eff.launch_overhead_s + eff.kind_overhead_s.get(kind, 0.0)
        # Calibrated per-kind speed (1 unless a calibration set one): scales both terms.
        speed = eff.kind_speed.get(kind, 1.0)
        compute_s, memory_s, mma_s = compute_s / speed, memory_s / speed, mma_s / speed
        # Compute and memory phases overlap by ``overlap`` (1 = the plain roofline max).
        body = max(compute_s, memory_s) + (1.0 - eff.overlap) * min(compute_s, memory_s)
        store_s = self.epilogue_time(op) / speed
        stages = self.gemm_stages(op)
        if store_s > 0 or stages > 0:
            # A GEMM's epilogue stores its output tile after the tile's last MMA, so the
            # output write does not overlap the compute that produces it (see
            # ``epilogue_time``): body = main loop + output write. The main loop runs the
            # operand reads (the producer) and the op's own MMAs (the consumer) through a
            # finite ring of shared-memory stages, which loses throughput near their ridge
            # (``gemm_pipeline``); both without their fixed fill (``half`` terms: latency,
            # not a stream), the shorter fill paid once on top. Padding, idle SMs of the
            # last wave and an L2 operand-feed bound (all in ``compute_s``) and the
            # roofline terms stay floors.
            reads_s = max(memory_s - store_s, 0.0)
            rate = self.device.peak_for("matrix", op.dtype) * eff.matrix_max_for(op.dtype)
            mma_fill_s = eff.matrix_half_flops / rate / speed
            reads_fill_s = min(self._reads_fill_s / speed, reads_s)
            piped_s = (pipelined_time(mma_s, reads_s - reads_fill_s, stages)
                       + min(mma_fill_s, reads_fill_s))
            main_s = max(compute_s, reads_s, piped_s)
            body = max(body, main_s + store_s)
            if details and store_s > 0:
                out = {**out, "epilogue_s": store_s}
            if details and stages > 0:
                out = {**out, "pipeline_stages": float(stages),
                       "pipeline_loss_s": main_s - max(compute_s, reads_s)}
        pack_s = self.pack_read_time(op) / speed
        if pack_s > 0:  # a CPU GEMM's packing read of weights evicted from L2: serial
            body += pack_s
            if details:
                out = {**out, "pack_read_s": pack_s}
        fixed_s = self.impl_fixed_s(op)
        if fixed_s > 0:  # XLA's per-dot floor (sim/cost/gemm_xla.py), device-side time
            body += fixed_s
            if details:
                out = {**out, "xla_fixed_s": fixed_s}
        fault_s = fault_time_s(op, self.device)
        if fault_s > 0:  # a CPU op's first touch of freshly mapped pages (page_faults.py)
            body += fault_s
            if details:
                out = {**out, "page_fault_s": fault_s}
        return body, compute_s, memory_s, overhead_s, out
