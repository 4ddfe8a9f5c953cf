"""Calibration overlays: written by calibrate.overlay, read back by hwprofiles.loader."""

from __future__ import annotations

import tomllib

import pytest
from xpusim.calibrate.fit import FitParams
from xpusim.calibrate.fit_result import FitResult
from xpusim.calibrate.overlay import dumps, overlay_doc, write_overlay
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel

BASE = load_device("cpu-host")


def result(params: FitParams) -> FitResult:
    return FitResult(
        params,
        FitParams.from_device(BASE),
        0.1,
        0.05,
        0.04,
        0.09,
        50,
        tuple(params.kind_speed),
        (),
        True,
        "ok",
    )


PROV = {
    "device_name": "test cpu",
    "date": "2026-01-01T00:00:00Z",
    "threads": 1,
    "mode": "quick",
    "seed": 7,
    "torch_version": "x",
}


def test_round_trip_reproduces_the_fitted_device(tmp_path):
    p = FitParams(
        0.3,
        2e6,
        0.4,
        3e5,
        0.7,
        5e4,
        2.5e-6,
        2.0,
        0.5,
        kind_speed={"conv2d": 1.4},
        kind_overhead_s={"conv2d": 2e-6},
    )
    path = write_overlay(tmp_path / "cal.toml", overlay_doc(BASE, result(p), PROV))
    loaded = load_device("cpu-host", calibration=path)
    e = loaded.efficiency
    assert e.matrix_max == pytest.approx(0.3, rel=1e-5)
    assert e.vector_half_flops == pytest.approx(3e5, rel=1e-5)
    assert e.launch_overhead_s == pytest.approx(2.5e-6, rel=1e-5)
    assert e.cache_speedup == pytest.approx(2.0, rel=1e-5)
    assert e.overlap == pytest.approx(0.5, rel=1e-5)
    assert e.cache_bytes == 32 * 2**20
    # The overlay's kinds merge onto the profile's own estimates (cpu-host: page_fault).
    assert e.kind_speed == {"conv2d": pytest.approx(1.4, rel=1e-5), "page_fault": 0.1}
    expected = p.to_device(BASE)
    for op in (
        ops.gemm("g", 100, 200, 300, "fp32"),
        ops.memcpy("c", 1e6),
        ops.conv2d("conv", 1, 16, 16, 32, 32, 3),
        ops.softmax("s", 64, 64, "fp32"),
    ):
        assert RooflineModel(loaded).time(op).time_s == pytest.approx(
            RooflineModel(expected).time(op).time_s, rel=1e-5
        )


def test_overlay_raises_peaks_when_max_exceeds_one(tmp_path):
    p = FitParams(1.5, 2e6, 0.4, 3e5, 2.0, 5e4, 2.5e-6)
    doc = overlay_doc(BASE, result(p), PROV)
    assert doc["matrix"]["peak_tflops"]["fp32"] == pytest.approx(1.5 * 0.536)
    assert doc["hbm"]["bandwidth_gbps"] == pytest.approx(2.0 * 40)
    loaded = load_device("cpu-host", calibration=write_overlay(tmp_path / "c.toml", doc))
    assert loaded.efficiency.matrix_max == 1.0
    assert loaded.hbm_bandwidth == pytest.approx(80e9)


def test_provenance_and_fit_are_kept_as_metadata(tmp_path):
    p = FitParams(0.3, 2e6, 0.4, 3e5, 0.7, 5e4, 2.5e-6)
    path = write_overlay(tmp_path / "cal.toml", overlay_doc(BASE, result(p), PROV))
    raw = tomllib.loads(path.read_text())
    assert raw["kind"] == "calibration" and raw["device"] == "cpu-host"
    assert raw["provenance"]["device_name"] == "test cpu"
    assert raw["fit"]["median_abs_error"] == pytest.approx(0.04)


def test_toml_writer_escapes_and_nests():
    text = dumps({"a": 1, "t": {"s": 'say "hi"\n', "d": {"x": 1.5}, "l": [1, 2]}})
    assert tomllib.loads(text) == {"a": 1, "t": {"s": 'say "hi"\n', "d": {"x": 1.5}, "l": [1, 2]}}


def test_cpu_timed_with_fewer_threads_scales_cores_and_peaks():
    from xpusim.calibrate.device import LocalDevice
    from xpusim.calibrate.pipeline import load_base

    local = LocalDevice("cpu", "cpu", "test", "x", 1, "test", "now")
    dev = load_base("cpu-host", local)
    assert dev.cores == dev.matrix_cores == 1
    assert dev.matrix_peak["fp32"] == pytest.approx(BASE.matrix_peak["fp32"] / BASE.cores)
    assert load_base("cpu-host", None).cores == BASE.cores  # no local device: the profile as is
