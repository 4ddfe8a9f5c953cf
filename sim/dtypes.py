"""Number formats: bytes per element of each dtype, and the low-precision formats with the
block scales they carry (what a tensor of a dtype weighs in memory and on the wire)."""

from __future__ import annotations

from dataclasses import dataclass

from xpusim.sim.errors import InputError


@dataclass(frozen=True)
class LowPrecisionFormat:
    """A low-precision number format: element width plus the scale factors it carries.

    Block-scaled formats store one shared scale per ``block`` consecutive elements
    (``scale_bits`` each) and optionally one fp32 scale per tensor; the scales are part of
    the format's memory traffic, so its bytes per element are
    ``element_bits / 8 + scale_bits / 8 / block`` (the per-tensor scale is 4 bytes per
    tensor, nothing per element).
    """

    element_bits: float
    block: int = 0  # elements per shared scale; 0 = per-tensor scaling only
    scale_bits: int = 0
    per_tensor_scale: bool = True
    source: str = ""

    @property
    def bytes_per_element(self) -> float:
        scale = self.scale_bits / 8 / self.block if self.block else 0.0
        return self.element_bits / 8 + scale


LOW_PRECISION = {
    # FP8 with a per-tensor (delayed or current) scale: TransformerEngine's recipe;
    # E4M3 for forward tensors, E5M2 for gradients (Micikevicius et al., "FP8 Formats for
    # Deep Learning", arXiv:2209.05433). "fp8" names the E4M3/E5M2 hybrid recipe.
    "fp8": LowPrecisionFormat(8, source="arXiv:2209.05433 (E4M3/E5M2, per-tensor scale)"),
    "fp8_e4m3": LowPrecisionFormat(8, source="arXiv:2209.05433"),
    "fp8_e5m2": LowPrecisionFormat(8, source="arXiv:2209.05433"),
    # HiFloat8: Huawei's 8-bit tapered-precision float (Luo et al., arXiv:2409.16626),
    # one format for forward and backward, per-tensor scaling, no block scales.
    "hif8": LowPrecisionFormat(8, source="HiFloat8, arXiv:2409.16626"),
    # OCP Microscaling Formats (MX) Specification v1.0 (2023), s5: a block of 32
    # elements shares one 8-bit E8M0 (power-of-two) scale.
    "mxfp8": LowPrecisionFormat(8, 32, 8, False, "OCP MX spec v1.0: k=32, E8M0 scale"),
    "mxfp6": LowPrecisionFormat(6, 32, 8, False, "OCP MX spec v1.0: k=32, E8M0 scale"),
    "mxfp4": LowPrecisionFormat(4, 32, 8, False, "OCP MX spec v1.0: k=32, E8M0 scale"),
    # NVFP4: E2M1 elements, one FP8 E4M3 scale per 16 elements plus one fp32 scale per
    # tensor (NVIDIA, "Introducing NVFP4 for efficient and accurate low-precision
    # inference", NVIDIA technical blog 2025; Blackwell tensor cores scale in hardware).
    "nvfp4": LowPrecisionFormat(4, 16, 8, True, "NVIDIA NVFP4: 16-element blocks, E4M3 scale + fp32 per tensor"),
    # A bare E2M1 element (no block scale), e.g. the storage of a scale kept elsewhere.
    "fp4": LowPrecisionFormat(4, source="OCP MX spec v1.0 FP4 E2M1 element"),
}

BYTES_PER_DTYPE = {
    "fp64": 8,
    "fp32": 4,
    "tf32": 4,
    "bf16": 2,
    "fp16": 2,
    "int8": 1,
    "int4": 0.5,
    **{name: fmt.bytes_per_element for name, fmt in LOW_PRECISION.items()},
}


def is_low_precision(dtype: str) -> bool:
    """FP8 or narrower floating-point formats (those a recipe casts to before a GEMM)."""
    return dtype in LOW_PRECISION


def dtype_bytes(dtype: str) -> float:
    try:
        return BYTES_PER_DTYPE[dtype]
    except KeyError:
        raise InputError(
            f"unknown dtype '{dtype}'; expected one of {', '.join(BYTES_PER_DTYPE)}"
        ) from None
