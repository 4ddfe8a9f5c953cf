"""The calibration fit: vectorised model == RooflineModel, and known parameters are recovered."""

from __future__ import annotations

import numpy as np
import pytest
from xpusim.calibrate.fit import FitParams, build_table, case_times, fit, llc_bytes, op_times
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel

BASE = load_device("cpu-host")

TRUE = FitParams(
    matrix_max=0.42,
    matrix_half_flops=3.0e6,
    vector_max=0.3,
    vector_half_flops=2.0e5,
    memory_max=0.75,
    memory_half_bytes=4.0e4,
    launch_overhead_s=4.0e-6,
    cache_speedup=2.5,
    kind_speed={"softmax": 0.6},
    kind_overhead_s={"softmax": 3.0e-6},
)


def synthetic_cases() -> list[list]:
    """Cases spanning every regime, so each parameter is identifiable."""
    cases: list[list] = []
    for m in (8, 32, 128, 512, 1024):
        for k in (16, 256, 1024):
            cases.append([ops.gemm("g", m, 256, k, "fp32")])
    for numel in (1e3, 1e4, 1e5, 1e6, 4e6, 1.6e7):
        cases.append([ops.memcpy("c", numel * 4)])
        cases.append([ops.elementwise("e", numel, "fp32", 1.0, 2, 1)])
        cases.append([ops.elementwise("heavy", numel, "fp32", 200.0, 1, 1)])  # vector-bound
    for rows in (16, 256, 2048):
        for cols in (128, 2048):
            cases.append([ops.softmax("s", rows, cols, "fp32")])
    # Multi-op cases: a small kernel of several kinds, summed.
    cases.append(
        [
            ops.gemm("a", 64, 64, 64, "fp32"),
            ops.softmax("b", 64, 64, "fp32"),
            ops.gemm("c", 64, 64, 64, "fp32"),
        ]
    )
    return cases


def roofline_times(cases: list[list], device) -> np.ndarray:
    model = RooflineModel(device)
    return np.array([sum(model.time(op).time_s for op in case) for case in cases])


def test_vectorised_model_matches_roofline():
    cases = synthetic_cases()
    dev = TRUE.to_device(BASE)
    table = build_table(cases, BASE)
    np.testing.assert_allclose(case_times(table, TRUE), roofline_times(cases, dev), rtol=1e-12)


def test_vectorised_model_matches_roofline_on_moe_layers():
    """Weights read in the packing phase (roofline.l2_missed_weight_bytes): from the cache
    tier (12 MiB of expert weights) and from main memory (96 MiB), restated alike."""
    from xpusim.sim.workloads.moe import describe_moe

    cases = [
        describe_moe(64, 256, 512, 8, 2).ops(),
        describe_moe(100, 512, 1024, 16, 4, 1, 1024).ops(),
    ]
    p = FitParams(**{**TRUE.__dict__, "overlap": 0.4})
    table = build_table(cases, BASE)
    assert table.pack_bytes is not None and table.pack_cached is not None
    assert table.pack_bytes.max() == 512 * 1024 * 4
    assert table.pack_cached.any() and not table.pack_cached.all()
    np.testing.assert_allclose(
        case_times(table, p), roofline_times(cases, p.to_device(BASE)), rtol=1e-12
    )


def test_max_above_one_raises_peak_without_changing_times():
    p = FitParams(1.7, 1e6, 2.0, 1e5, 3.0, 1e4, 2e-6, 1.5)
    dev = p.to_device(BASE)
    assert dev.efficiency.matrix_max == 1.0 and dev.efficiency.memory_max == 1.0
    assert dev.matrix_peak["fp32"] == pytest.approx(1.7 * BASE.matrix_peak["fp32"])
    assert dev.hbm_bandwidth == pytest.approx(3.0 * BASE.hbm_bandwidth)
    cases = synthetic_cases()
    table = build_table(cases, BASE)
    np.testing.assert_allclose(case_times(table, p), roofline_times(cases, dev), rtol=1e-12)


def test_cache_tier_uses_the_last_level_cache():
    assert llc_bytes(BASE) == 32 * 2**20  # cpu-host's L3
    table = build_table([[ops.memcpy("small", 1e6)], [ops.memcpy("big", 1e8)]], BASE)
    slow, fast = FitParams(**{**TRUE.__dict__, "cache_speedup": 1.0}), TRUE
    t_slow, t_fast = op_times(table, slow), op_times(table, fast)
    assert t_fast[0] < t_slow[0]  # 2 MB of traffic fits the 32 MiB L3
    assert t_fast[1] == t_slow[1]  # 200 MB does not


def test_fit_recovers_known_parameters_within_one_percent():
    cases = synthetic_cases()
    measured = roofline_times(cases, TRUE.to_device(BASE))
    table = build_table(cases, BASE)
    result = fit(table, measured, FitParams.from_device(BASE))
    got = result.params
    for name in (
        "matrix_max",
        "matrix_half_flops",
        "vector_max",
        "vector_half_flops",
        "memory_max",
        "memory_half_bytes",
        "launch_overhead_s",
        "cache_speedup",
    ):
        assert getattr(got, name) == pytest.approx(getattr(TRUE, name), rel=0.01), name
    assert got.kind_speed["softmax"] == pytest.approx(0.6, rel=0.01)
    assert got.kind_overhead_s["softmax"] == pytest.approx(3.0e-6, rel=0.01)
    assert result.median_abs_error < 1e-6
    assert result.fitted_kinds == ("softmax",)


def test_fit_rejects_mismatched_measurements():
    table = build_table(synthetic_cases(), BASE)
    with pytest.raises(ValueError):
        fit(table, [1e-3], FitParams.from_device(BASE))
    with pytest.raises(ValueError):
        fit(table, [-1.0] * table.n_cases, FitParams.from_device(BASE))
