"""The predict / calibrate / validate commands, end to end (synthetic and real timings)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from xpusim.calibrate.fit import FitParams
from xpusim.calibrate.harness import summarise
from xpusim.calibrate.pipeline import Measured, predict_case, read_measurements, write_measurements
from xpusim.calibrate.suites import cases, split_shapes
from xpusim.hwprofiles import load_device
from xpusim.sim.cli.main import main
from xpusim.sim.cost import RooflineModel
from xpusim.sim.kernel_registry import describe_kernel, parse_shape

SUITES = ["gemm", "memcpy", "add", "softmax", "fastattention", "moe", "cdc"]


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "name,shape",
    [
        ("fastattention", "batch=1,heads=4,seq=256,head_dim=64,causal=1"),
        ("standard-attention", "heads=4,seq=256,head_dim=64,kv_heads=2"),
        ("moe", "tokens=64,hidden=256,expert_ffn=512,experts=8,top_k=2,shared_experts=1"),
        ("cdc", "upscale=4,batch=1,height=16,width=16"),
    ],
)
def test_predict_kernel_is_the_sum_of_its_ops(capsys, name, shape):
    out = run_json(
        capsys, ["predict", "kernel", name, "--shape", shape, "--device", "cpu-host", "--json"]
    )
    assert out["time_s"] == pytest.approx(sum(o["time_s"] for o in out["ops"]))
    model = RooflineModel(load_device("cpu-host"))
    graph = describe_kernel(name, parse_shape(name, shape))
    assert out["time_s"] == pytest.approx(sum(model.time(op).time_s for op in graph.ops()))
    assert out["num_ops"] == len(graph.ops())


def test_predict_rejects_bad_shapes(capsys):
    assert main(["predict", "kernel", "moe", "--shape", "tokens=64,colour=3"]) == 2
    assert "unknown shape key 'colour'" in capsys.readouterr().err
    assert main(["predict", "kernel", "fastattention", "--shape", "heads=4,seq=128"]) == 2
    assert "head_dim" in capsys.readouterr().err
    assert main(["predict", "kernel", "cdc", "--shape", "height=-16,width=16"]) == 2


def test_split_is_fixed_by_the_seed():
    shapes = tuple({"n": i} for i in range(20))
    a, b = split_shapes("s", shapes, 1), split_shapes("s", shapes, 1)
    assert a == b and a.count("heldout") == 7
    assert split_shapes("s", shapes, 2) != a


def synthetic_csv(tmp_path, noise: float = 0.0):
    """Measurements made by the model itself with known parameters (+ optional noise)."""
    base = load_device("cpu-host")
    truth = FitParams(0.3, 2e6, 0.4, 3e5, 0.7, 5e4, 3e-6, 2.0).to_device(base)
    rng = np.random.default_rng(0)
    rows = []
    for case in cases(SUITES, quick=True):
        t = predict_case(case, truth) * float(np.exp(rng.normal(0, noise)))
        rows.append(Measured(case, summarise([t] * 5)))
    return write_measurements(tmp_path / "m.csv", rows)


def test_calibrate_and_validate_from_measurements(tmp_path, capsys):
    csv = synthetic_csv(tmp_path)
    overlay = tmp_path / "cal.toml"
    out = run_json(
        capsys,
        ["calibrate", "--from-measurements", str(csv), "--out", str(overlay), "--quick", "--json"],
    )
    assert out["fit"]["median_abs_error"] < 1e-3
    report = run_json(
        capsys,
        [
            "validate",
            "--calibration",
            str(overlay),
            "--measurements",
            str(csv),
            "--out",
            str(tmp_path / "v"),
            "--check",
            "--json",
        ],
    )
    assert report["check"]["passed"]
    for suite in ("fastattention", "moe", "cdc"):
        assert report["suites"][suite]["calibrated"]["median_abs_error"] < 1e-3
    assert (tmp_path / "v" / "validation.png").stat().st_size > 0
    assert (tmp_path / "v" / "validation.csv").read_text().count("\n") == 1 + len(
        [m for m in read_measurements(csv) if m.case.split == "heldout"]
    )
    # Same overlay twice: perfectly repeatable.
    report = run_json(
        capsys,
        [
            "validate",
            "--calibration",
            str(overlay),
            "--measurements",
            str(csv),
            "--out",
            str(tmp_path / "v"),
            "--compare",
            str(overlay),
            "--json",
        ],
    )
    assert report["repeatability"]["max_rel_diff"] == 0.0


def test_validate_check_fails_above_threshold(tmp_path, capsys):
    csv = synthetic_csv(tmp_path, noise=0.3)
    overlay = tmp_path / "cal.toml"
    assert (
        main(["calibrate", "--from-measurements", str(csv), "--out", str(overlay), "--quick"]) == 0
    )
    capsys.readouterr()
    code = main(
        [
            "validate",
            "--calibration",
            str(overlay),
            "--measurements",
            str(csv),
            "--out",
            str(tmp_path / "v"),
            "--check",
            "--max-median-error",
            "0.01",
        ]
    )
    assert code == 1
    assert "FAIL" in capsys.readouterr().out


def test_validate_rejects_a_non_overlay(tmp_path, capsys):
    assert (
        main(
            [
                "validate",
                "--calibration",
                "hwprofiles/devices/cpu-host.toml",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )


def test_quick_calibration_smoke(tmp_path, capsys):
    """Real timings of a few cheap suites: the whole pipeline runs and writes a loadable overlay."""
    overlay = tmp_path / "cal.toml"
    out = run_json(
        capsys,
        [
            "calibrate",
            "--device",
            "cpu",
            "--quick",
            "--threads",
            "1",
            "--suites",
            "memcpy,add,softmax,layernorm",
            "--out",
            str(overlay),
            "--json",
        ],
    )
    assert out["provenance"]["threads"] == 1
    assert (tmp_path / "cal.measurements.csv").exists()
    dev = load_device("cpu-host", calibration=overlay)
    assert 0 < dev.efficiency.memory_max <= 1


def test_every_quick_case_builds_its_graph():
    base = load_device("cpu-host")
    for case in cases(quick=True):
        assert predict_case(case, base) > 0, case.name


def test_moe_suite_prices_the_measured_routing():
    from xpusim.calibrate.kernel_runners import moe_routing_histogram

    shape = {
        "tokens": 64.0,
        "hidden": 256.0,
        "expert_ffn": 512.0,
        "experts": 8.0,
        "top_k": 2.0,
        "shared_experts": 0.0,
    }
    hist = moe_routing_histogram(tuple(sorted(shape.items())), "fp32")
    assert len(hist) == 8 and sum(hist) == 64 * 2  # dropless: every assignment kept
    assert moe_routing_histogram(tuple(sorted(shape.items())), "fp32") == hist  # reproducible
