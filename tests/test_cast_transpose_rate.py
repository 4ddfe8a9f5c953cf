"""TransformerEngine's FP8 cast-transpose kernel priced at its measured share of HBM
bandwidth (hwprofiles [kernels] cast_transpose_fraction; sim.cost.roofline.memory_fraction,
sim.training.lowprec.writes_transpose)."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost.roofline import RooflineModel, memory_fraction
from xpusim.sim.training.items import quantize_op
from xpusim.sim.training.layers import low_precision_gemms
from xpusim.sim.training.lowprec import cast_recipe, is_forward_cast, writes_transpose

N = 4096 * 4096  # NVIDIA/TransformerEngine#101's largest point
HALF = 4.19 * 1024**2  # h100-sxm5-80gb memory_half_mib
HBM = 3.35e12


def test_fit_point_by_hand() -> None:
    """4096 x 4096 bf16 -> FP8, both copies: (16,777,216 x (2 + 2 x 1) B + 4.19 MiB)
    / (3.35 TB/s x 0.411) = 71,502,397 / 1.37685e12 = 51.93 us (#101: 51.95 us)."""
    h100 = load_device("h100-sxm5-80gb")
    op = quantize_op("x", N, "fp8", usages=2, transpose=True)
    assert op.main_bytes == N * 4
    t = RooflineModel(h100).memory_time(op)
    assert t == pytest.approx((N * 4 + HALF) / (HBM * 0.411), rel=1e-9)
    assert t == pytest.approx(51.93e-6, rel=1e-3)
    # The same bytes without the transpose stay at memory_max 0.9: 23.72 us.
    plain = quantize_op("x", N, "fp8", usages=2)
    assert RooflineModel(h100).memory_time(plain) == pytest.approx(
        (N * 4 + HALF) / (HBM * 0.9), rel=1e-9)
    assert RooflineModel(h100).memory_time(plain) == pytest.approx(23.72e-6, rel=1e-3)


def test_other_devices_and_ops_unchanged() -> None:
    """Profiles without a measurement keep memory_max; a GEMM is never a transpose cast."""
    b200 = load_device("b200")
    op = quantize_op("x", N, "fp8", usages=2, transpose=True)
    assert b200.kernels.cast_transpose_fraction is None
    assert memory_fraction(op, b200) == b200.efficiency.memory_max
    h100 = load_device("h100-sxm5-80gb")
    assert memory_fraction(op, h100) == 0.411
    assert memory_fraction(ops.gemm("g", 4096, 4096, 4096, "fp8"), h100) == 0.9


@pytest.mark.parametrize(("fmt", "usages", "expected"), [
    ("fp8", 2, True),     # Hopper per-tensor FP8: rowwise + transposed copy
    ("fp8", 1, False),    # Blackwell (non-TN FP8 GEMMs): one copy, no transpose
    ("mxfp8", 2, False),  # MXFP8's columnwise copy keeps the layout
])
def test_which_casts_transpose(fmt: str, usages: int, expected: bool) -> None:
    assert writes_transpose(fmt, usages) is expected


def test_hopper_delayed_casts_carry_the_flag() -> None:
    """Forward input and dC casts of an FP8 linear on a TN-only device are cast-transposes;
    on a non-TN device (one copy) they are plain casts."""
    gemm = ops.gemm("o_proj", 4096, 8192, 1024, "bf16")
    for non_tn, expected in ((False, True), (True, False)):
        out = low_precision_gemms([gemm], "fp8", recipe=cast_recipe("fp8", "delayed", non_tn))
        casts = [o for o in out if is_forward_cast(o)]
        assert casts and all(o.shape.transpose is expected for o in casts)
