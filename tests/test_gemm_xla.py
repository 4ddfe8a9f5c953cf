"""XLA's dot on sm_90 as its matmul perf table times it (sim/cost/gemm_xla.py, --impl xla-sm90):
the generic GEMM plus the measured zero-work dot less the model's own price of that dot."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.api.op import op
from xpusim.sim.cost import RooflineModel
from xpusim.sim.cost.gemm_xla import xla_fixed_s, xla_impl_error, zero_work_dot_s
from xpusim.sim.errors import InputError

H100 = "h100-sxm5-80gb"


def test_zero_work_dot_is_9440_cycles_at_1_98_ghz():
    """Median of (9440, 9440, 10961) cycles = 9440; / 1.98 GHz = 4767.7 ns."""
    assert zero_work_dot_s() == pytest.approx(4.7677e-6, rel=1e-4)
    assert xla_fixed_s(2.0e-6) == pytest.approx(2.7677e-6, rel=1e-4)
    assert xla_fixed_s(5.0e-6) == 0.0  # a model already slower than the floor adds nothing


def test_xla_dot_adds_the_floor_difference_to_the_generic_gemm():
    """1024 x 256 x 256 BF16 on H100 SXM, kernel timing: generic 2.71 us; the model prices the
    16 x 16 x 16 dot at 2.01 us, so XLA's adds 4.77 - 2.01 = 2.76 us: 5.47 us."""
    model = RooflineModel(load_device(H100))
    zero = model.time(ops.gemm("z", 16, 16, 16, "bf16"))
    zero_body = zero.time_s - zero.overhead_s
    assert zero_body == pytest.approx(2.01e-6, abs=0.01e-6)
    generic = op(kind="gemm", device=H100, m=1024, n=256, k=256, timing="kernel")
    xla = op(kind="gemm", device=H100, m=1024, n=256, k=256, timing="kernel", impl="xla-sm90")
    assert xla.time_s - generic.time_s == pytest.approx(zero_work_dot_s() - zero_body, rel=1e-9)
    assert xla.time_s == pytest.approx(5.47e-6, abs=0.01e-6)
    # The fixed term is device time: launch timing adds the host launch on top of it.
    launched = op(kind="gemm", device=H100, m=1024, n=256, k=256, impl="xla-sm90")
    assert launched.time_s - xla.time_s == pytest.approx(5e-6, rel=1e-6)


def test_xla_tiles_are_the_generic_ones():
    """xla-sm90 does not take DeepGEMM's block rule: the compute term is the generic one."""
    model = RooflineModel(load_device(H100))
    generic = model.time(ops.gemm("g", 256, 4096, 1024, "bf16"))
    xla = model.time(ops.gemm("x", 256, 4096, 1024, "bf16", impl="xla-sm90"))
    assert xla.compute_s == generic.compute_s
    assert model.impl_fixed_s(ops.gemm("g", 256, 4096, 1024, "bf16")) == 0.0
    assert xla.details["xla_fixed_s"] == pytest.approx(xla.time_s - generic.time_s, rel=1e-9)


def test_xla_impl_refuses_other_dtypes_and_devices():
    assert xla_impl_error("deepgemm", load_device("b200"), "fp8") is None
    assert xla_impl_error("xla-sm90", load_device("h20-96gb"), "bf16") is None  # sm_90 too
    why = xla_impl_error("xla-sm90", load_device("l40s"), "bf16")
    assert why is not None and "not stated" in why
    with pytest.raises(InputError, match="BF16"):
        op(kind="gemm", device=H100, m=256, n=256, k=256, dtype="fp8", impl="xla-sm90")
    with pytest.raises(InputError, match="sm_90"):
        op(kind="gemm", device="b200", m=256, n=256, k=256, impl="xla-sm90")


def _faster(device, field: str, factor: float):
    if field == "matrix_peak":
        return replace(device, matrix_peak={k: v * factor for k, v in device.matrix_peak.items()})
    if field == "l2_bandwidth":
        return replace(device, kernels=replace(device.kernels,
                                               l2_bandwidth=device.kernels.l2_bandwidth * factor))
    return replace(device, **{field: getattr(device, field) * factor})


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 16384), n=st.integers(1, 512), k=st.integers(1, 16384),
       field=st.sampled_from(["matrix_peak", "hbm_bandwidth", "clock_hz", "l2_bandwidth"]),
       factor=st.floats(1.0, 4.0))
def test_a_faster_device_never_slows_an_xla_dot(m, n, k, field, factor):
    """The floor difference is the measurement's constant: it was re-derived on the priced
    device, so a 2x matrix peak shortened the model's zero-work dot (its fill terms) and
    lengthened a 5478 x 8 x 505 dot by 9%."""
    h100 = load_device(H100)
    slow = RooflineModel(h100).time(ops.gemm("x", m, n, k, "bf16", impl="xla-sm90")).time_s
    fast_device = _faster(h100, field, factor)
    fast = RooflineModel(fast_device).time(ops.gemm("x", m, n, k, "bf16", impl="xla-sm90"))
    assert fast.time_s <= slow * (1 + 1e-12)
