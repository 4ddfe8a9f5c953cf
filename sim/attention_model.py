"""Cost model of blockwise (FastAttention) versus standard attention on an NPU or a GPU.

Blockwise kernel on the Da Vinci architecture (docs/attention.md derives each term):

* Work is split into items of one query block (``rows`` queries of one batch x head);
  items are spread over the AI cores (one AIC Cube core with its AIVs) in waves —
  longest item first onto the least-loaded core, which for equal items is
  ``ceil(items / cores)`` waves.
* An item loops over key blocks of ``cols`` keys (the *outer* block: the unit the
  Cube hands to the Vector cores). Per key block:
  - Cube: QK^T and PV, ``4 * rows * cols * d`` FLOPs padded to the 16^3 fractal, at the
    per-core Cube peak times the profile's asymptotic matrix efficiency;
  - Vector: the online softmax, ``SOFTMAX_FLOPS_PER_SCORE`` fp32 FLOPs per score
    (+1 for the mask add on diagonal blocks) and two per output element (rescale,
    accumulate), split over the AIVs of the core;
  - GM hand-off (separated AIC/AIV architecture: they share data only through global
    memory, i.e. the L2): S written as fp32 by the Cube and read by the Vector, P
    written in the input dtype and read back by the Cube, the PV partial (fp32) passed
    to the Vector, and the K/V block loaded — at the core's share of L2 bandwidth,
    reads and writes on separate ports (the platform config gives a read rate);
  - one Cube->Vector->Cube synchronisation.
  The pipeline overlaps Cube, Vector and GM across key blocks, so a block costs
  ``max(cube, vector, gm) + sync``; the first block of an item pays its stages in series.
* Inner tiles (the second tiling level) are the largest m x n that fit L0A/L0B/L0C
  double-buffered; the outer key block is the largest multiple of the inner tile
  whose K/V fit L1 and whose score rows fit the AIV's UB.
* HBM: Q read and O written once; K/V re-read once per wave pass of a head (the cores
  of a wave walk a head's K/V in lockstep and share it through L2) when the blocks in
  flight fit in half of L2, once per query block otherwise.
  The kernel takes ``max(pipeline, hbm) + launch``.

On a coupled Da Vinci core (910A, 310P: Cube and Vector in one core) the tile moves on
chip (L0C -> UB): no GM hand-off and no cross-core sync, pipes still overlap.
On a GPU (arch "nvidia") the same loop runs on SMs: tensor cores and CUDA cores share
an SM and the score tile stays in registers (no GM hand-off, no cross-core sync);
FlashAttention-2 runs the softmax and the MMAs of a warp one after the other, so a
block costs ``max(cube + vector, kv_load)``. Tiles come from shared memory.

Standard attention is the op graph ``xpusim.sim.workloads.attention.describe_standard_attention``
(QK^T, scale, mask add, softmax, PV as separate kernels, the S x S tensors through HBM)
priced op by op with the roofline model and summed.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

from xpusim.hwprofiles.spec import Device, System
from xpusim.sim.cost import CachedCostModel, RooflineModel
from xpusim.sim.engine import Engine, SimResult
from xpusim.sim.errors import InputError
from xpusim.sim.ir import Stream, attention_pairs, dtype_bytes
from xpusim.sim.limits import check_attention_items
from xpusim.sim.network import comm_time_fn
from xpusim.sim.workloads.attention import (
    SOFTMAX_FLOPS_PER_SCORE,
    describe_standard_attention,
    describe_tp_attention_tiling_allreduce,
)

ACC_BYTES = 4.0  # fp32 accumulators and scores
# Cross-core hand-off on a separated AIC/AIV core: a flag written to GM and polled by the
# other core, twice per outer block (Cube->Vector, Vector->Cube). ESTIMATE: 2 x 400 cycles
# of global-memory latency per hand-off (order of a GPU's global-memory latency); not
# published for Ascend, exposed as ``sync_s`` so its effect can be swept.
SYNC_CYCLES_PER_HANDOFF = 800.0


@dataclass(frozen=True)
class Tiling:
    """Block sizes of the blockwise kernel and why they were chosen."""

    rows: int  # query rows of an outer block (= inner tile m)
    cols: int  # keys of an outer block (the Cube -> Vector hand-off unit)
    inner_m: int
    inner_n: int
    limits: dict[str, int]  # largest size each buffer allows


@dataclass(frozen=True)
class AttentionCost:
    time_s: float
    # dominant term: "cube", "vector", "gm", "sync", "hbm" (named by arch: bound_label) |
    # "compute", "memory", ...
    bound: str
    memory_bytes: float
    fits: bool
    details: dict[str, float]


# What each architecture calls the units behind the blockwise loop's terms (the keys of
# ``_BlockPipe.block_time``): "cube" the matrix unit, "vector" the softmax's vector unit,
# "gm" the score tile's hand-off through global memory on a separated Da Vinci core (else the
# K/V tile's read from L2). Ascend's names are CANN's Da Vinci terms (Cube, Vector, GM);
# an NVIDIA SM has tensor cores and CUDA cores (NVIDIA's architecture whitepapers); other
# archs get the generic names.
UNIT_LABELS = {
    "davinci": {"cube": "cube", "vector": "vector", "gm": "gm"},
    "nvidia": {"cube": "tensor-core", "vector": "cuda-core", "gm": "l2"},
}
GENERIC_UNIT_LABELS = {"cube": "matrix-unit", "vector": "vector-unit", "gm": "l2"}


def bound_label(device: Device, term: str) -> str:
    """The bound a report prints for the loop's dominant ``term`` on ``device``'s arch:
    "cube" on Ascend, "tensor-core" on NVIDIA, "matrix-unit" elsewhere."""
    return UNIT_LABELS.get(device.arch, GENERIC_UNIT_LABELS).get(term, term)


def _level(device: Device, *names: str) -> float | None:
    for name in names:
        level = device.level(name)
        if level is not None:
            return level.capacity_bytes
    return None


def _round_down(x: float, step: int) -> int:
    return int(x // step) * step


def is_separated(device: Device) -> bool:
    """Da Vinci with separate AIC and AIV cores (910B/910C: two AIVs per AIC in the CANN
    platform configs) — they exchange data through GM. Coupled cores (910A, 310P) keep
    Cube and Vector in one core and hand the tile over on chip (L0C -> UB)."""
    return device.arch == "davinci" and device.vector_cores >= 2 * device.matrix_cores


def derive_tiling(
    device: Device, head_dim: int, dtype: str, seq: int, outer_block: int | None = None
) -> Tiling:
    """Largest inner tile fitting L0A/L0B/L0C (double-buffered) and outer block fitting L1/UB.

    GPUs (no L0 levels): square rows = cols tiles whose Q, K and V tiles fit shared memory.
    """
    elt = dtype_bytes(dtype)
    tile = device.matrix_tile[0]
    limits: dict[str, int] = {}
    l0a, l0b, l0c = (_level(device, n) for n in ("l0a", "l0b", "l0c"))
    if l0a and l0b and l0c:
        # QK^T: A = Q (m x d), B = K^T (d x n), C = S (m x n, fp32); PV: A = P (m x n),
        # B = V (n x d), C = O (m x d, fp32). Each buffer holds two tiles (double buffer).
        limits["l0a_m"] = _round_down(l0a / 2 / (head_dim * elt), tile)
        limits["l0b_n"] = _round_down(l0b / 2 / (head_dim * elt), tile)
        limits["l0c_m"] = _round_down(l0c / 2 / (head_dim * ACC_BYTES), tile)
        m = min(limits["l0a_m"], limits["l0c_m"])
        n = limits["l0b_n"]
        # S tile m x n fp32 in half of L0C and P tile m x n in half of L0A.
        while m * n * ACC_BYTES > l0c / 2 or m * n * elt > l0a / 2:
            if n >= m and n > tile:
                n -= tile
            elif m > tile:
                m -= tile
            else:
                break
        if m < tile or n < tile:
            raise InputError(
                f"attention: head_dim {head_dim} too large for {device.name}'s L0 buffers"
            )
        l1 = _level(device, "l1") or 0.0
        ub = _level(device, "ub") or 0.0
        vec_per_cube = max(1, device.vector_cores // max(1, device.matrix_cores))
        # L1 stages Q (m x d) and the K and V blocks (cols x d each).
        limits["l1_cols"] = _round_down((l1 - m * head_dim * elt) / (2 * head_dim * elt), n)
        # Each AIV holds its rows of the score block (fp32) and P (dtype) plus its O rows (fp32).
        my_rows = m / vec_per_cube
        limits["ub_cols"] = _round_down(
            (ub - my_rows * head_dim * ACC_BYTES) / (my_rows * (ACC_BYTES + elt)), n
        )
        cols = min(limits["l1_cols"], limits["ub_cols"])
        rows = m
    else:
        smem = _level(device, "smem", "shared", "l1")
        if not smem:
            raise InputError(f"attention: device {device.name} has no L0 or shared-memory level")
        # Q, K and V tiles of b x d each in shared memory (FA2 keeps S/P in registers).
        b = _round_down(smem / (3 * head_dim * elt), tile)
        b = 1 << int(math.log2(b)) if b >= tile else b
        limits["smem_block"] = b
        m = n = rows = cols = b
    if outer_block is not None:
        if outer_block < n or outer_block % n:
            raise InputError(f"attention: --outer-block must be a multiple of the inner tile {n}")
        cols = outer_block
    cols = max(n, min(cols, math.ceil(seq / n) * n))
    if rows < 1 or cols < 1:
        raise InputError(f"attention: no tile of head_dim {head_dim} fits {device.name}'s buffers")
    return Tiling(rows, cols, m, n, limits)


def _pad(x: float, tile: int) -> float:
    return math.ceil(x / tile) * tile


def _causal_blocks(q_block: int, rows: int, cols: int, seq: int, q_len: int) -> tuple[int, int]:
    """(key blocks visited, of which diagonal/partial) for query block ``q_block``.

    The ``q_len`` queries are the last of the ``seq`` positions (bottom-right causal, the
    simulator's convention, sim.ir.attention_pairs; a prefill has q_len == seq): query
    block i holds positions offset + i x rows ... and sees the keys up to its last row."""
    offset = seq - q_len
    q_end = offset + min(q_len, (q_block + 1) * rows) - 1
    q_start = offset + q_block * rows
    visited = q_end // cols + 1
    full = (q_start + 1) // cols  # blocks whose last key <= first query
    return visited, visited - full


@dataclass(frozen=True)
class _BlockPipe:
    """Per-core rates of one outer block's pipeline stages (Cube, Vector, GM hand-off)."""

    rows: int
    head_dim: int
    elt: float
    cube_rate: float  # FLOP/s of one core's matrix unit
    vec_rate: float  # FLOP/s of one core's vector units
    l2_rate: float  # B/s of one core's share of L2 (the GM hand-off)
    sync_s: float
    npu: bool  # separated AIC/AIV: the score tile goes through GM
    davinci: bool
    matrix_tile: tuple[int, int, int]

    def block_time(self, ncols: int, partial: bool) -> tuple[float, dict[str, float]]:
        """Time of one key block of ``ncols`` keys in steady state, and its terms
        (``first``: the block paid in series, as the first block of an item is)."""
        rows, head_dim, elt = self.rows, self.head_dim, self.elt
        tm, tn, tk = self.matrix_tile
        cube = 2 * 2 * _pad(rows, tm) * _pad(ncols, tn) * _pad(head_dim, tk) / self.cube_rate
        vflops = (
            rows * ncols * (SOFTMAX_FLOPS_PER_SCORE + (1 if partial else 0)) + 2 * rows * head_dim
        )
        vector = vflops / self.vec_rate
        kv_read = 2 * ncols * head_dim * elt
        if self.npu:
            scores = rows * ncols
            reads = scores * (ACC_BYTES + elt) + rows * head_dim * ACC_BYTES + kv_read
            reads += scores * elt if partial else 0  # mask slice of the 2M x 2M template
            writes = scores * (ACC_BYTES + elt) + rows * head_dim * ACC_BYTES
            gm = max(reads, writes) / self.l2_rate
            body = max(cube, vector, gm)
            first = cube + vector + gm
        else:
            gm = kv_read / self.l2_rate
            # Coupled Da Vinci: Cube and Vector are separate pipes of one core and overlap;
            # FlashAttention-2 on a GPU runs a warp's MMAs and softmax one after the other.
            body = max(cube, vector, gm) if self.davinci else max(cube + vector, gm)
            first = cube + vector + gm
        terms = {"cube": cube, "vector": vector, "gm": gm}
        return body + self.sync_s, {**terms, "first": first + self.sync_s}


def _block_pipe(
    device: Device, rows: int, head_dim: int, dtype: str, sync_s: float | None
) -> _BlockPipe:
    eff = device.efficiency
    cores = device.matrix_cores
    npu = is_separated(device)
    vec_per_core = max(1, device.vector_cores // cores) if npu else 1
    cube_rate = device.peak_for("matrix", dtype) / cores * eff.matrix_max
    vec_rate = (
        device.peak_for("vector", "fp32") / device.vector_cores * vec_per_core * eff.vector_max
    )
    l2 = device.level("l2")
    # Unpublished L2 bandwidth: the level is assumed not to bind (as in RooflineModel).
    l2_rate = l2.bandwidth / cores * eff.memory_max if l2 and l2.bandwidth else math.inf
    if npu and math.isinf(l2_rate):
        # The GM hand-off must be priced: without a published L2 rate, use the HBM share.
        l2_rate = device.main_memory_rate(eff.memory_max) / cores
    if sync_s is None:
        sync_s = 2 * SYNC_CYCLES_PER_HANDOFF / device.clock_hz if npu else 0.0
    return _BlockPipe(
        rows=rows,
        head_dim=head_dim,
        elt=dtype_bytes(dtype),
        cube_rate=cube_rate,
        vec_rate=vec_rate,
        l2_rate=l2_rate,
        sync_s=sync_s,
        npu=npu,
        davinci=device.arch == "davinci",
        matrix_tile=device.matrix_tile,
    )


def _item_times(
    pipe: _BlockPipe, cols: int, seq: int, q_len: int, causal: bool, io: float
) -> tuple[list[float], int]:
    """Time of each query-block item of one (batch, head), and the key blocks visited."""
    rows = pipe.rows
    nq = math.ceil(q_len / rows)
    full_t, full_terms = pipe.block_time(cols, False)
    last_cols = seq - (math.ceil(seq / cols) - 1) * cols
    part_t = pipe.block_time(cols, True)[0]  # a diagonal block: it needs the mask slice
    item_times: list[float] = []
    steps_total = 0
    for qb in range(nq):
        if causal:
            visited, partial = _causal_blocks(qb, rows, cols, seq, q_len)
        else:
            visited, partial = math.ceil(seq / cols), 0
        steps_total += visited
        t = (visited - partial) * full_t + partial * part_t
        t += (full_terms["first"] - full_t) + io  # pipeline fill of the first block; Q/O
        if not causal and last_cols != cols:
            t -= full_t - pipe.block_time(last_cols, False)[0]
        item_times.append(t)
    return item_times, steps_total


def _longest_first(item_times: list[float], copies: int, cores: int) -> float:
    """Makespan of ``copies`` of each item on ``cores``: longest item first onto the
    least-loaded core."""
    items = sorted(item_times * copies, reverse=True)
    loads = [0.0] * min(cores, len(items))
    heapq.heapify(loads)
    for t in items:
        heapq.heappush(loads, heapq.heappop(loads) + t)
    return max(loads)


def _kv_hbm_reads(device: Device, nq: int, cols: int, head_dim: int, elt: float) -> int:
    """How many times each head's K/V is read from HBM.

    The items of one wave start together and take equal steps, so the cores working on
    one head walk its K/V in lockstep: each K/V block comes from HBM once per wave pass
    of the head and is shared through L2 — provided L2 holds the blocks in flight
    (double-buffered K and V blocks of every head in the wave) within half its capacity
    (the other half: the GM hand-off workspace). Otherwise every query block streams K/V
    from HBM."""
    cores = device.matrix_cores
    heads_in_flight = math.ceil(cores / nq) + 1
    in_flight_bytes = heads_in_flight * 2 * (2 * cols * head_dim * elt)
    l2 = device.level("l2")
    l2_cap = l2.capacity_bytes if l2 else 0.0
    return math.ceil(nq / cores) if in_flight_bytes <= l2_cap / 2 else nq


def fast_attention_cost(
    device: Device,
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    causal: bool = False,
    dtype: str = "fp16",
    outer_block: int | None = None,
    sync_s: float | None = None,
    q_len: int | None = None,
) -> AttentionCost:
    """Predicted time of the blockwise kernel: ``q_len`` queries (default ``seq``, a
    prefill) against ``seq`` keys. ``causal``: the queries are the last ``q_len``
    positions (a chunk of a longer prompt sees every earlier key), so ``q_len <= seq``."""
    q_len = seq if q_len is None else q_len
    if causal and q_len > seq:
        raise InputError(f"attention: causal attention needs q_len <= seq, got {q_len} > {seq}")
    tiling = derive_tiling(device, head_dim, dtype, seq, outer_block)
    rows, cols = tiling.rows, tiling.cols
    check_attention_items(batch * heads * math.ceil(q_len / rows))  # before the item list
    elt = dtype_bytes(dtype)
    eff = device.efficiency
    cores = device.matrix_cores
    pipe = _block_pipe(device, rows, head_dim, dtype, sync_s)
    full_terms = pipe.block_time(cols, False)[1]
    # HBM at the cores' achievable rate (capped by their data-move rate, Device.main_memory_rate).
    io = 2 * rows * head_dim * elt / (device.main_memory_rate(eff.memory_max) / cores)
    item_times, steps_total = _item_times(pipe, cols, seq, q_len, causal, io)
    pipeline_s = _longest_first(item_times, batch * heads, cores)
    # HBM: Q and O once, K/V once per pass of its head (_kv_hbm_reads).
    kv_head = 2 * seq * head_dim * elt
    kv_reads = _kv_hbm_reads(device, len(item_times), cols, head_dim, elt)
    hbm_bytes = batch * heads * (2 * q_len * head_dim * elt + kv_reads * kv_head)
    hbm_s = hbm_bytes / device.main_memory_rate(eff.memory_max)
    time_s = max(pipeline_s, hbm_s) + eff.launch_overhead_s
    if hbm_s > pipeline_s:
        bound = "hbm"
    else:
        terms = {**{k: full_terms[k] for k in ("cube", "vector", "gm")}, "sync": pipe.sync_s}
        bound = bound_label(device, max(terms, key=lambda k: terms[k]))
    flops = 4.0 * batch * heads * head_dim * attention_pairs(q_len, seq, causal)
    workspace = cores * rows * cols * (ACC_BYTES + elt) if pipe.npu else 0.0
    memory = 2 * batch * heads * (q_len + seq) * head_dim * elt + workspace + (2 * cols) ** 2 * elt
    details = {
        "rows": rows,
        "cols": cols,
        "inner_m": tiling.inner_m,
        "inner_n": tiling.inner_n,
        "block_cube_s": full_terms["cube"],
        "block_vector_s": full_terms["vector"],
        "block_gm_s": full_terms["gm"],
        "sync_s": pipe.sync_s,
        "blocks": batch * heads * steps_total,
        "pipeline_s": pipeline_s,
        "hbm_s": hbm_s,
        "hbm_bytes": hbm_bytes,
        "achieved_flops": flops / time_s,
    }
    return AttentionCost(time_s, bound, memory, memory <= device.hbm_capacity, details)


def standard_attention_cost(
    device: Device,
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    causal: bool = False,
    dtype: str = "fp16",
) -> AttentionCost:
    """Sum of the roofline times of the separate ops standard attention runs."""
    graph = describe_standard_attention(batch, heads, seq, head_dim, causal, dtype=dtype)
    model = RooflineModel(device)
    by_bound: dict[str, float] = {}
    time_s = 0.0
    hbm = 0.0
    for op in graph.ops():
        cost = model.time(op)
        time_s += cost.time_s
        hbm += op.main_bytes
        by_bound[cost.bound] = by_bound.get(cost.bound, 0.0) + cost.time_s
    memory = standard_peak_memory(batch, heads, seq, head_dim, causal, dtype)
    details = {
        "ops": len(graph.ops()),
        "hbm_bytes": hbm,
        **{f"{k}_bound_s": v for k, v in by_bound.items()},
    }
    bound = max(by_bound, key=lambda k: by_bound[k])
    return AttentionCost(time_s, bound, memory, memory <= device.hbm_capacity, details)


def standard_peak_memory(
    batch: int, heads: int, seq: int, head_dim: int, causal: bool, dtype: str
) -> float:
    """Peak bytes live in ``standard_attention``: Q, K, V, O, the mask and two score-sized
    tensors (the input and output of the scale / mask-add ops, or S and the fp32 P of
    the softmax — whichever pair is larger)."""
    elt = dtype_bytes(dtype)
    scores = batch * heads * seq * seq
    pair = max(2 * elt, elt + ACC_BYTES)
    mask = seq * seq * elt if causal else 0.0
    return 4 * batch * heads * seq * head_dim * elt + mask + pair * scores


def compare(
    device: Device,
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    causal: bool,
    dtype: str,
    outer_block: int | None = None,
    sync_s: float | None = None,
) -> dict[str, Any]:
    """One row of the study: both kernels' time, memory and bound at this ``seq``."""
    std = standard_attention_cost(device, batch, heads, seq, head_dim, causal, dtype)
    fast = fast_attention_cost(
        device, batch, heads, seq, head_dim, causal, dtype, outer_block, sync_s
    )
    return {
        "seq": seq,
        "standard_time_s": std.time_s,
        "fast_time_s": fast.time_s,
        "speedup": std.time_s / fast.time_s,
        "standard_memory_bytes": std.memory_bytes,
        "fast_memory_bytes": fast.memory_bytes,
        "standard_bound": std.bound,
        "fast_bound": fast.bound,
        "standard_fits": std.fits,
        "fast_fits": fast.fits,
        "standard": {"hbm_bytes": std.details["hbm_bytes"], "ops": std.details["ops"]},
        "fast": fast.details,
    }


def tiling_allreduce_cost(
    system: System,
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    tp: int,
    blocks: int,
    causal: bool = False,
    dtype: str = "fp16",
) -> dict[str, Any]:
    """Simulate TP attention + W_o with its all-reduce split into ``blocks`` sequence blocks.

    The op graph is ``describe_tp_attention_tiling_allreduce``; ops are priced by the
    roofline model, all-reduces by the network model on the system's topology, and
    the engine schedules compute and comm streams — the overlap is a result of the
    schedule. Compared with the same blocks run without overlap and with one block.
    Expected shape (docs/attention.md): tiled ~ max(compute, comm) + the part of the
    smaller one that cannot hide, about one block's worth.
    """
    if tp > system.num_devices:
        raise InputError(f"--tp {tp} exceeds the {system.num_devices} devices of {system.name}")
    model = CachedCostModel(RooflineModel(system.device))
    comm = comm_time_fn(system)

    def run(n: int, overlap: bool) -> SimResult:
        graph = describe_tp_attention_tiling_allreduce(
            batch, heads, seq, head_dim, tp, n, causal, dtype, overlap
        )
        return Engine([graph], lambda op: model.time(op).time_s, comm).run()

    tiled = run(blocks, True)
    serial = run(1, True)
    no_overlap = run(blocks, False)
    busy = tiled.busy_s
    return {
        "seq": seq,
        "tp": tp,
        "blocks": blocks,
        "tiled_time_s": tiled.makespan_s,
        "serial_time_s": serial.makespan_s,
        "blocks_no_overlap_time_s": no_overlap.makespan_s,
        "speedup": serial.makespan_s / tiled.makespan_s,
        "compute_s": busy.get((0, Stream.COMPUTE), 0.0),
        "comm_s": busy.get((0, Stream.COMM), 0.0),
        "exposed_comm_s": tiled.exposed_comm_s(0),
    }


__all__ = [
    "bound_label",
    "AttentionCost",
    "Tiling",
    "compare",
    "derive_tiling",
    "fast_attention_cost",
    "standard_attention_cost",
    "standard_peak_memory",
    "tiling_allreduce_cost",
]
