"""The operand-feed rate of a GEMM block (docs/cost_model.md, "Operand feed").

A block cannot run its MMAs faster than the SM's share of L2 bandwidth delivers its operands.
Expressed as the tensor FLOPs an SM runs, at the matrix peak x ``matrix_max``, while one
operand element arrives: ``per_element = peak x max / L2 bandwidth x element size``. A block
of ``loads`` operand elements per k then costs at least ``per_element x loads`` FLOPs
(``roofline.block_work``; the named kernels' own block counts, ``gemm_trtllm.tactic_work``).
NVIDIA profiles that publish an L2 bandwidth only ([kernels] l2_bandwidth_gbps: H100 12 TB/s,
Hazy Research "GPUs Go Brrr"; A100 5120 B/clk, A100 whitepaper); 0 (no bound) elsewhere.
"""

from __future__ import annotations

from xpusim.hwprofiles.spec import Device
from xpusim.sim.ir import dtype_bytes


def feed_flops_per_element(device: Device, dtype: str) -> float:
    """Tensor FLOPs per delivered operand element of ``dtype`` on ``device`` (0: no bound)."""
    l2 = device.kernels.l2_bandwidth if device.arch == "nvidia" else None
    if not l2:
        return 0.0
    peak = device.peak_for("matrix", dtype)
    return peak * device.efficiency.matrix_max_for(dtype) / l2 * dtype_bytes(dtype)


__all__ = ["feed_flops_per_element"]
