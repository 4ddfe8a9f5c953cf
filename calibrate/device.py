"""Which device we are timing on, and the facts a calibrated profile records about it.

CPU is always available; CUDA when ``torch.cuda.is_available()``; Ascend when
``torch_npu`` imports (it registers the ``npu`` device type with torch).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
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
    # GPU only: compute capability, SMs, L2, memory, CUDA / cuDNN versions and the TF32
    # switches (``cuda_facts``); empty on a CPU.
    accelerator: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


# torch.cuda.get_device_name -> the device profile a CUDA calibration starts from. The
# names are the CUDA driver's product strings (nvidia-smi's "Product Name"): an H100
# SXM5 reports "NVIDIA H100 80GB HBM3" (seen on this workplace's device machine,
# /work/.library/device/KINDS.md, 2026-11-13), an H200 SXM "NVIDIA H200" (ibid.,
# 2026-10-28). First match wins, so the more specific patterns come first. A GPU with no
# profile of its own (H100 PCIe, H200 NVL, A100 40GB PCIe, ...) matches nothing and
# must be named with --profile: calibrating it on another card's peaks would fit the
# difference between the two cards into the efficiencies.
GPU_PROFILES: tuple[tuple[str, str], ...] = (
    (r"\bH100\b.*\bNVL\b", "h100-nvl"),
    (r"\bH100\b.*(SXM|80GB HBM3)", "h100-sxm5-80gb"),
    (r"\bH200\b.*\bNVL\b", ""),  # H200 NVL: 600 W, no profile of its own
    (r"\bH200\b", "h200-sxm-141gb"),
    (r"\bH800\b", "h800-sxm5-80gb"),
    (r"\bH20\b", "h20-96gb"),
    (r"\bGH200\b.*(144|HBM3e)", "gh200-144gb"),
    (r"\bGH200\b", "gh200-96gb"),
    (r"\bA100\b.*SXM4.*80GB", "a100-sxm4-80gb"),
    (r"\bA100\b.*SXM4.*40GB", "a100-sxm4-40gb"),
    (r"\bA100\b.*80GB PCIe", "a100-pcie-80gb"),
    (r"\bA800\b.*SXM4.*80GB", "a800-sxm4-80gb"),
    (r"\bGB200\b", "gb200"),
    (r"\bB200\b", "b200"),
    (r"\bL40S\b", "l40s"),
    (r"\bL40\b", "l40"),
    (r"\bL20\b", "l20"),
    (r"RTX 4090\b", "rtx-4090"),
    (r"\bV100\b.*SXM2.*32GB", "v100-sxm2-32gb"),
)


def profile_for_gpu(name: str) -> str:
    """The device profile of a CUDA GPU from its product name, or an ``InputError``
    (exit 2) that tells the user to name one with ``--profile``."""
    for pattern, profile in GPU_PROFILES:
        if re.search(pattern, name):
            if profile:
                return profile
            break
    raise InputError(
        f"--device cuda: no device profile is known for the GPU '{name}'; pass --profile "
        "NAME with the profile of this exact card ('xpusim hw list' shows them) or add one "
        "(docs/profiles.md)"
    )


def cuda_facts(torch) -> str:
    """One line of what a CUDA timing depends on besides the product name: compute
    capability, SMs, L2, memory, CUDA and cuDNN versions, and whether fp32 matmuls and
    convolutions may run as TF32 (torch's switches; not changed here, only recorded)."""
    p = torch.cuda.get_device_properties(0)
    l2 = getattr(p, "L2_cache_size", 0) / 2**20
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return (
        f"cc {p.major}.{p.minor}, {p.multi_processor_count} SMs, {l2:.0f} MiB L2, "
        f"{p.total_memory / 2**30:.1f} GiB, CUDA {torch.version.cuda}, cuDNN {cudnn}, "
        f"tf32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
        f"tf32 cudnn {torch.backends.cudnn.allow_tf32}"
    )


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
    accelerator = ""
    if kind == "cuda":
        name, dev = torch.cuda.get_device_name(0), "cuda:0"
        accelerator = cuda_facts(torch)
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
        accelerator=accelerator,
    )


def synchronizer(kind: str):
    """A function that waits until all queued work on the device has finished."""
    import torch

    if kind == "cuda":
        return torch.cuda.synchronize
    if kind == "npu":
        return torch.npu.synchronize
    return lambda: None  # CPU ops are synchronous
