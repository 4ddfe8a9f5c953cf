"""Fit the roofline cost model's parameters to measured kernel times.

The model is ``sim/cost/roofline.py`` exactly; this module re-states its formula in
vectorised numpy so that ``least_squares`` can evaluate thousands of ops per
iteration (``tests/test_calibrate_fit.py`` checks that both give the same times). A
case's predicted time is the sum of its ops' times: the calibration kernels run on
one stream, one op after another.

Per op (roofline.py):

* compute: ``(work + half_u) / (peak_u(dtype) * max_u)`` for unit u = matrix / vector
  (``work`` = executed FLOPs incl. tile padding and idle cores of the last wave)
* memory, per level: ``(bytes + half_b) / (bandwidth * max_b)``; main-memory bandwidth
  times ``cache_speedup`` for ops moving at most the last-level cache's capacity, except
  weights of a graph whose weight footprint exceeds the cache (``cold_bytes``):
  ``(cold + hot / cache_speedup + half_b) / (bandwidth * max_b)``; on a CPU an op's
  first-touch bytes (``Op.first_touch_bytes``) count as cold (sim/cost/first_touch.py)
* ``body = max(compute, memory) + (1 - overlap) * min(compute, memory)``
* ``time = body / kind_speed[kind] + launch_overhead + kind_overhead[kind]``
* a CPU op with a fresh output of >= 32 MiB (``Op.fresh_bytes``) adds a row of kind
  ``page_fault``: its faulted pages' bytes on the main-memory curve, never cache-served,
  with no launch overhead of its own (``sim/cost/page_faults.py``)

Fitted parameters: the 9 device-wide ones (matrix_max, matrix_half_flops, vector_max,
vector_half_flops, memory_max, memory_half_bytes, launch_overhead_s, cache_speedup,
overlap) and, for every
op kind other than the reference kinds (gemm, elementwise, memcpy) that appears in
at least ``MIN_CASES_PER_KIND`` fit cases, a speed and an extra overhead.

Only the products ``peak * max`` are identifiable, so a fitted max above 1 means the
profile's peak (or main-memory bandwidth) is lower than what this machine reaches;
``FitParams.to_device`` then raises the peak by that factor and sets max = 1.

Residuals are log(predicted) - log(measured), so a 10% miss weighs the same on a
5 µs op and a 50 ms kernel. Each suite gets the same total weight (a 100-shape GEMM
grid must not drown a 6-shape kernel suite), and a soft-L1 loss keeps one noisy case
from dragging the fit.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import least_squares
from xpusim.calibrate.fit_result import FitResult
from xpusim.hwprofiles.spec import Device
from xpusim.sim.cost.operand_feed import feed_flops_per_element
from xpusim.sim.cost.page_faults import PAGE_FAULT_KIND, fault_bytes
from xpusim.sim.cost.priced_kind import priced_kind
from xpusim.sim.cost.roofline import (
    RooflineModel,
    cold_bytes,
    epilogue_bytes,
    gemm_work,
    l2_missed_weight_bytes,
)
from xpusim.sim.cost.upsample_path import main_memory_bytes
from xpusim.sim.ir import MAIN_MEMORY, GemmShape, Op, OpKind, RankGraph, Unit

PARAM_NAMES = (
    "matrix_max",
    "matrix_half_flops",
    "vector_max",
    "vector_half_flops",
    "memory_max",
    "memory_half_bytes",
    "launch_overhead_s",
    "cache_speedup",
    "overlap",
)
# Physical bounds (log space): a unit cannot be 1e4x slower than its spec nor, even with
# a stale spec, more than 10x faster; half-work between one FLOP/byte and far above any
# op; launch overhead between 10 ns and 10 ms.
# The last-level-cache tier is at least as fast as main memory and at most 50x.
# Compute/memory overlap between 0.001 (phases in sequence) and 1 (the roofline max).
LOWER = np.log([1e-4, 1.0, 1e-4, 1.0, 1e-4, 1.0, 1e-8, 1.0, 1e-3])
UPPER = np.log([10.0, 1e13, 10.0, 1e12, 10.0, 1e11, 1e-2, 50.0, 1.0])
# Per-kind speed within 1/20..20 of the reference curve; extra overhead 0..1 ms (in µs).
KIND_SPEED_BOUNDS = (math.log(0.05), math.log(20.0))
KIND_OVERHEAD_US_BOUNDS = (0.0, 1000.0)
# Optional weight of a pull towards the start per parameter (log units). Off by default:
# on the committed CPU data 0.01 left the held-out errors and the repeatability of two
# calibrations about where they were (better for some suites, worse for others).
PRIOR_WEIGHT = 0.0
REFERENCE_KINDS = frozenset({"gemm", "elementwise", "memcpy"})
MIN_CASES_PER_KIND = 3
# A kind's speed and overhead describe its own ops only where those ops carry the time:
# a kind is fitted from the fit cases in which it takes at least this share of the
# predicted time (at the start profile). Below that its two parameters fit whatever
# time the rest of the case's graph misses. Measured (docs/calibration_notes.md, nineteenth
# session): the MoE layer's `routing` ops (top-k, sort, gather, bincount over <= 4096
# ids) take at most 4.7% of any case; their speed left the cost flat within 0.1% from
# 0.05 to 20 (it sat at either bound), and their overhead, with exactly 7 such ops in
# every MoE case, was an MoE-only intercept: 99-392 us per index op in five runs.
# Every kind with a microbenchmark has >= 3 fit cases at share 1.0.
MIN_KIND_SHARE = 0.5


@dataclass(frozen=True)
class FitParams:
    matrix_max: float
    matrix_half_flops: float
    vector_max: float
    vector_half_flops: float
    memory_max: float
    memory_half_bytes: float
    launch_overhead_s: float
    cache_speedup: float = 1.0
    overlap: float = 1.0
    kind_speed: dict[str, float] = field(default_factory=dict)
    kind_overhead_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_device(cls, device: Device) -> FitParams:
        e = device.efficiency
        return cls(
            e.matrix_max,
            e.matrix_half_flops,
            e.vector_max,
            e.vector_half_flops,
            e.memory_max,
            e.memory_half_bytes,
            e.launch_overhead_s,
            max(1.0, e.cache_speedup),
            e.overlap,
            dict(e.kind_speed),
            dict(e.kind_overhead_s),
        )

    @classmethod
    def from_vector(cls, x: np.ndarray, kinds: Sequence[str] = ()) -> FitParams:
        core = [float(v) for v in np.exp(x[: len(PARAM_NAMES)])]
        rest = x[len(PARAM_NAMES) :]
        speed = {k: float(math.exp(rest[2 * i])) for i, k in enumerate(kinds)}
        over = {k: float(rest[2 * i + 1]) * 1e-6 for i, k in enumerate(kinds)}
        return cls(*core, kind_speed=speed, kind_overhead_s=over)

    def vector(self, kinds: Sequence[str] = ()) -> np.ndarray:
        """Log core parameters, then (log speed, overhead in µs) per fitted kind."""
        core = [math.log(getattr(self, n)) for n in PARAM_NAMES]
        rest: list[float] = []
        for k in kinds:
            rest += [math.log(self.kind_speed.get(k, 1.0)), self.kind_overhead_s.get(k, 0.0) * 1e6]
        return np.array(core + rest)

    def as_dict(self) -> dict:
        return {
            **{n: getattr(self, n) for n in PARAM_NAMES},
            "kind_speed": dict(self.kind_speed),
            "kind_overhead_s": dict(self.kind_overhead_s),
        }

    def to_device(self, base: Device) -> Device:
        """The base device with these parameters; a max above 1 raises the peak instead.

        The cache tier's size is the base's last-level cache (``llc_bytes``), not fitted.
        """
        m_scale = max(1.0, self.matrix_max)
        v_scale = max(1.0, self.vector_max)
        b_scale = max(1.0, self.memory_max)
        eff = replace(
            base.efficiency,
            matrix_max=min(1.0, self.matrix_max),
            matrix_half_flops=self.matrix_half_flops,
            vector_max=min(1.0, self.vector_max),
            vector_half_flops=self.vector_half_flops,
            memory_max=min(1.0, self.memory_max),
            memory_half_bytes=self.memory_half_bytes,
            launch_overhead_s=self.launch_overhead_s,
            kind_speed=dict(self.kind_speed),
            kind_overhead_s=dict(self.kind_overhead_s),
            cache_bytes=llc_bytes(base),
            cache_speedup=self.cache_speedup,
            first_touch=base.arch == "cpu",  # first-touch bytes from main memory, no parameter
            overlap=self.overlap,
        )
        main = base.memory[0]
        memory = base.memory
        if b_scale > 1.0 and main.name == MAIN_MEMORY and main.bandwidth is not None:
            memory = (replace(main, bandwidth=main.bandwidth * b_scale), *base.memory[1:])
        return replace(
            base,
            efficiency=eff,
            matrix_peak={k: v * m_scale for k, v in base.matrix_peak.items()},
            vector_peak={k: v * v_scale for k, v in base.vector_peak.items()},
            hbm_bandwidth=base.hbm_bandwidth * b_scale,
            memory=memory,
        )


@dataclass
class OpTable:
    """Every op of every case as flat arrays (what the vectorised model needs)."""

    case: np.ndarray  # index of the case the op belongs to
    unit: np.ndarray  # 0 matrix, 1 vector, 2 dma
    kind: np.ndarray  # index into ``kinds``
    kinds: tuple[str, ...]  # OpKind values present
    flops: np.ndarray
    work: np.ndarray  # executed FLOPs (matrix, incl. padding and idle cores) or FLOPs
    peak: np.ndarray  # FLOP/s of the op's unit and dtype on the base device
    hbm_bytes: np.ndarray
    cold_bytes: np.ndarray  # weights of graphs too big for the cache: never cache-served
    hbm_bandwidth: float
    cache_bytes: float  # LLC tier: ops moving at most this much main memory get cache_speedup
    other_bytes: np.ndarray  # (ops, levels) bytes at on-chip levels with a bandwidth
    other_bandwidth: np.ndarray  # (levels,)
    n_cases: int
    # 1 for an op, 0 for the page-fault row of an op with a fresh output (the faults
    # happen inside that op: no launch of their own, no cache tier; page_faults.py).
    launch: np.ndarray | None = None
    # A GPU GEMM's main-loop terms (RooflineModel._terms; 0 for every other op and on a
    # CPU): the output bytes its epilogue stores after the last MMA, and the shared-memory
    # stages of its load/MMA pipeline.
    store_bytes: np.ndarray | None = None
    stages: np.ndarray | None = None
    # GPU GEMMs under an operand-feed bound: their block cost depends on the fitted matrix
    # rate (the bound's FLOPs per element scale with it), so ``op_times`` recomputes it for
    # these distinct ops (``feed_ops``; row -> index in ``feed_index``, -1 for other rows)
    # on ``base`` at the fitted parameters, as RooflineModel prices them.
    feed_ops: tuple[Op, ...] = ()
    feed_index: np.ndarray | None = None
    base: Device | None = None
    # A CPU GEMM's weights read in its packing phase from beyond the core's L2
    # (roofline.l2_missed_weight_bytes; not in ``hbm_bytes``), and whether they come from
    # the cache tier (the graph's weights fit it) or from main memory.
    pack_bytes: np.ndarray | None = None
    pack_cached: np.ndarray | None = None

    def cases_per_kind(self) -> dict[str, int]:
        return {k: len(set(self.case[self.kind == i].tolist())) for i, k in enumerate(self.kinds)}

    def kind_shares(self, p: FitParams) -> np.ndarray:
        """(kinds, cases): each kind's share of each case's predicted time under ``p``."""
        t = op_times(self, p)
        total = np.bincount(self.case, weights=t, minlength=self.n_cases)
        per_kind = np.zeros((len(self.kinds), self.n_cases))
        np.add.at(per_kind, (self.kind, self.case), t)
        return per_kind / np.where(total > 0, total, 1.0)

    def fitted_kinds(self, start: FitParams) -> tuple[str, ...]:
        """Non-reference kinds that carry at least ``MIN_KIND_SHARE`` of the predicted
        time (under ``start``) of at least ``MIN_CASES_PER_KIND`` fit cases: enough cases
        in which the kind's own ops, not the rest of the graph, set the time."""
        shares = self.kind_shares(start)
        return tuple(
            k
            for i, k in enumerate(self.kinds)
            if k not in REFERENCE_KINDS
            and int(np.sum(shares[i] >= MIN_KIND_SHARE)) >= MIN_CASES_PER_KIND
        )


# Held on a one-core device (a CPU timed with one thread: pipeline.load_base scales the
# profile to the threads used). ``(work + half) / rate`` adds ``half / rate`` to every op
# of the unit: a per-op constant, as launch_overhead_s and the kinds' overheads are. On
# the five stored CPU runs (docs/calibration_notes.md, nineteenth session) vector_half_flops
# was at its lower bound (three quick runs) or undetermined (two full runs: standard
# error a factor > 1e15, correlation -0.999 with pool.overhead), and memory_half_bytes
# at its lower bound in all five, with a Jacobian column 1e-5 of the others'. One core has no parallel units to fill
# before it reaches its rate, so there is no ramp to fit: both are held at 1 (none) and
# launch_overhead_s carries the per-op fixed cost. matrix_half_flops stays fitted (a
# GEMM-only constant, within a factor 2-20 in those runs: BLAS edge tiles and packing).
SINGLE_CORE_HELD: dict[str, float] = {"vector_half_flops": 1.0, "memory_half_bytes": 1.0}


def held_parameters(base: Device) -> dict[str, float]:
    """Parameters the fit holds at a fixed value for ``base`` (see SINGLE_CORE_HELD)."""
    return dict(SINGLE_CORE_HELD) if base.cores == 1 else {}


def llc_bytes(device: Device) -> float:
    """Size of the last-level-cache tier: the profile's own setting, else its largest
    device-wide on-chip level (a CPU's L3, a GPU's L2), else 0 (no tier)."""
    if device.efficiency.cache_bytes > 0:
        return device.efficiency.cache_bytes
    sizes = [
        lv.capacity_bytes for lv in device.memory if lv.name != MAIN_MEMORY and lv.scope == "device"
    ]
    return max(sizes, default=0.0)


def build_table(
    graphs: Sequence[RankGraph | Sequence[Op]],
    base: Device,
    split_conv: bool = True,
    split_upsample: bool = True,
) -> OpTable:
    """Flatten the cases' ops; GEMM padding, waves, block shapes and the operand-feed bound
    use the base device (not fitted: the feed bound's FLOPs per element scale with the
    matrix rate, so away from the base's ``matrix_max`` the table drifts from RooflineModel
    by what ``pipeline.model_gap`` reports). ``split_conv`` / ``split_upsample`` False:
    a CPU's slow-path convolutions / channels-last upsamplings under their op's own kind."""
    levels = [lv for lv in base.memory if lv.name != MAIN_MEMORY and lv.bandwidth is not None]
    model = RooflineModel(base)
    stores: list[float] = []
    stages: list[float] = []
    feed_ops: list[Op] = []  # distinct feed-bound GEMMs
    feed_slot: dict[tuple, int] = {}  # (shape, dtype) -> index in feed_ops
    feed_index: list[int] = []
    rows: list[tuple] = []
    others: list[list[float]] = []
    cold: list[float] = []
    pack: list[float] = []
    pack_cached: list[bool] = []
    cache = llc_bytes(base)
    kinds: list[str] = []
    launch: list[float] = []
    for ci, graph in enumerate(graphs):
        ops = graph.ops() if isinstance(graph, RankGraph) else list(graph)
        for op in ops:
            unit = {Unit.MATRIX: 0, Unit.VECTOR: 1, Unit.DMA: 2}[Unit(op.unit)]
            work = op.flops
            shape = op.shape
            feed = -1
            if unit == 0 and isinstance(shape, GemmShape):
                work, _ = gemm_work(op, base)  # the blocks RooflineModel prices
                if feed_flops_per_element(base, op.dtype) > 0:
                    feed = feed_slot.setdefault((shape, op.dtype), len(feed_ops))
                    if feed == len(feed_ops):
                        feed_ops.append(op)
            # A CPU's slow-path convolutions and channels-last upsamplings as their own kind
            # (conv_path.py, upsample_path.py) unless the caller merges them back (the kind
            # is not identifiable).
            split = split_upsample if op.kind == OpKind.UPSAMPLE else split_conv
            kind = priced_kind(op, base, split=split)
            if kind not in kinds:
                kinds.append(kind)
            peak = base.peak_for("matrix" if unit == 0 else "vector", op.dtype)
            main = main_memory_bytes(op, base)  # a CPU's channels-last upsampling: its copies
            packed = l2_missed_weight_bytes(op, base, cache)
            rows.append((ci, unit, kinds.index(kind), op.flops, work, peak, main - packed))
            others.append([op.bytes.get(lv.name, 0.0) for lv in levels])
            # Packed weights leave the overlapped memory term (RooflineModel._main_memory_time).
            cold_w = 0.0 if packed > 0 else cold_bytes(op, cache)
            # A CPU's first touches from main memory (first_touch.py; to_device turns it on).
            first = min(op.first_touch_bytes, main - cold_w) if base.arch == "cpu" else 0.0
            cold.append(0.0 if packed > 0 else cold_w + max(0.0, first))
            pack.append(packed)
            pack_cached.append(
                packed > 0 and isinstance(shape, GemmShape) and shape.footprint_bytes <= cache
            )
            launch.append(1.0)
            stores.append(epilogue_bytes(op, base))
            stages.append(float(model.gemm_stages(op)))
            feed_index.append(feed)
            faulted = fault_bytes(op, base)
            if faulted > 0:  # roofline adds fault_time_s to the op's body: its own row here
                if PAGE_FAULT_KIND not in kinds:
                    kinds.append(PAGE_FAULT_KIND)
                rows.append((ci, 2, kinds.index(PAGE_FAULT_KIND), 0.0, 0.0, 1.0, faulted))
                others.append([0.0] * len(levels))
                cold.append(0.0)
                pack.append(0.0)
                pack_cached.append(False)
                launch.append(0.0)
                stores.append(0.0)
                stages.append(0.0)
                feed_index.append(-1)
    arr = np.array(rows, dtype=float).reshape(-1, 7)
    return OpTable(
        case=arr[:, 0].astype(int),
        unit=arr[:, 1].astype(int),
        kind=arr[:, 2].astype(int),
        kinds=tuple(kinds),
        flops=arr[:, 3],
        work=arr[:, 4],
        peak=arr[:, 5],
        hbm_bytes=arr[:, 6],
        cold_bytes=np.array(cold, dtype=float),
        hbm_bandwidth=base.hbm_bandwidth,
        cache_bytes=cache,
        other_bytes=np.array(others, dtype=float).reshape(len(rows), len(levels)),
        other_bandwidth=np.array([lv.bandwidth for lv in levels], dtype=float),
        n_cases=len(graphs),
        launch=np.array(launch, dtype=float),
        store_bytes=np.array(stores, dtype=float),
        stages=np.array(stages, dtype=float),
        feed_ops=tuple(feed_ops),
        feed_index=np.array(feed_index, dtype=int),
        pack_bytes=np.array(pack, dtype=float),
        pack_cached=np.array(pack_cached, dtype=bool),
        base=base,
    )


def _work(t: OpTable, p: FitParams) -> np.ndarray:
    """Each row's work at ``p``: the table's, with the feed-bound GEMMs' block cost
    recomputed at the fitted matrix rate (``gemm_work`` on ``p.to_device(base)``)."""
    if not t.feed_ops or t.base is None or t.feed_index is None:
        return t.work
    dev = p.to_device(t.base)
    costs = np.array([gemm_work(op, dev)[0] for op in t.feed_ops])
    rows = t.feed_index >= 0
    work = t.work.copy()
    work[rows] = costs[t.feed_index[rows]]
    return work


def pipelined_times(compute_s: np.ndarray, memory_s: np.ndarray, stages: np.ndarray) -> np.ndarray:
    """``sim.cost.gemm_pipeline.pipelined_time`` elementwise: a main loop of ``compute_s``
    of MMAs and ``memory_s`` of operand loads through ``stages`` buffers."""
    out = np.maximum(compute_s, memory_s)
    ok = (stages > 0) & (compute_s > 0) & (memory_s > 0)
    if not ok.any():
        return out
    c, m, n = compute_s[ok], memory_s[ok], stages[ok]
    rho = c / m
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        inv = 1.0 / rho
        above = (inv**n - 1.0) / (inv ** (n + 1) - 1.0)  # rho > 1, as pipelined_time
        below = (rho - rho ** (n + 1)) / (1.0 - rho ** (n + 1))
        share = np.where(np.abs(rho - 1.0) < 1e-9, n / (n + 1.0), np.where(rho > 1.0, above, below))
    out[ok] = np.maximum(np.maximum(c / share, c), m)
    return out


def _gemm_main_loop(t: OpTable, p: FitParams, compute: np.ndarray, mem: np.ndarray,
                    speed: np.ndarray, body: np.ndarray) -> np.ndarray:
    """``body`` (already / speed) with a GPU GEMM's main loop and epilogue store, as
    RooflineModel._terms prices them: max(body, max(compute, reads, pipelined) + store)."""
    assert t.store_bytes is not None and t.stages is not None
    main = (t.store_bytes > 0) | (t.stages > 0)
    if not main.any():
        return body
    rate = t.peak * p.matrix_max  # the matrix rate (these rows are all matrix ops)
    store = t.store_bytes / (t.hbm_bandwidth * p.memory_max) / speed
    compute_s, mem_s = compute / speed, mem / speed
    reads = np.maximum(mem_s - store, 0.0)
    mma = t.flops / rate / speed
    mma_fill = p.matrix_half_flops / rate / speed
    reads_fill = np.minimum(p.memory_half_bytes / (t.hbm_bandwidth * p.memory_max) / speed, reads)
    piped = pipelined_times(mma, reads - reads_fill, t.stages) + np.minimum(mma_fill, reads_fill)
    loop = np.maximum(np.maximum(compute_s, reads), piped)
    return np.where(main, np.maximum(body, loop + store), body)


def op_times(table: OpTable, p: FitParams) -> np.ndarray:
    """Per-op times under ``p``: the roofline formula, vectorised."""
    t = table
    has_flops = (t.flops > 0) & (t.unit != 2)
    work = _work(t, p)
    matrix_c = (work + p.matrix_half_flops) / (t.peak * p.matrix_max)
    vector_c = (t.work + p.vector_half_flops) / (t.peak * p.vector_max)
    compute = np.where(has_flops, np.where(t.unit == 0, matrix_c, vector_c), 0.0)
    launch = np.ones_like(t.flops) if t.launch is None else t.launch
    cached = (t.hbm_bytes > 0) & (t.hbm_bytes <= t.cache_bytes) & (launch > 0)
    bandwidth = t.hbm_bandwidth * np.where(cached, p.cache_speedup, 1.0)
    mem = np.where(
        t.hbm_bytes > 0, (t.hbm_bytes + p.memory_half_bytes) / (bandwidth * p.memory_max), 0.0
    )
    # Weights that cannot stay cached come from main memory; the rest may hit the cache.
    hot = t.hbm_bytes - t.cold_bytes
    hot_speed = np.where((hot > 0) & (hot <= t.cache_bytes), p.cache_speedup, 1.0)
    mem_cold = (t.cold_bytes + hot / hot_speed + p.memory_half_bytes) / (
        t.hbm_bandwidth * p.memory_max
    )
    mem = np.where(t.cold_bytes > 0, mem_cold, mem)
    if t.other_bytes.shape[1]:
        on_chip_max = min(1.0, p.memory_max)  # to_device raises only the main-memory bandwidth
        lv = np.where(
            t.other_bytes > 0,
            (t.other_bytes + p.memory_half_bytes) / (t.other_bandwidth * on_chip_max),
            0.0,
        )
        mem = np.maximum(mem, lv.max(axis=1))
    speed = np.array([p.kind_speed.get(k, 1.0) for k in t.kinds])[t.kind]
    extra = np.array([p.kind_overhead_s.get(k, 0.0) for k in t.kinds])[t.kind]
    body = (np.maximum(compute, mem) + (1.0 - p.overlap) * np.minimum(compute, mem)) / speed
    if t.stages is not None:
        body = _gemm_main_loop(t, p, compute, mem, speed, body)
    if t.pack_bytes is not None and t.pack_cached is not None and np.any(t.pack_bytes > 0):
        # A CPU GEMM's packing read of weights evicted from L2 (RooflineModel.pack_read_time).
        tier = np.where(t.pack_cached, p.cache_speedup, 1.0)
        body = body + t.pack_bytes / (t.hbm_bandwidth * p.memory_max * tier) / speed
    return body + p.launch_overhead_s * launch + extra


def case_times(table: OpTable, p: FitParams) -> np.ndarray:
    """Predicted time of each case: the sum of its ops (one stream)."""
    return np.bincount(table.case, weights=op_times(table, p), minlength=table.n_cases)


def suite_weights(groups: Sequence[str]) -> np.ndarray:
    """Weight 1/sqrt(n_g) per residual so that every group's squared residuals sum equally."""
    counts: dict[str, int] = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    return np.array([1.0 / math.sqrt(counts[g]) for g in groups])


def fit(
    table: OpTable,
    measured_s: Sequence[float],
    start: FitParams,
    groups: Sequence[str] | None = None,
    loss: str = "soft_l1",
    f_scale: float = 0.1,
    fit_kinds: bool = True,
    prior_weight: float = PRIOR_WEIGHT,
    fixed: Collection[str] = (),
) -> FitResult:
    """Least squares on log-time residuals from ``start`` and from a neutral start; best wins.

    Two starts guard against the kinks of max(compute, memory) trapping the solver.
    ``groups`` (suite names) balance the weights; ``fit_kinds=False`` fits only the 9
    device-wide parameters. ``fixed`` names parameters (``PARAM_NAMES`` or
    ``kind.speed`` / ``kind.overhead``) held at ``start``'s value.
    """
    t = np.asarray(measured_s, dtype=float)
    if len(t) != table.n_cases:
        raise ValueError(f"{len(t)} measurements for {table.n_cases} cases")
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise ValueError("measured times must be positive and finite")
    y = np.log(t)
    w = suite_weights(groups) if groups is not None else np.ones_like(y)
    w = w / np.sqrt(np.mean(w**2))  # mean squared weight 1: f_scale keeps its meaning
    kinds = table.fitted_kinds(start) if fit_kinds else ()
    lower = np.concatenate(
        [LOWER, np.tile([KIND_SPEED_BOUNDS[0], KIND_OVERHEAD_US_BOUNDS[0]], len(kinds))]
    )
    upper = np.concatenate(
        [UPPER, np.tile([KIND_SPEED_BOUNDS[1], KIND_OVERHEAD_US_BOUNDS[1]], len(kinds))]
    )

    # A weak pull towards the starting profile (Tikhonov): a parameter the data cannot
    # identify (e.g. vector_max when no vector op is compute-bound) stays near the
    # profile instead of wandering to a bound, which keeps repeated calibrations close.
    x_prior = np.clip(start.vector(kinds), lower, upper)
    names = list(PARAM_NAMES) + [f"{k}.{p}" for k in kinds for p in ("speed", "overhead")]
    unknown = sorted(set(fixed) - set(names))
    if unknown:
        raise ValueError(f"fixed: unknown parameter(s) {', '.join(unknown)}; known: {names}")
    # Held parameters keep the start's value (clipped into bounds); only the rest move.
    free = np.array([n not in fixed for n in names])

    def full(xf: np.ndarray) -> np.ndarray:
        x = x_prior.copy()
        x[free] = xf
        return x

    # Kinds the start prices but the fit does not fit (the profile's estimate of a kind no
    # fit case carries, e.g. cpu-host's page_fault speed without the page_fault suite)
    # keep the start's values, as an overlay without them keeps the profile's on loading.
    held_speed = {k: v for k, v in start.kind_speed.items() if k not in kinds}
    held_over = {k: v for k, v in start.kind_overhead_s.items() if k not in kinds}

    def params(x: np.ndarray) -> FitParams:
        p = FitParams.from_vector(x, kinds)
        return replace(p, kind_speed={**held_speed, **p.kind_speed},
                       kind_overhead_s={**held_over, **p.kind_overhead_s})

    def residuals(xf: np.ndarray) -> np.ndarray:
        x = full(xf)
        data = w * (np.log(case_times(table, params(x))) - y)
        return np.concatenate([data, prior_weight * (xf - x_prior[free])])

    neutral = FitParams(0.5, 1e8, 0.5, 1e6, 0.5, 1e5, 1e-5, 2.0, 0.5)
    best = None
    for s in (start, neutral):
        x0 = np.clip(s.vector(kinds), lower + 1e-6, upper - 1e-6)[free]
        res = least_squares(
            residuals,
            x0,
            bounds=(lower[free], upper[free]),
            loss=loss,
            f_scale=f_scale,
            xtol=1e-12,
            ftol=1e-12,
            gtol=1e-12,
            max_nfev=3000,
        )
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    x_best = full(best.x)
    r = np.log(case_times(table, params(x_best))) - y
    rel = np.abs(np.expm1(r))
    at_bound = tuple(
        n
        for n, v, lo, hi, f in zip(names, x_best, lower, upper, free, strict=True)
        if f and (v - lo < 1e-3 or hi - v < 1e-3)
    )
    return FitResult(
        params=params(x_best),
        start=start,
        cost=float(best.cost),
        rms_log_error=float(math.sqrt(np.mean(r**2))),
        median_abs_error=float(np.median(rel)),
        p90_abs_error=float(np.percentile(rel, 90)),
        n_cases=table.n_cases,
        fitted_kinds=tuple(kinds),
        at_bound=at_bound,
        success=bool(best.success),
        message=str(best.message),
        held=tuple(n for n in names if n in fixed),
    )
