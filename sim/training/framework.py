"""The training framework's host side: what each launched op costs the CPU.

A step's kernels are issued by the framework on the host (PyTorch eager: Python, the
autograd and ATen dispatchers, then ``cudaLaunchKernel``). The host runs ahead of the
device, so its cost is hidden while kernels are long; when kernels are short the device
waits for the next launch. CUDA graphs (and Ascend's graph mode) replay a captured
sequence with one launch, removing the per-op host cost. The device-side launch
latency stays in the device profile's ``launch_overhead`` (priced by the cost model).

The lowering applies this per merged run of ops: ``n`` ops cannot finish before the
host has issued them, so the run takes ``max(device time, n * host_op_s)`` (the host
is assumed to restart at each run: pessimistic where a collective let it run ahead).
"""

from __future__ import annotations

from dataclasses import dataclass

from xpusim.sim.errors import InputError


@dataclass(frozen=True)
class FrameworkProfile:
    name: str
    host_op_s: float  # CPU time to issue one op (dispatch + launch)
    source: str


FRAMEWORKS = {
    "eager": FrameworkProfile(
        "eager",
        10e-6,
        "PyTorch eager: ~1 us Python + ~1 us pybind + 1-3 us autograd + 1-2 us ATen "
        "dispatch + 1-5 us backend + 1-3 us cudaLaunchKernel = 5-25 us of CPU work per op "
        "(jiahuanglin.xyz GPU-kernel lessons, 'From PyTorch op to kernel launch'); 10 us, "
        "the lower half of that range and of the 10-20 us usually quoted for eager "
        "dispatch: an estimate, not a fit",
    ),
    "cuda-graphs": FrameworkProfile(
        "cuda-graphs",
        0.0,
        "CUDA graphs replay the captured kernels with one host launch "
        "(pytorch.org/blog/accelerating-pytorch-with-cuda-graphs): no per-op host cost",
    ),
}


def framework_profile(name: str) -> FrameworkProfile:
    try:
        return FRAMEWORKS[name]
    except KeyError:
        raise InputError(
            f"plan.framework '{name}' unknown; use one of {', '.join(FRAMEWORKS)}"
        ) from None
