"""The fit's conditioning rules: which kinds get a speed and an overhead, held parameters.

Synthetic data from known parameters (the style of tests/test_calibrate_fit.py): the
rules must not cost the recovery of what the data do determine.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from xpusim.calibrate.device import LocalDevice
from xpusim.calibrate.fit import (
    MIN_KIND_SHARE,
    FitParams,
    build_table,
    case_times,
    fit,
    held_parameters,
)
from xpusim.calibrate.pipeline import load_base
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.ir import OpKind

BASE = load_device("cpu-host")
ONE_THREAD = LocalDevice("cpu", "cpu", "test cpu", "2.x", 1, "test cpu", "2026-12-07")
ONE_CORE = load_base("cpu-host", ONE_THREAD)

TRUE = FitParams(
    matrix_max=0.42,
    matrix_half_flops=3.0e6,
    vector_max=0.3,
    vector_half_flops=1.0,
    memory_max=0.75,
    memory_half_bytes=1.0,
    launch_overhead_s=4.0e-6,
    cache_speedup=2.5,
    kind_speed={"softmax": 0.6},
    kind_overhead_s={"softmax": 3.0e-6},
)


def tiny_index_op(name: str, rows: float):
    """An op of the MoE layer's routing kind: a pass over ``rows`` int64 ids."""
    return replace(ops.elementwise(name, rows, "fp32", 1.0, 1, 1), kind=OpKind.ROUTING)


def cases(routing_micro: bool) -> list[list]:
    """GEMMs, copies, elementwise and softmax microbenchmarks; a small 'layer' of GEMMs with
    a few tiny routing ops; with ``routing_micro`` also cases of large routing ops alone."""
    out: list[list] = []
    for m in (8, 32, 128, 512, 1024):
        for k in (16, 256, 1024):
            out.append([ops.gemm("g", m, 256, k, "fp32")])
    for numel in (1e3, 1e4, 1e5, 1e6, 4e6, 1.6e7):
        out.append([ops.memcpy("c", numel * 4)])
        out.append([ops.elementwise("e", numel, "fp32", 1.0, 2, 1)])
        out.append([ops.elementwise("heavy", numel, "fp32", 200.0, 1, 1)])
    for rows in (16, 256, 2048):
        for cols in (128, 2048):
            out.append([ops.softmax("s", rows, cols, "fp32")])
    for tokens in (64, 256, 1024, 4096):
        layer = [ops.gemm(f"x{i}", tokens, 1024, 512, "fp32") for i in range(4)]
        out.append(layer + [tiny_index_op(f"r{i}", tokens * 2) for i in range(7)])
    if routing_micro:
        out += [[tiny_index_op("big", n)] for n in (1e5, 1e6, 4e6, 1.6e7)]
    return out


def measured(case_list: list[list], p: FitParams, base) -> np.ndarray:
    return case_times(build_table(case_list, base), p)


def test_kind_that_never_carries_a_case_is_not_fitted():
    """Tiny routing ops inside GEMM-dominated cases: their speed and overhead would only
    fit the rest of the graph's residual, so the kind is priced as the reference curve."""
    case_list = cases(routing_micro=False)
    table = build_table(case_list, BASE)
    start = FitParams.from_device(BASE)
    shares = table.kind_shares(start)
    routing = table.kinds.index("routing")
    assert 0 < shares[routing].max() < MIN_KIND_SHARE
    assert table.cases_per_kind()["routing"] >= 3  # present in enough cases: not the reason
    assert table.fitted_kinds(start) == ("softmax",)
    true = replace(TRUE, vector_half_flops=2.0e5, memory_half_bytes=4.0e4)
    result = fit(table, measured(case_list, true, BASE), start)
    assert result.fitted_kinds == ("softmax",)
    assert "routing" not in result.params.kind_speed
    for name in ("matrix_max", "matrix_half_flops", "vector_max", "memory_max", "cache_speedup"):
        assert getattr(result.params, name) == pytest.approx(getattr(true, name), rel=0.01), name
    assert result.median_abs_error < 1e-6


def test_kind_with_its_own_cases_is_fitted():
    """The same kind with >= 3 cases of its own ops gets a speed and an overhead."""
    case_list = cases(routing_micro=True)
    table = build_table(case_list, BASE)
    start = FitParams.from_device(BASE)
    assert set(table.fitted_kinds(start)) == {"softmax", "routing"}
    true = replace(
        TRUE,
        vector_half_flops=2.0e5,
        memory_half_bytes=4.0e4,
        kind_speed={"softmax": 0.6, "routing": 0.4},
        kind_overhead_s={"softmax": 3.0e-6, "routing": 2.0e-6},
    )
    result = fit(table, measured(case_list, true, BASE), start)
    assert result.params.kind_speed["routing"] == pytest.approx(0.4, rel=0.01)
    assert result.params.kind_overhead_s["routing"] == pytest.approx(2.0e-6, rel=0.02)


def test_one_core_holds_the_vector_and_memory_half_work():
    assert ONE_CORE.cores == 1
    assert held_parameters(ONE_CORE) == {"vector_half_flops": 1.0, "memory_half_bytes": 1.0}
    assert held_parameters(BASE) == {}  # several cores: fitted as before


def test_held_parameters_keep_the_start_value_and_the_rest_is_recovered():
    case_list = cases(routing_micro=False)
    table = build_table(case_list, ONE_CORE)
    held = held_parameters(ONE_CORE)
    start = replace(FitParams.from_device(ONE_CORE), **held)
    result = fit(table, measured(case_list, TRUE, ONE_CORE), start, fixed=tuple(held))
    got = result.params
    assert got.vector_half_flops == 1.0 and got.memory_half_bytes == 1.0
    assert result.held == ("vector_half_flops", "memory_half_bytes")
    assert not set(result.held) & set(result.at_bound)  # held is not reported as a bound
    for name in ("matrix_max", "matrix_half_flops", "vector_max", "memory_max",
                 "launch_overhead_s", "cache_speedup"):  # fmt: skip
        assert getattr(got, name) == pytest.approx(getattr(TRUE, name), rel=0.01), name
    assert got.kind_speed["softmax"] == pytest.approx(0.6, rel=0.01)
    assert got.kind_overhead_s["softmax"] == pytest.approx(3.0e-6, rel=0.02)


def test_fixed_names_an_unknown_parameter():
    table = build_table(cases(routing_micro=False), BASE)
    t = np.full(table.n_cases, 1e-3)
    with pytest.raises(ValueError, match="routing.speed"):
        fit(table, t, FitParams.from_device(BASE), fixed=("routing.speed",))
