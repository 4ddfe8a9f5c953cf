"""First-touch page faults of fresh >= 32 MiB CPU outputs (sim/cost/page_faults.py):
priced on a CPU only, by hand-computed values, the same in the fit's vectorised model,
stated by standard attention's describe(), fitted from the `page_fault` microbenchmark."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from xpusim.calibrate.fit import FitParams, build_table, case_times
from xpusim.calibrate.page_fault_micro import page_fault_ops
from xpusim.calibrate.suites import SUITES, split_shapes
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel
from xpusim.sim.cost.page_faults import MMAP_THRESHOLD_MAX_BYTES, fault_time_s, fresh_page_bytes
from xpusim.sim.workloads.attention import describe_standard_attention

MIB = 2.0**20
CPU = load_device("cpu-host")


def test_threshold_is_glibcs_64_bit_mmap_cap():
    assert MMAP_THRESHOLD_MAX_BYTES == 32 * MIB  # 4 * 1024 * 1024 * sizeof(long)
    assert fresh_page_bytes(32 * MIB - 1) == 0.0
    # 8192 pages of data and one more: the measured 8,193 minor faults per call at 32 MiB.
    assert fresh_page_bytes(32 * MIB) == 8193 * 4096
    assert fresh_page_bytes(64 * MIB + 1) == (16385 + 1) * 4096


def test_fault_time_by_hand():
    eff = replace(CPU.efficiency, memory_max=0.5, memory_half_bytes=1.0, cache_bytes=1e12,
                  cache_speedup=4.0, kind_speed={"page_fault": 0.25},
                  kind_overhead_s={"page_fault": 2e-6})
    dev = replace(CPU, efficiency=eff)
    op = replace(ops.elementwise("scale", 16 * MIB, "fp32", 1.0, 1, 1), fresh_bytes=64 * MIB)
    # (16385 pages x 4096 B + 1 B of half) / (40 GB/s x 0.5) / 0.25 + 2 us; no cache tier
    # although the bytes fit the 1 TB one.
    want = (16385 * 4096 + 1.0) / (40e9 * 0.5) / 0.25 + 2e-6
    assert fault_time_s(op, dev) == pytest.approx(want, rel=1e-12)
    model = RooflineModel(dev)
    base = RooflineModel(dev).time(replace(op, fresh_bytes=0.0))
    cost = model.time(op)
    assert cost.time_s == pytest.approx(base.time_s + want, rel=1e-12)
    assert cost.details["page_fault_s"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("device", ["h100-sxm5-80gb", "ascend-910b2"])
def test_no_page_faults_off_a_cpu(device):
    dev = load_device(device)
    model = RooflineModel(dev)
    graph = describe_standard_attention(1, 4, 2048, 64, dtype="bf16")
    for op in graph.ops():
        assert model.time(op) == model.time(replace(op, fresh_bytes=0.0))


def test_standard_attention_states_its_fresh_outputs():
    graph = describe_standard_attention(1, 4, 2048, 64, causal=True)
    fresh = {op.name: op.fresh_bytes for op in graph.ops()}
    scores = 4 * 2048 * 2048 * 4.0  # 64 MiB of fp32 scores
    assert fresh == {"mask_full": 2048 * 2048 * 4.0, "mask_triu": 2048 * 2048 * 4.0,
                     "qk": scores, "scale": scores, "mask_add": scores, "softmax": scores,
                     "pv": 4 * 2048 * 64 * 4.0}
    model = RooflineModel(CPU)
    faulted = [op.name for op in graph.ops() if "page_fault_s" in model.time(op).details]
    assert faulted == ["qk", "scale", "mask_add", "softmax"]  # the 16 MiB mask stays below


def test_vectorised_model_prices_faults_as_roofline():
    p = FitParams(0.4, 3e6, 0.3, 1.0, 0.6, 1.0, 3e-6, 2.0, 0.3,
                  kind_speed={"page_fault": 0.3}, kind_overhead_s={"page_fault": 5e-6})
    cases = [page_fault_ops({"mib": m}, "fp32") for m in (16, 32, 64)]
    cases.append(list(describe_standard_attention(1, 4, 2048, 64).ops()))
    table = build_table(cases, CPU)
    model = RooflineModel(p.to_device(CPU))
    want = [sum(model.time(op).time_s for op in case) for case in cases]
    np.testing.assert_allclose(case_times(table, p), want, rtol=1e-12)


def test_page_fault_suite_gives_the_fit_its_kind():
    suite = SUITES["page_fault"]
    for shapes in (suite.quick, suite.full):
        splits = split_shapes("page_fault", shapes, 20260)
        assert splits.count("fit") >= 3
    table = build_table([suite.graph(s, "fp32") for s in suite.quick], CPU)
    assert "page_fault" in table.fitted_kinds(FitParams.from_device(CPU))


def test_calibration_pins_glibc_malloc_at_its_dynamic_ceiling():
    """The harness fixes glibc's thresholds at the state page_faults.py prices: mmap at
    DEFAULT_MMAP_THRESHOLD_MAX (32 MiB), trim at twice that (calibrate/allocator.py)."""
    import platform

    from xpusim.calibrate.allocator import glibc_thresholds, pin_glibc_malloc

    assert glibc_thresholds() == (32 * 2**20, 64 * 2**20)
    if platform.libc_ver()[0] == "glibc":
        assert pin_glibc_malloc()


def test_cpu_timing_pins_the_allocator_before_the_first_case(monkeypatch):
    """measure_cases (calibrate and validate) pins glibc's thresholds on a CPU, so a case is
    timed in the same allocator state whatever ran before it in the process."""
    pytest.importorskip("torch")
    from xpusim.calibrate import pipeline
    from xpusim.calibrate.device import LocalDevice
    from xpusim.calibrate.harness import HarnessConfig
    from xpusim.calibrate.suites import cases

    calls: list[str] = []
    monkeypatch.setattr(pipeline, "pin_glibc_malloc", lambda: calls.append("pin") or True)
    case = next(c for c in cases(["add"], quick=True) if c.params["numel"] == 4096)
    local = LocalDevice("cpu", "cpu", "test cpu", "x", 1, "test cpu", "2026-12-07")
    config = HarnessConfig(warmup=1, min_reps=5, max_reps=5, budget_s=0.05)
    out = pipeline.measure_cases([case], local, config)
    assert calls == ["pin"] and len(out) == 1


def test_zen4_quick_run_prices_faults_only_where_fresh_outputs_reach_32_mib():
    """On the stored Zen 4 quick run (calibrate/data/zen4-host), only the page_fault suite and
    standard attention's >= 32 MiB score tensors are priced with faults: FastAttention, MoE and
    CDC are not, so a settled harness must time them without any. Its refit finds the fp32
    GEMM rate of the committed AMD overlay (oneMKL runs the same path on both hosts)."""
    from pathlib import Path

    from xpusim.calibrate.pipeline import (
        fit_measured,
        load_base,
        modelled_faults,
        read_measurements,
        recorded_device,
    )

    root = Path(__file__).resolve().parents[1] / "calibrate/data"
    csv_path = root / "zen4-host/quick-1424.measurements.csv"
    rows = read_measurements(csv_path)
    faulting = {m.case.suite for m in rows if modelled_faults(m.case) > 0}
    assert faulting == {"page_fault", "standard-attention"}
    # As `calibrate --from-measurements` does: the base scaled to the run's 1 timed thread.
    base = load_base("cpu-host", recorded_device(csv_path, "cpu"))
    result = fit_measured(rows, base)
    fitted = result.params.to_device(base)
    committed = load_device("cpu-host", calibration=root / "cpu-host/overlay.toml")

    def fp32_gemm_rate(d) -> float:
        return d.matrix_peak["fp32"] * d.efficiency.matrix_max

    assert result.success
    assert fp32_gemm_rate(fitted) == pytest.approx(fp32_gemm_rate(committed), rel=0.15)
