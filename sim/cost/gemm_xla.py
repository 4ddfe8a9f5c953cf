"""XLA's GPU dot on sm_90 as its matmul perf table times it (``--impl xla-sm90``;
docs/cost_model.md, "XLA's dot on sm_90").

The table (``kDefaultMatmulPTable`` "sm_90", openxla/xla
xla/service/gpu/model/matmul_interpolator_data.h; validation rows G18) is written by
xla/tools/matmul_perf_table_gen.cc: each entry is one HLO ``dot`` compiled with the HLO passes
on (``CreateExecutable(module, run_hlo_passes=true)``, debug options from flags, so XLA
autotunes between cuBLAS and its Triton GEMM configs), warmed up once, then run 5 times on each
of two argument sets while ``HloOpProfiler::GetKernelTracer()`` records every
CUPTI_ACTIVITY_KIND_KERNEL activity; the entry is the median kernel duration
(xla/service/gpu/model/hlo_op_profiler.cc ``CuptiKernelTracer::getMedianKernelTimeNs``), stored
as ``2 m n k b / t`` and as ``clock_rate_ghz x t`` cycles.

What the generic GEMM path does not carry is that measurement's per-dot floor. The same tool's
usage text (xla/tools/matmul_perf_table_gen_main.cc ``kUsageText``, example 2, "sm_90") prints
its output for three dots with next to no work, BF16: 16x16x16 and 8x16x16 at 9440 cycles,
24x16x16 at 10961. At the sm_90 part's 1.98 GHz boost clock (H100 SXM5; the clock XLA's
``DeviceDescription::clock_rate_ghz`` reports) these are 4768 ns and 5536 ns, both whole
multiples of 32 ns (149 and 173), as quantised timestamps would give; at the H100 PCIe's
1.755 GHz they would be 5379 and 6246 ns, not multiples (the clock is INFERRED from that, the
tick size is not sourced). A dot that does no work
thus measures 4.77 us (the median of the three) where the roofline prices a zero-work kernel
at its fill terms (~2.0 us on H100 SXM). The XLA dot is priced as the generic GEMM plus that
difference; what makes up the 4.77 us (kernel prologue, the serialising KERNEL activity kind,
the emitter's kernel) is not recorded, so it is one measured constant, not a breakdown.

That difference is a constant of the measurement, so the model's price of the zero-work dot
is taken on the part that was measured (``XLA_MEASURED_DEVICE``, the H100 SXM5 whose clock
is read above), not on the device being priced: re-deriving it on a what-if device (more
FLOP/s, more bandwidth) moved the constant by as much as the what-if shortened the model's
zero-work dot (its fill terms), so a faster device priced a small dot up to 9% slower.
"""

from __future__ import annotations

from xpusim.hwprofiles.spec import Device

XLA_IMPLS = ("xla-sm90",)
XLA_DTYPES = ("bf16",)  # the usage-text dots are BF16 (dtypes_spec lhs=bf16,rhs=bf16,out=bf16)
# matmul_perf_table_gen_main.cc kUsageText example 2 ("sm_90"): clock_cycles of a 16x16x16,
# 8x16x16 and 24x16x16 BF16 dot.
ZERO_WORK_DOT_CYCLES = (9440, 9440, 10961)
ZERO_WORK_DOT_MNK = (16, 16, 16)  # the smallest of them, priced by the model for the offset
SM90_CLOCK_GHZ = 1.98  # H100 SXM5 boost clock (NVIDIA H100 specification: 1.98 GHz)
XLA_MEASURED_DEVICE = "h100-sxm5-80gb"  # the sm_90 part at that clock (INFERRED, above)
# The compute capability of the devices the constant is taken to hold for: sm_90 (Hopper),
# read from the profile's ``[kernels] compute_capability``.
XLA_SM90_CAPABILITY = "9.0"


def zero_work_dot_s() -> float:
    """Seconds of a zero-work XLA dot in the sm_90 table's measurement: the median of the
    usage text's three cycle counts at 1.98 GHz (9440 cycles: 4.768 us)."""
    cycles = sorted(ZERO_WORK_DOT_CYCLES)[len(ZERO_WORK_DOT_CYCLES) // 2]
    return cycles / (SM90_CLOCK_GHZ * 1e9)


def xla_fixed_s(zero_work_model_s: float) -> float:
    """Seconds the XLA measurement adds to a dot beyond the generic model: the zero-work dot's
    measured time less what the model prices for it (``zero_work_model_s``, its device body
    without the host launch); never negative."""
    return max(0.0, zero_work_dot_s() - zero_work_model_s)


def xla_impl_error(impl: str | None, device: Device | None, dtype: str) -> str | None:
    """Why ``op gemm --impl impl`` cannot run on ``device`` in ``dtype`` (None: it can): the
    table is BF16 and sm_90's (a profile whose ``compute_capability`` is "9.0"); ``device``
    None or ``dtype`` "" skips that check."""
    if impl not in XLA_IMPLS:
        return None
    if dtype and dtype not in XLA_DTYPES:
        return (f"op gemm --impl {impl}: the sm_90 dot floor is measured for BF16 dots; "
                f"give --dtype {' or '.join(XLA_DTYPES)}")
    if device is None:
        return None
    cc = device.kernels.compute_capability
    if cc != XLA_SM90_CAPABILITY:
        return (f"op gemm --impl {impl}: measured on sm_90 (Hopper), and {device.name} has "
                f"compute capability {cc or 'not stated'}; give a Hopper profile (one whose "
                f'[kernels] compute_capability = "{XLA_SM90_CAPABILITY}", e.g. h100-sxm5-80gb)')
    return None


__all__ = [
    "SM90_CLOCK_GHZ",
    "XLA_DTYPES",
    "XLA_IMPLS",
    "XLA_MEASURED_DEVICE",
    "XLA_SM90_CAPABILITY",
    "ZERO_WORK_DOT_CYCLES",
    "ZERO_WORK_DOT_MNK",
    "xla_fixed_s",
    "xla_impl_error",
    "zero_work_dot_s",
]
