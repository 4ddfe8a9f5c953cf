"""Calibrating on a CUDA GPU, checked without one: the GPU -> profile mapping, detect()
with a monkeypatched torch.cuda, the GPU suite selection and grids, the attention kernels'
buffers on the inputs' device, and the device-check script in its CPU mode."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from xpusim.calibrate.device import detect, profile_for_gpu  # noqa: E402
from xpusim.calibrate.pipeline import base_profile, predict_case  # noqa: E402
from xpusim.calibrate.suites import CPU_ONLY, cases, suite_shapes  # noqa: E402
from xpusim.calibrate.validate import heldout_cases  # noqa: E402
from xpusim.hwprofiles import load_device  # noqa: E402
from xpusim.sim.errors import InputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm5-80gb"),  # seen on the device machine
        ("NVIDIA H100 NVL", "h100-nvl"),
        ("NVIDIA H200", "h200-sxm-141gb"),  # seen on the device machine
        ("NVIDIA H20", "h20-96gb"),
        ("NVIDIA H800", "h800-sxm5-80gb"),
        ("NVIDIA GH200 480GB", "gh200-96gb"),
        ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-sxm4-40gb"),
        ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb"),
        ("NVIDIA B200", "b200"),
        ("NVIDIA GB200", "gb200"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L40", "l40"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("Tesla V100-SXM2-32GB", "v100-sxm2-32gb"),
    ],
)
def test_gpu_name_maps_to_its_profile(name, profile):
    assert profile_for_gpu(name) == profile
    assert load_device(profile).name == profile  # the profile exists


@pytest.mark.parametrize(
    "name", ["NVIDIA H100 PCIe", "NVIDIA H200 NVL", "Tesla T4", "NVIDIA A100-PCIE-40GB"]
)
def test_gpu_without_a_profile_asks_for_one(name):
    with pytest.raises(InputError, match="--profile"):
        profile_for_gpu(name)
    assert base_profile("cuda", "h100-sxm5-80gb", name) == "h100-sxm5-80gb"  # named: used


def _fake_cuda(monkeypatch, name: str) -> None:
    props = SimpleNamespace(
        major=9, minor=0, multi_processor_count=132, L2_cache_size=50 * 2**20,
        total_memory=80 * 2**30,
    )  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: props)


def test_detect_cuda_records_the_card_and_maps_its_profile(monkeypatch):
    _fake_cuda(monkeypatch, "NVIDIA H100 80GB HBM3")
    threads = torch.get_num_threads()
    try:
        local = detect("cuda", threads=1)
    finally:
        torch.set_num_threads(threads)
    assert (local.kind, local.torch_device) == ("cuda", "cuda:0")
    assert "cc 9.0, 132 SMs, 50 MiB L2" in local.accelerator
    assert "tf32 matmul" in local.accelerator
    assert base_profile(local.kind, None, local.name) == "h100-sxm5-80gb"


def test_calibrate_on_an_unknown_gpu_fails_before_timing(monkeypatch, tmp_path, capsys):
    from xpusim.sim.cli.main import main

    _fake_cuda(monkeypatch, "Tesla T4")
    threads = torch.get_num_threads()
    try:
        rc = main(["calibrate", "--device", "cuda", "--quick", "--out", str(tmp_path / "o.toml")])
    finally:
        torch.set_num_threads(threads)
    assert rc == 2
    assert "Tesla T4" in capsys.readouterr().err
    assert not (tmp_path / "o.measurements.csv").exists()  # nothing was timed


def test_gpu_runs_no_cpu_only_suite_and_the_cpu_grid_is_unchanged():
    gpu = cases(quick=True, device="cuda", dtype="bf16")
    assert not {c.suite for c in gpu} & set(CPU_ONLY)
    assert {c.dtype for c in gpu} == {"bf16"}
    cpu = cases(quick=True)
    assert cpu == cases(quick=True, device="cpu")
    assert {"page_fault", "exp_masked"} <= {c.suite for c in cpu}
    with pytest.raises(InputError, match="page_fault"):
        cases(["gemm", "page_fault"], device="cuda")


def test_gpu_grids_reach_past_the_l2_and_fill_the_chip():
    # memory-bound suites stream far more than the 50 MiB H100 / 60 MiB H200 L2
    assert max(s["bytes"] for s in suite_shapes("memcpy", True, "cuda")) >= 2**29
    assert max(s["numel"] for s in suite_shapes("add", True, "cuda")) * 2 >= 2**27
    # the CPU's largest GEMM is launch-bound on an H100; the GPU grid goes to 4096^3
    assert max(s["m"] * s["n"] * s["k"] for s in suite_shapes("gemm", True, "cuda")) >= 4096**3
    assert max(s["bytes"] for s in suite_shapes("memcpy", True, "cpu")) < 2**27


def test_gpu_quick_calibration_fits_its_budget_on_h100():
    """The simulator's own estimate of --quick on an H100: per case one warm-up call, then
    the harness's 5 minimum reps or its 0.25 s budget, whichever is longer (MoE cases
    priced at balanced routing: no torch run here). Under two minutes, and no case so
    slow that its reps alone take a second."""
    from dataclasses import replace

    h100 = load_device("h100-sxm5-80gb")
    todo = cases(quick=True, device="cuda", dtype="bf16")
    total = 0.0
    for c in todo:
        if c.suite == "moe":
            p = c.params
            per = p["tokens"] * p["top_k"] / p["experts"]
            c = replace(c, routing=tuple(int(per) for _ in range(int(p["experts"]))))
        t = predict_case(c, h100)
        assert 0 < t < 0.2, c.name
        total += t + max(5 * t, 0.25)
    assert total < 120, total
    fit = [c for c in todo if c.suite == "exp" and c.split == "fit"]
    assert len(fit) >= 3  # the exp kind's own speed needs 3 fit cases (fit.py)


@pytest.mark.parametrize(
    ("device", "profile", "dtype"),
    [("cpu", "cpu-host", "fp32"), ("cuda", "h100-sxm5-80gb", "bf16"), ("cuda", "b200", "bf16")],
)
def test_fit_table_is_the_priced_model_on_gpu_gemms(device, profile, dtype):
    """The fit's vectorised table restates RooflineModel on a GPU profile's GEMMs too
    (operand-feed bound at the fitted matrix rate, finite pipeline, epilogue store): no
    gap at the profile's parameters nor at fitted-looking ones (model_gap would say)."""
    from dataclasses import replace

    from xpusim.calibrate.fit import FitParams, build_table
    from xpusim.calibrate.pipeline import model_gap

    base = load_device(profile)
    graphs = [c.graph() for c in cases(["gemm", "bmm", "conv2d", "add"], quick=True,
                                       device=device, dtype=dtype)]  # fmt: skip
    table = build_table(graphs, base)
    start = FitParams.from_device(base)
    fitted = replace(start, matrix_max=0.6, memory_max=0.7, matrix_half_flops=3e9, overlap=0.8)
    for p in (start, fitted):
        assert model_gap(graphs, table, p, base) < 1e-9


def test_validate_rederives_the_gpu_heldout_cases():
    meta = {"mode": "quick", "seed": 20260, "device_kind": "cuda", "dtype": "bf16"}
    held = heldout_cases(meta)
    assert held and all(c.split == "heldout" and c.dtype == "bf16" for c in held)
    assert held == [c for c in cases(quick=True, device="cuda", dtype="bf16") if c.split == "heldout"]
    # an overlay from before device_kind / dtype were recorded: the CPU's fp32 grid
    old = heldout_cases({"mode": "quick", "seed": 20260})
    assert old == [c for c in cases(quick=True) if c.split == "heldout"]


def test_attention_kernels_keep_every_buffer_on_the_inputs_device():
    """On CUDA the causal mask and the online-softmax state were CPU tensors (a device
    mismatch at the first add); the meta device shows the same without a GPU."""
    from xpusim.kernels.attention import fast_attention, standard_attention

    q = torch.empty(1, 4, 300, 16, device="meta")
    kv = torch.empty(1, 2, 300, 16, device="meta")
    assert fast_attention(q, kv, kv, causal=True).device.type == "meta"
    assert standard_attention(q, kv, kv, causal=True).device.type == "meta"


def test_every_gpu_microbenchmark_has_a_prediction():
    from xpusim.calibrate.device_check import all_cases, predict

    benches = all_cases("cuda:0", tiny=False)
    assert {b.bench for b in benches} >= {"launch", "copy", "gemm_decode", "elementwise", "sdpa"}
    for b in benches:
        assert predict(" ".join(b.sim), "h100-sxm5-80gb") > 0, b.case


def test_device_check_micro_and_compare_on_cpu(tmp_path, capsys):
    from xpusim.calibrate.device_check import main

    micro = tmp_path / "micro.csv"
    assert main(["micro", "--device", "cpu", "--tiny", "--only", "launch,copy,elementwise",
                 "--out", str(micro)]) == 0  # fmt: skip
    rows = list(csv.DictReader(micro.open()))
    assert rows and all(r["status"] == "ok" and float(r["median_s"]) > 0 for r in rows)
    out = tmp_path / "compare.csv"
    assert main(["compare", str(micro), "--profile", "cpu-host", "--out", str(out)]) == 0
    compared = list(csv.DictReader(out.open()))
    assert len(compared) == len(rows)
    assert "median |error|" in capsys.readouterr().out


@pytest.mark.slow
def test_device_check_script_runs_end_to_end_on_cpu(tmp_path):
    """benchmarks/device_check.sh --tiny: every step, under its timeout, on this CPU."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "DC_TOTAL_S": "100"}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--tiny"],
        env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["compare.csv", "device_check.tar.gz", "log.txt", "summary.txt"]
    log = (tmp_path / "log.txt").read_text()
    assert "pkg/xpusim" in log  # the tree under test, not an installed xpusim
    for name in ("env", "micro", "compare", "calibrate", "validate"):
        assert f"=== {name}: rc 0" in log, log[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert "per bench" in summary and "validate (held-out)" in summary
    result = json.loads(subprocess.run(
        ["tar", "xzOf", str(tmp_path / "device_check.tar.gz"), "results/calib/calibrate.json"],
        capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert result["provenance"]["dtype"] == "fp32"
    assert result["fit"]["model_gap"] < 1e-9  # a CPU: the fit is the priced model
