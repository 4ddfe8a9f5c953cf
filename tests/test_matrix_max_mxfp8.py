"""MXFP8's own matrix efficiency (hwprofiles/spec.py ``Efficiency.matrix_max_mxfp8``).

TransformerEngine's GEMM profiling guide (docs/examples/gemm_profiling/gemm_profiling.rst
@ 8f2e635, B300, operands quantised ahead): one layer's 12 GEMMs take 6.812 ms with
per-tensor FP8 and 7.161 ms with MXFP8, so the B200 / GB200 profiles price MXFP8 GEMMs at
``matrix_max_fp8 x 6.812 / 7.161``. Hand-computed values: a 4736 x 1024 x 8192 GEMM is
exactly one wave of 148 blocks of 128 x 256 on a 148-SM Blackwell, so the executed work
equals the 2mnk FLOPs (as in tests/test_matrix_max_fp4.py).
"""

import pytest
from xpusim.hwprofiles import load_device
from xpusim.hwprofiles.spec import Efficiency
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel


def test_mxfp8_takes_its_own_fraction_and_nothing_else_does():
    eff = Efficiency(matrix_max=0.8, matrix_max_fp8=0.7, matrix_max_mxfp8=0.66)
    assert eff.matrix_max_for("mxfp8") == 0.66
    for dtype in ("fp8", "fp8_e4m3", "fp8_e5m2", "hif8"):
        assert eff.matrix_max_for(dtype) == 0.7
    assert eff.matrix_max_for("bf16") == 0.8
    assert eff.matrix_max_for("mxfp4") == 0.8


def test_unset_mxfp8_falls_back_to_the_fp8_fraction():
    """0 = as matrix_max_fp8: Hopper and Ascend profiles price MXFP8 as before."""
    assert Efficiency(matrix_max=0.8, matrix_max_fp8=0.7).matrix_max_for("mxfp8") == 0.7
    assert load_device("h100-sxm5-80gb").efficiency.matrix_max_for("mxfp8") == 0.709


def test_blackwell_profiles_scale_fp8_by_the_te_ratio():
    for name, fp8, mx in (("b200", 0.621, 0.591), ("gb200", 0.5887, 0.560)):
        eff = load_device(name).efficiency
        assert (eff.matrix_max_fp8, eff.matrix_max_mxfp8) == (fp8, mx)
        assert mx == round(fp8 * 6.812 / 7.161, 3)


@pytest.mark.parametrize(("device", "dtype", "expected_s"), [
    # (79.457 GFLOP + 3.6 GFLOP half) / (4500 TFLOP/s x 0.591)
    ("b200", "mxfp8", 3.12303e-05),
    # / (4500 x 0.621): per-tensor FP8 at its own fraction
    ("b200", "fp8", 2.97216e-05),
    # (79.457 + 4.0 half) / (5000 x 0.560)
    ("gb200", "mxfp8", 2.98061e-05),
])
def test_compute_time_uses_the_mxfp8_fraction(device, dtype, expected_s):
    cost = RooflineModel(load_device(device)).time(ops.gemm("g", 4736, 1024, 8192, dtype))
    assert cost.details["executed_flops"] == pytest.approx(2 * 4736 * 1024 * 8192)
    assert cost.compute_s == pytest.approx(expected_s, rel=1e-5)
