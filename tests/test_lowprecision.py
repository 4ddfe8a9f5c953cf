"""Low-precision formats: bytes with block scales by hand, FP8 GEMMs at the FP8 peak,
the cast passes of an FP8 training recipe, and the new hardware profiles."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_device, load_system
from xpusim.hwprofiles.loader import DEVICE_DIR, SYSTEM_DIR, read_toml
from xpusim.sim import ops
from xpusim.sim.cost.roofline import RooflineModel
from xpusim.sim.ir import OpKind, Role, Weight, dtype_bytes
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.layers import act_dtype, backward_op, low_precision_gemms

NEW_DEVICES = ["b200", "b300", "gb200", "ascend-950pr", "ascend-950dt", "mi300x", "mi325x",
               "mi355x"]
NEW_SYSTEMS = ["gb200-nvl72", "dgx-b200", "atlas-950-superpod", "ascend-950pr-8", "mi300x-8"]


def test_block_scaled_bytes_by_hand() -> None:
    # OCP MX v1.0: 32 elements share one 8-bit E8M0 scale.
    assert dtype_bytes("mxfp4") == 0.5 + 1 / 32
    assert dtype_bytes("mxfp8") == 1 + 1 / 32
    assert dtype_bytes("mxfp6") == 0.75 + 1 / 32
    # NVFP4: 16 elements share one FP8 E4M3 scale (+ one fp32 per tensor: 0 per element).
    assert dtype_bytes("nvfp4") == 0.5 + 1 / 16
    assert dtype_bytes("fp8") == dtype_bytes("hif8") == dtype_bytes("fp8_e4m3") == 1


@pytest.mark.parametrize("name", NEW_DEVICES)
def test_new_devices_load_with_sources(name: str) -> None:
    dev = load_device(name)
    raw = read_toml(DEVICE_DIR / f"{name}.toml")
    for section in ("matrix", "vector", "cores", "hbm", "efficiency"):
        assert raw[section]["source"].strip()
    assert dev.runs_natively("fp8")
    for section in dev.announced:
        # an announced section says so in its source (or is a top-level figure)
        assert section == "tdp_w" or "announced" in raw[section]["source"] or "estimate" in raw[
            section]["source"]


@pytest.mark.parametrize("name", NEW_SYSTEMS)
def test_new_systems_load_with_sources(name: str) -> None:
    system = load_system(name)
    raw = read_toml(SYSTEM_DIR / f"{name}.toml")
    for section in ("intra_node", "nic", "inter_node", "collective_efficiency"):
        assert raw[section]["source"].strip()
    assert system.num_devices >= 8


def test_required_names_listed() -> None:
    from xpusim.hwprofiles import list_devices, list_systems

    names = set(list_devices()) | set(list_systems())
    for n in ("b200", "gb200-nvl72", "ascend-950dt", "ascend-950pr", "atlas-950-superpod",
              "mi300x"):
        assert n in names


def test_supernode_and_nvl72_topology() -> None:
    pod = load_system("atlas-950-superpod")
    assert pod.inter_topology == "supernode" and pod.num_devices == 8192
    nvl = load_system("gb200-nvl72")
    assert nvl.devices_per_node == 72 and nvl.intra_topology == "switch"


def test_fp8_gemm_priced_at_fp8_peak() -> None:
    dev = load_device("b200")
    big = 16384
    g8 = ops.gemm("g", big, big, big, "fp8")
    g16 = ops.gemm("g", big, big, big, "bf16")
    model = RooflineModel(dev)
    # compute-bound: the FP8 GEMM runs at the FP8 peak (twice the BF16 one) times the
    # profile's FP8 efficiency; the BF16 one at its own (b200 measures both, MAMF rows G30)
    assert dev.peak_for("matrix", "fp8") == 2 * dev.peak_for("matrix", "bf16")
    t8, t16 = model.time(g8).time_s, model.time(g16).time_s
    assert t8 >= g8.flops / dev.peak_for("matrix", "fp8")
    eff = dev.efficiency
    ratio = 2.0 * eff.matrix_max_for("fp8") / eff.matrix_max_for("bf16")
    assert ratio < 2.0  # the measured FP8 fraction of peak is the lower one
    assert t16 / t8 == pytest.approx(ratio, rel=0.02)
    # output in bf16: m*k + k*n one byte each, m*n two bytes
    assert g8.main_bytes == big * big * (1 + 1 + 2)


def test_fp4_falls_back_to_fp8_without_fp4_units() -> None:
    h100 = load_device("h100-sxm5-80gb")
    assert not h100.runs_natively("nvfp4")
    assert h100.peak_for("matrix", "nvfp4") == h100.peak_for("matrix", "fp8")
    assert load_device("b200").peak_for("matrix", "nvfp4") == 9000e12


def test_fp8_recipe_casts_gemm_inputs_only() -> None:
    plan = ParallelPlan(dtype="fp8")
    assert act_dtype(plan) == "bf16"
    # The output layer is left in 16 bits by its role (the weight it reads), not its name.
    head = Role(weight=Weight.HEAD)
    raw = [ops.gemm("mlp_up", 4096, 8192, 1024, "bf16"), ops.norm("n", 4096, 1024, "bf16"),
           ops.gemm("lm_head", 4096, 32000, 1024, "bf16", role=head)]
    out = low_precision_gemms(raw, "fp8")
    names = [o.name for o in out]
    assert names == ["mlp_up_quant", "mlp_up", "n", "lm_head"]
    quant, gemm = out[0], out[1]
    # the cast reads the bf16 input once and writes fp8 in both usages (rowwise for this
    # GEMM, the transposed copy for the weight gradient): m*k*(2+1+1) bytes
    assert quant.kind == OpKind.ELEMENTWISE and quant.main_bytes == 4096 * 1024 * 4
    assert gemm.dtype == "fp8" and out[3].dtype == "bf16"  # the output layer stays bf16
    bwd = backward_op(gemm)
    assert [o.name for o in bwd] == ["mlp_up_dgrad_quant", "mlp_up_dgrad", "mlp_up_wgrad"]
    assert bwd[0].main_bytes == 4096 * 8192 * 4  # dC (m x n) cast once, into both usages
    assert all(o.dtype == "fp8" for o in bwd[1:])


def test_train_refuses_fp8_on_910b(capsys) -> None:
    from xpusim.sim.cli.main import main

    rc = main(["train", "--model", "llama-3-8b", "--system", "atlas-800t-a2", "--dtype", "fp8",
               "--tp", "8", "--quiet"])
    assert rc == 2
    assert "no fp8 matrix path" in capsys.readouterr().err


def test_cast_transpose_writes_both_usages_hand_computed() -> None:
    from xpusim.sim.ir import dtype_bytes
    from xpusim.sim.training.lowprec import cast_transpose_op

    # 1000 x 512 bf16 elements to FP8: read 2 B, write 1 B rowwise + 1 B transposed.
    op = cast_transpose_op("x", 512_000, "fp8")
    assert op.name == "x_quant" and op.main_bytes == 512_000 * 4 and op.flops == 3 * 512_000
    # MXFP8: each usage carries its E8M0 scale per 32 elements (1 + 1/32 B per element).
    mx = cast_transpose_op("x", 512_000, "mxfp8")
    assert dtype_bytes("mxfp8") == 1 + 1 / 32
    assert mx.main_bytes == 512_000 * (2 + 2 * (1 + 1 / 32))


def test_fp8_encodings_fall_back_like_fp8():
    # A device without an FP8 unit prices every FP8 encoding as it prices "fp8" (not at the
    # unit's slowest rate, FP64 on an A100).
    from xpusim.hwprofiles import load_device

    a100 = load_device("a100-sxm4-80gb")
    for enc in ("fp8_e4m3", "fp8_e5m2", "hif8", "mxfp8", "mxfp6"):
        assert a100.peak_for("matrix", enc) == a100.peak_for("matrix", "fp8")


def test_op_refuses_a_format_the_device_cannot_run(capsys):
    from xpusim.sim.cli.main import main

    rc = main(["op", "gemm", "--m", "1024", "--n", "1024", "--k", "1024",
               "--device", "a100-sxm4-80gb", "--dtype", "fp8"])
    err = capsys.readouterr().err
    assert rc == 2 and "no fp8 matrix path" in err and "Traceback" not in err
