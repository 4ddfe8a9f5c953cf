"""Hardware and op kinds published rows needed: the A100 PCIe 80GB and the two GH200 GPU
profiles (datasheet figures), and the write-only / read-only memory kernels of
``op elementwise`` (--inputs 0, --outputs 0)."""

from __future__ import annotations

import json

import pytest
from xpusim.hwprofiles import list_devices, load_device
from xpusim.sim.api.op import op
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.validation.metrics import elementwise_bytes

# --- device profiles against the datasheets -------------------------------------------


def test_new_devices_are_listed():
    for name in ("a100-pcie-80gb", "gh200-96gb", "gh200-144gb"):
        assert name in list_devices()


def test_a100_pcie_80gb_datasheet_figures():
    pcie, sxm = load_device("a100-pcie-80gb"), load_device("a100-sxm4-80gb")
    # NVIDIA A100 datasheet, 80GB PCIe column: 1,935 GB/s, 300 W, 312 TF dense BF16/FP16.
    assert pcie.hbm_bandwidth == pytest.approx(1935e9)
    assert pcie.hbm_capacity == pytest.approx(80 * 2**30)
    assert pcie.tdp_watts == 300
    assert pcie.matrix_peak["bf16"] == pytest.approx(312e12)
    # 108 SMs x 2048 dense FP16 FLOP/clk x 1.41 GHz = 312 TFLOP/s.
    assert pcie.cores == 108
    assert pcie.clock_hz == pytest.approx(1.41e9)
    assert 108 * 2048 * pcie.clock_hz == pytest.approx(pcie.matrix_peak["fp16"], rel=0.005)
    # Efficiencies carried over from the SXM4 part; the memory half size by its rule
    # (1.31 us x bandwidth): 1.31e-6 x 1935e9 B = 2.535 MB = 2.42 MiB.
    assert pcie.efficiency.matrix_max == sxm.efficiency.matrix_max
    assert pcie.efficiency.memory_max == sxm.efficiency.memory_max
    assert pcie.efficiency.memory_half_bytes == pytest.approx(1.31e-6 * 1935e9, rel=0.005)


@pytest.mark.parametrize(
    ("name", "capacity_gib", "bandwidth"),
    [("gh200-96gb", 96, 4.0e12), ("gh200-144gb", 144, 4.9e12)],
)
def test_gh200_datasheet_figures(name: str, capacity_gib: int, bandwidth: float):
    gh, sxm = load_device(name), load_device("h100-sxm5-80gb")
    assert gh.hbm_bandwidth == pytest.approx(bandwidth)
    assert gh.hbm_capacity == pytest.approx(capacity_gib * 2**30)
    # Dense = half of the datasheet's with-sparsity BF16 1,979 / FP8 3,958: the H100 SXM5's.
    assert gh.matrix_peak["bf16"] == pytest.approx(1979e12 / 2, rel=1e-3)
    assert gh.matrix_peak["fp8"] == pytest.approx(3958e12 / 2, rel=1e-3)
    assert gh.matrix_peak == sxm.matrix_peak
    assert gh.cores == 132
    assert 132 * 4096 * gh.clock_hz == pytest.approx(gh.matrix_peak["bf16"], rel=0.005)
    # The module power (CPU + GPU + memory, 450-1000 W) is not a GPU TDP: left blank.
    assert gh.tdp_watts is None
    assert gh.efficiency.matrix_max == sxm.efficiency.matrix_max
    assert gh.efficiency.memory_max == sxm.efficiency.memory_max
    assert gh.efficiency.memory_half_bytes == pytest.approx(1.31e-6 * bandwidth, rel=0.005)


# --- write-only and read-only memory kernels ----------------------------------------------

NUMEL = 2**28  # OpenCL-Benchmark's 4096 x 4096 x 16 floats


def test_write_only_fill_moves_one_array():
    r = op(kind="elementwise", device="gh200-96gb", numel=NUMEL, inputs=0, dtype="fp32")
    assert r.op.bytes["hbm"] == NUMEL * 4  # one written array, nothing read: 1 GiB
    assert elementwise_bytes({"numel": NUMEL, "dtype": "fp32", "inputs": 0}) == NUMEL * 4


def test_read_only_kernel_moves_one_array():
    r = op(kind="elementwise", device="gh200-96gb", numel=NUMEL, outputs=0, dtype="fp32")
    assert r.op.bytes["hbm"] == NUMEL * 4  # one read array, no array written
    args = {"numel": NUMEL, "dtype": "fp32", "inputs": 1, "outputs": 0}
    assert elementwise_bytes(args) == NUMEL * 4


def test_copy_still_counts_read_plus_write():
    # The STREAM/BabelStream default: one input, one output (2 x 8 bytes per fp64 element).
    r = op(kind="elementwise", device="h100-sxm5-80gb", numel=1000.0, dtype="fp64")
    assert r.op.bytes["hbm"] == 16000
    assert elementwise_bytes({"numel": 1000, "dtype": "fp64", "inputs": 1}) == 16000


def test_memory_kernels_priced_on_the_same_memory_curve():
    # A 1 GiB fill and a 1 GiB read take the memory time a 512 MiB copy (also 1 GiB
    # moved) takes: same bytes, same memory_max and half size, no new constants.
    fill = op(kind="elementwise", device="gh200-96gb", numel=NUMEL, inputs=0, dtype="fp32")
    read = op(kind="elementwise", device="gh200-96gb", numel=NUMEL, outputs=0, dtype="fp32")
    copy = op(kind="elementwise", device="gh200-96gb", numel=NUMEL / 2, dtype="fp32")
    dev = load_device("gh200-96gb")
    eff = dev.efficiency
    expected = (NUMEL * 4 + eff.memory_half_bytes) / (dev.hbm_bandwidth * eff.memory_max)
    for r in (fill, read, copy):
        assert r.cost.memory_s == pytest.approx(expected, rel=1e-9)
        assert r.bound == "memory"


def test_no_inputs_and_no_outputs_is_refused():
    with pytest.raises(InputError, match="--inputs 0 with --outputs 0 moves no bytes"):
        op(kind="elementwise", numel=1e6, inputs=0, outputs=0)


def test_cli_no_arrays_exits_2_naming_the_flags(capsys):
    rc = main(["op", "elementwise", "--numel", "1e6", "--inputs", "0", "--outputs", "0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--inputs 0 with --outputs 0" in err and "Traceback" not in err


def test_cli_negative_outputs_refused(capsys):
    rc = main(["op", "elementwise", "--numel", "1e6", "--outputs", "-1"])
    assert rc == 2
    assert "--outputs" in capsys.readouterr().err


def test_outputs_is_not_an_option_of_gemm():
    with pytest.raises(InputError, match="--outputs is not an option of op gemm"):
        op(kind="gemm", m=8, n=8, k=8, outputs=0)


def test_cli_read_only_json_bytes(capsys):
    assert main(["op", "elementwise", "--device", "gh200-96gb", "--numel", str(NUMEL),
                 "--outputs", "0", "--dtype", "fp32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bytes"]["hbm"] == NUMEL * 4
