"""The roofline's price of one decode-template item at a block of batch sizes, in numpy.

``RooflineModel._terms`` element-wise over the block's sizes (``batched_step``): the same
IEEE operations on the same operands in the same order (``max`` / ``min`` as
``np.maximum`` / ``np.minimum``, ``math.ceil`` as ``np.ceil``), and
``gemm_pipeline.pipelined_time`` called per element (numpy's SIMD ``power`` is 1 ulp off
libm's ``pow`` near the ridge). The item is a ``batched_step._Item``: its op and the
numbers that grow with the batch size (``at``). Split from ``batched_step.py`` (module
size), unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from xpusim.sim.cost.gemm_pipeline import pipelined_time
from xpusim.sim.cost.operand_feed import feed_flops_per_element
from xpusim.sim.cost.roofline import RooflineModel, memory_fraction
from xpusim.sim.ir import GemmShape, Op, OpKind, Unit, dtype_bytes, is_low_precision


def price(roof: RooflineModel, it: Any, bs: np.ndarray) -> np.ndarray:
    """``roof.time_s`` of ``it`` at each batch size of ``bs``: ``RooflineModel._terms``
    element-wise (module docstring)."""
    op = it.item
    assert isinstance(op, Op)
    dev, eff = roof.device, roof.device.efficiency
    flops, nbytes = it.at("flops", bs), it.at("bytes", bs)
    zero = np.zeros_like(bs)
    if op.kind == OpKind.GEMM:
        compute, mma = _gemm_compute(roof, op, it.at("m", bs), flops)
    elif op.unit == Unit.DMA or op.flops == 0 and it.grows["flops"][1] == 0:
        compute, mma = zero, zero
    else:
        peak = dev.peak_for("vector", op.dtype)
        with np.errstate(divide="ignore", invalid="ignore"):
            compute = np.where(flops == 0, 0.0, (flops + eff.vector_half_flops)
                               / (peak * eff.vector_max))
            mma = np.where(flops == 0, 0.0, flops / (peak * eff.vector_max))
    fraction = memory_fraction(op, dev)
    rate = (dev.hbm_bandwidth * fraction if op.unit == Unit.DMA
            else dev.main_memory_rate(fraction))
    memory = np.where(nbytes > 0, (nbytes + eff.memory_half_bytes) / rate, 0.0)
    kind = str(op.kind)
    overhead = eff.launch_overhead_s + eff.kind_overhead_s.get(kind, 0.0)
    speed = eff.kind_speed.get(kind, 1.0)
    compute, memory, mma = compute / speed, memory / speed, mma / speed
    body = np.maximum(compute, memory) + (1.0 - eff.overlap) * np.minimum(compute, memory)
    if op.kind == OpKind.GEMM:
        body = _gemm_main_loop(roof, op, it, bs, body, compute, memory, mma, speed)
    return body + overhead


def _gemm_compute(roof: RooflineModel, op: Op, m: np.ndarray,
                  flops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``RooflineModel._compute`` of a generic-path GEMM at rows ``m``: the cheapest
    block shape's cost (``roofline._cheapest_block``: least (cost, executed), first
    listed on a tie) with the operand-feed bound."""
    dev, eff = roof.device, roof.device.efficiency
    shape = op.shape
    assert isinstance(shape, GemmShape)
    peak, max_eff = dev.peak_for("matrix", op.dtype), eff.matrix_max_for(op.dtype)
    per_element = feed_flops_per_element(dev, op.dtype)
    multicast = dev.kernels.async_mma
    tm, tn, tk = dev.matrix_tile
    pm = np.where(m > 0, np.ceil(m / tm) * tm, 0.0)
    pn = math.ceil(shape.n / tn) * tn if shape.n > 0 else 0.0
    pk = math.ceil(shape.k / tk) * tk if shape.k > 0 else 0.0
    assert pn > 0 and pk > 0 and shape.batch > 0 and bool(np.all(pm > 0))
    best_cost = best_exec = None
    for bm, bn in eff.block_shapes:
        blocks = math.ceil(shape.batch) * np.ceil(pm / bm) * math.ceil(pn / bn)
        waves = np.ceil(blocks / dev.matrix_cores)
        rows, cols = np.minimum(bm, pm), min(bn, pn)
        loads = (np.minimum(rows, cols) + np.maximum(rows, cols) / 2.0 if multicast
                 else rows + cols)
        mma = 2.0 * rows * cols
        cost = waves * dev.matrix_cores * np.maximum(mma, per_element * loads) * pk
        executed = waves * dev.matrix_cores * mma * pk
        if best_cost is None or best_exec is None:
            best_cost, best_exec = cost, executed
        else:
            better = (cost < best_cost) | ((cost == best_cost) & (executed < best_exec))
            best_cost = np.where(better, cost, best_cost)
            best_exec = np.where(better, executed, best_exec)
    assert best_cost is not None
    work = np.maximum(best_cost, flops)
    return (work + eff.matrix_half_flops) / (peak * max_eff), flops / (peak * max_eff)


def _gemm_main_loop(roof: RooflineModel, op: Op, it: Any, bs: np.ndarray, body: np.ndarray,
                    compute: np.ndarray, memory: np.ndarray, mma: np.ndarray,
                    speed: float) -> np.ndarray:
    """``_terms``' GEMM body: the epilogue's output write after a main loop of operand
    reads through the shared-memory stages (``epilogue_time``, ``gemm_stages``)."""
    dev, eff = roof.device, roof.device.efficiency
    shape = op.shape
    assert isinstance(shape, GemmShape) and roof.impl_fixed_s(op) == 0.0
    stages = roof.gemm_stages(op)
    store = np.zeros_like(bs)
    if dev.arch == "nvidia":
        out_elt = 2.0 if is_low_precision(op.dtype) else dtype_bytes(op.dtype)
        out = np.minimum(shape.batch * it.at("m", bs) * shape.n * out_elt, it.at("bytes", bs))
        if dev.kernels.epilogue_overlap:
            bm, bn = eff.block_shapes[0]
            out = np.minimum(out, dev.matrix_cores * bm * bn * out_elt)
        store = np.where(out > 0, out / (dev.hbm_bandwidth * eff.memory_max), 0.0) / speed
    if stages <= 0 and not bool(np.any(store > 0)):
        return body
    reads = np.maximum(memory - store, 0.0)
    rate = dev.peak_for("matrix", op.dtype) * eff.matrix_max_for(op.dtype)
    mma_fill = eff.matrix_half_flops / rate / speed
    reads_fill = np.minimum(roof._reads_fill_s / speed, reads)
    loads = (reads - reads_fill).tolist()
    piped = np.array([pipelined_time(c, r, stages) for c, r in zip(mma.tolist(), loads,
                                                                    strict=True)])
    piped = piped + np.minimum(mma_fill, reads_fill)
    main = np.maximum(np.maximum(compute, reads), piped)
    return np.where((store > 0) | (stages > 0), np.maximum(body, main + store), body)
