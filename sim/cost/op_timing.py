"""How a benchmark times one op: what of the op's modelled time it sees (``xpusim op --timing``).

``launch`` (the default): the op as a framework launches it, what the cost models price:
the device body plus the host launch overhead of each kernel launch (the device profile's
``launch_overhead_s``, "CUDA launch + framework dispatch"). A benchmark that times one
call on an idle device, or whose host cannot run ahead of short kernels, sees this.

``kernel``: the device kernel's duration as a profiler reports it (torch.profiler /
kineto, CUPTI activity records, nsys, msprof): the launch happens on the host before the
kernel's start timestamp, so the host launch overhead is excluded. Everything the model
prices on the device stays, and so does a calibrated per-kind extra
(``kind_overhead_s``): a fit cannot tell a host share from a device share of it.
Sources that time this way (docs/cost_model.md, "How a benchmark times an op"):
DeepGEMM's ``bench_kineto`` (the kernel's average CUDA time in the kineto table), XLA's
matmul perf table (``HloOpProfiler::KernelTracer``, CUPTI_ACTIVITY_KIND_KERNEL median).
"""

from __future__ import annotations

from dataclasses import replace

from xpusim.sim.cost.base import OpCost
from xpusim.sim.errors import InputError

TIMINGS = ("launch", "kernel")


def check_timing(timing: str) -> str:
    """``timing`` if it is one of ``TIMINGS``; else an InputError naming the flag."""
    if timing not in TIMINGS:
        raise InputError(f"--timing {timing!r}: choose one of {', '.join(TIMINGS)}")
    return timing


def as_timed(cost: OpCost, timing: str, launch_s: float) -> tuple[OpCost, float]:
    """``cost`` as a benchmark with ``timing`` measures it, and the seconds of host launch
    overhead taken out; ``launch_s`` is the host launch overhead the cost holds
    (``launch_overhead_s`` per kernel launch it prices).

    ``kernel`` takes ``launch_s`` out of ``time_s`` and ``overhead_s`` (never more than the
    cost's overhead); ``launch`` returns ``cost`` unchanged."""
    if check_timing(timing) == "launch":
        return cost, 0.0
    excluded = min(max(launch_s, 0.0), cost.overhead_s)
    time_s = cost.time_s - excluded
    overhead_s = cost.overhead_s - excluded
    bound = cost.bound
    if bound == "overhead" and overhead_s <= time_s - overhead_s:
        # The launch made the op overhead-bound; without it the larger device term binds.
        bound = "compute" if cost.compute_s >= cost.memory_s else "memory"
    return replace(cost, time_s=time_s, overhead_s=overhead_s, bound=bound), excluded


__all__ = ["TIMINGS", "as_timed", "check_timing"]
