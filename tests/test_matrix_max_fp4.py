"""Per-format matrix efficiency (hwprofiles/spec.py ``Efficiency.matrix_max_for``).

FP8 and FP4 GEMMs reach their own fraction of their own peaks (B200 / GB200 profiles:
MAMF bf16 and FP8 rows, vLLM's CUTLASS NVFP4 row; sim/data/validation/gemm.toml G30, G32).
Hand-computed values: a 4736 x 1024 x 8192 GEMM is exactly one wave of 148 blocks of
128 x 256 on a 148-SM Blackwell, so the executed work equals the 2mnk FLOPs.
"""

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_device
from xpusim.hwprofiles.spec import Efficiency
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel


def test_matrix_max_for_picks_the_format_family():
    eff = Efficiency(matrix_max=0.8, matrix_max_fp8=0.7, matrix_max_fp4=0.4)
    assert eff.matrix_max_for("bf16") == 0.8
    assert eff.matrix_max_for("mxfp6") == 0.8  # not in either family
    for dtype in ("fp8", "fp8_e4m3", "mxfp8"):
        assert eff.matrix_max_for(dtype) == 0.7
    for dtype in ("fp4", "mxfp4", "nvfp4"):
        assert eff.matrix_max_for(dtype) == 0.4


def test_unset_fp4_falls_back_to_matrix_max():
    """0 = as matrix_max: every profile without the field (Hopper, Ampere, Ascend) keeps
    pricing FP4 work at its 16-bit fraction, as before the field existed."""
    eff = Efficiency(matrix_max=0.8, matrix_max_fp8=0.7)
    assert eff.matrix_max_for("nvfp4") == 0.8
    assert load_device("h100-sxm5-80gb").efficiency.matrix_max_for("nvfp4") == 0.8


def test_blackwell_profiles_carry_the_fitted_fractions():
    # 16/8-bit: the MAMF best-shape fractions x the typical-shape ratio 1512.8 / 1723.7 (B200
    # cuBLAS bf16 at 16384x6144x4096 over its MAMF-fraction price): B200 0.776, GB200 0.729,
    # each x 0.8776 and rounded to 3 places; GB200 FP8 bisected on Azure's sustained cuBLASLt
    # 8192^3 (0.5887), B200 FP8 its MAMF 0.763 x 0.5887 / 0.723 (GB200's sustained/best ratio)
    # = 0.621; MXFP8 = FP8 x 6.812 / 7.161; FP4 unscaled.
    b200 = load_device("b200").efficiency
    assert (b200.matrix_max, b200.matrix_max_fp8, b200.matrix_max_mxfp8,
            b200.matrix_max_fp4) == (0.681, 0.621, 0.591, 0.434)
    gb200 = load_device("gb200").efficiency
    assert (gb200.matrix_max, gb200.matrix_max_fp8, gb200.matrix_max_mxfp8,
            gb200.matrix_max_fp4) == (0.640, 0.5887, 0.560, 0.411)


@pytest.mark.parametrize(("device", "dtype", "expected_s"), [
    # (79.457 GFLOP + 3.6 GFLOP half) / (9000 TFLOP/s x 0.434)
    ("b200", "nvfp4", 2.12639e-05),
    ("b200", "mxfp4", 2.12639e-05),
    # / (4500 x 0.621)
    ("b200", "fp8", 2.97216e-05),
    # / (2250 x 0.681)
    ("b200", "bf16", 5.42058e-05),
    # (79.457 + 4.0 half) / (10000 x 0.411)
    ("gb200", "nvfp4", 2.03058e-05),
])
def test_compute_time_uses_the_format_fraction(device, dtype, expected_s):
    dev = load_device(device)
    cost = RooflineModel(dev).time(ops.gemm("g", 4736, 1024, 8192, dtype))
    assert cost.details["executed_flops"] == pytest.approx(2 * 4736 * 1024 * 8192)
    assert cost.compute_s == pytest.approx(expected_s, rel=1e-5)


def test_fp4_fraction_moves_only_fp4_gemms():
    dev = load_device("b200")
    faster = replace(dev, efficiency=replace(dev.efficiency, matrix_max_fp4=0.868))
    fp4 = ops.gemm("g", 4736, 1024, 8192, "nvfp4")
    bf16 = ops.gemm("g", 4736, 1024, 8192, "bf16")
    assert RooflineModel(faster).time(fp4).compute_s == pytest.approx(
        RooflineModel(dev).time(fp4).compute_s / 2)
    assert RooflineModel(faster).time(bf16).compute_s == RooflineModel(dev).time(bf16).compute_s


@pytest.mark.parametrize("field, value, too_big", [
    ("matrix_max_fp4", 0.434, 1.5),
    ("matrix_max_mxfp8", 0.726, 1.2),
])
def test_schema_bounds_and_units(field, value, too_big):
    from pydantic import ValidationError
    from xpusim.hwprofiles.schema import EfficiencyFile

    base = dict(matrix_max=0.8, matrix_half_gflop=1.0, vector_max=0.7, vector_half_mflop=1.0,
                memory_max=0.9, memory_half_mib=1.0, launch_overhead_us=5.0, source="test")
    assert getattr(EfficiencyFile(**base).to_spec(), field) == 0.0
    assert getattr(EfficiencyFile(**base, **{field: value}).to_spec(), field) == value
    with pytest.raises(ValidationError):
        EfficiencyFile(**base, **{field: too_big})
