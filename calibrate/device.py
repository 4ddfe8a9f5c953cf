"""Which device we are timing on, and the facts a calibrated profile records about it.

CPU is always available; CUDA when ``torch.cuda.is_available()``; Ascend when
``torch_npu`` imports (it registers the ``npu`` device type with torch).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import asdict, dataclass

from xpusim.sim.errors import InputError

KINDS = ("cpu", "cuda", "npu")

# torch is an optional extra (pyproject.toml): the simulator runs without it.
TORCH_INSTALL = "pip install -c constraints.txt -e '.[torch]'"


def require_torch(what: str):
    """``import torch``, or an ``InputError`` (exit 2) saying that ``what`` needs it."""
    try:
        import torch
    except ImportError:  # not installed (or blocked): name the extra that provides it
        raise InputError(f"{what} needs torch: {TORCH_INSTALL}") from None
    return torch


@dataclass(frozen=True)
class LocalDevice:
    """A device we can run kernels on: its torch device string and identifying facts."""

    kind: str  # "cpu" | "cuda" | "npu"
    torch_device: str  # "cpu", "cuda:0", "npu:0"
    name: str  # CPU model string or GPU/NPU product name
    torch_version: str
    threads: int  # torch intra-op threads used while timing
    host_cpu: str
    date: str  # UTC ISO timestamp of detection

    def as_dict(self) -> dict:
        return asdict(self)


def cpu_model() -> str:
    """The CPU model string from /proc/cpuinfo (Linux) or platform (elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
    except Exception:  # noqa: BLE001 - any import failure means "no Ascend here"
        return False
    import torch

    return bool(getattr(torch, "npu", None) and torch.npu.is_available())


def available_kinds() -> list[str]:
    torch = require_torch("timing kernels")

    kinds = ["cpu"]
    if torch.cuda.is_available():
        kinds.append("cuda")
    if _npu_available():
        kinds.append("npu")
    return kinds


def detect(kind: str = "cpu", threads: int | None = None) -> LocalDevice:
    """Select ``kind`` (cpu/cuda/npu), set torch's thread count, and describe the device."""
    if kind not in KINDS:
        raise InputError(f"--device '{kind}': expected one of {', '.join(KINDS)}")
    torch = require_torch(f"timing kernels on --device {kind}")
    if kind not in available_kinds():
        raise InputError(
            f"--device {kind}: not available here (found: {', '.join(available_kinds())}); "
            "calibrate on a machine that has it, or use --device cpu"
        )
    if threads is not None:
        if threads < 1:
            raise InputError(f"--threads must be >= 1, got {threads}")
        # Fixed intra-op threads: timings depend strongly on it, so the profile records it.
        torch.set_num_threads(threads)
    if kind == "cuda":
        name, dev = torch.cuda.get_device_name(0), "cuda:0"
    elif kind == "npu":
        name, dev = str(torch.npu.get_device_name(0)), "npu:0"
    else:
        name, dev = cpu_model(), "cpu"
    return LocalDevice(
        kind=kind,
        torch_device=dev,
        name=name,
        torch_version=str(torch.__version__),
        threads=torch.get_num_threads(),
        host_cpu=f"{cpu_model()} ({os.cpu_count()} logical cores)",
        date=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def synchronizer(kind: str):
    """A function that waits until all queued work on the device has finished."""
    import torch

    if kind == "cuda":
        return torch.cuda.synchronize
    if kind == "npu":
        return torch.npu.synchronize
    return lambda: None  # CPU ops are synchronous
