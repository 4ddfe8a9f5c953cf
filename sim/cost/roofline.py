"""Analytic cost model: a roofline over the memory hierarchy with efficiency curves.

For one op on one device (docs/cost_model.md derives each term):

* compute_s = padded_flops / (peak(unit, dtype) * eff(flops) * wave_eff)
  - ``eff(w) = max * w / (w + half)`` so that ``flops / (peak * eff) = (w + half) / (peak * max)``:
    a small op pays a fixed "half" of work — pipeline fill, tail effects — on top of its own.
  - GEMM-shaped ops (``shape`` has m, n, k) are padded to the matrix tile
    (16x16x16 Cube fractal, tensor-core MMA tile) and run in waves of per-core output
    blocks: ``wave_eff = blocks / (waves * cores)``.
* memory_s = max over levels of bytes / (bandwidth * mem_eff(bytes)), the same curve form.
* overhead_s = the per-op launch overhead.

Efficiencies are <= 1 and padding only adds work, so no op ever beats the physical
roofline max(flops / peak, bytes / bandwidth).
"""

from __future__ import annotations

import math

from hwprofiles.spec import Device
from sim.cost.base import OpCost
from sim.ir import MAIN_MEMORY, Op, Unit


def saturating_efficiency(work: float, max_eff: float, half: float) -> float:
    """Fraction of peak reached by an op of ``work`` (FLOPs or bytes)."""
    if work <= 0:
        return max_eff
    return max_eff * work / (work + half)


def gemm_quantisation(
    m: float, n: float, k: float, batch: float, device: Device
) -> tuple[float, float]:
    """(padded FLOPs, wave efficiency) of a (batched) GEMM on the device's matrix unit."""
    tm, tn, tk = device.matrix_tile
    eff = device.efficiency
    padded = 2.0 * batch * _pad(m, tm) * _pad(n, tn) * _pad(k, tk)
    blocks = batch * math.ceil(m / eff.core_block_m) * math.ceil(n / eff.core_block_n)
    cores = device.matrix_cores
    waves = math.ceil(blocks / cores)
    wave_eff = blocks / (waves * cores) if waves else 1.0
    return padded, wave_eff


def _pad(x: float, tile: int) -> float:
    return math.ceil(x / tile) * tile if x > 0 else 0.0


class RooflineModel:
    """``time(op)`` for one device; parameters come from the profile's ``efficiency``."""

    def __init__(self, device: Device, name: str = "roofline") -> None:
        self.device = device
        self.name = name

    def compute_time(self, op: Op) -> tuple[float, dict[str, float]]:
        if op.unit == Unit.DMA or op.flops == 0:
            return 0.0, {}
        dev, eff = self.device, self.device.efficiency
        unit = "matrix" if op.unit == Unit.MATRIX else "vector"
        peak = dev.peak_for(unit, op.dtype)
        shape = op.shape
        work, wave_eff = op.flops, 1.0
        if op.unit == Unit.MATRIX and "m" in shape and "n" in shape and "k" in shape:
            work, wave_eff = gemm_quantisation(
                shape["m"], shape["n"], shape["k"], shape.get("batch", 1), dev
            )
            work = max(work, op.flops)
        if op.unit == Unit.MATRIX:
            size_eff = saturating_efficiency(op.flops, eff.matrix_max, eff.matrix_half_flops)
        else:
            size_eff = saturating_efficiency(op.flops, eff.vector_max, eff.vector_half_flops)
        t = work / (peak * size_eff * wave_eff)
        return t, {"peak_flops": peak, "size_efficiency": size_eff, "wave_efficiency": wave_eff,
                   "padded_flops": work}

    def memory_time(self, op: Op) -> float:
        dev, eff = self.device, self.device.efficiency
        worst = 0.0
        for level_name, nbytes in op.bytes.items():
            if nbytes <= 0:
                continue
            if level_name == MAIN_MEMORY:
                bandwidth = dev.hbm_bandwidth
            else:
                level = dev.level(level_name)
                if level is None or level.bandwidth is None:
                    continue  # unpublished on-chip bandwidth: the level is assumed not to bind
                bandwidth = level.bandwidth
            mem_eff = saturating_efficiency(nbytes, eff.memory_max, eff.memory_half_bytes)
            worst = max(worst, nbytes / (bandwidth * mem_eff))
        return worst

    def time(self, op: Op) -> OpCost:
        compute_s, details = self.compute_time(op)
        memory_s = self.memory_time(op)
        overhead_s = self.device.efficiency.launch_overhead_s
        body = max(compute_s, memory_s)
        if overhead_s > body:
            bound = "overhead"
        else:
            bound = "compute" if compute_s >= memory_s else "memory"
        return OpCost(body + overhead_s, compute_s, memory_s, overhead_s, bound, details)
