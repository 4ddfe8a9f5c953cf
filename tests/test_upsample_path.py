"""torch's CPU nearest-upsampling path (sim/cost/upsample_path.py): ATen's
_use_vectorized_kernel_cond_2d rule by hand-computed output sizes, the channels-last
kernel's traffic, the kind a CPU prices it under, GPUs unchanged, the CDC workload's
paths per layer, and micro suites that fit both kinds."""

from __future__ import annotations

from dataclasses import replace

import pytest
from measured_at_model import measured_at_model
from xpusim.calibrate.suites import DEFAULT_SEED, SUITES, split_shapes
from xpusim.hwprofiles import load_device
from xpusim.sim.cost import RooflineModel
from xpusim.sim.cost.priced_kind import priced_kind
from xpusim.sim.cost.upsample_path import main_memory_bytes, uses_channels_last_kernel
from xpusim.sim.ir import MAIN_MEMORY, OpKind, UpsampleShape
from xpusim.sim.workloads.cdc import describe_cdc, upsample_nearest

CPU = load_device("cpu-host")
GPU = load_device("h100-sxm5-80gb")


@pytest.mark.parametrize(
    ("h", "w", "factor", "channels_last"),
    [
        (32, 32, 2, True),  # output 64 x 64: H + W = 128, "<= 128" holds
        (33, 32, 2, False),  # 66 x 64 = 130
        (32, 31, 2, True),  # 64 x 62 = 126
        (16, 48, 2, True),  # 32 x 96 = 128
        (16, 49, 2, False),  # 32 x 98 = 130
        (21, 21, 3, True),  # 63 x 63 = 126
        (22, 21, 3, False),  # 66 x 63 = 129
        (64, 64, 2, False),  # 128 x 128 = 256
        (1, 1, 2, True),  # 2 x 2
    ],
)
def test_channels_last_rule(h, w, factor, channels_last):
    op = upsample_nearest("u", 1, 16, h, w, factor, "fp32")
    assert (op.shape.h_out, op.shape.w_out) == (h * factor, w * factor)
    assert uses_channels_last_kernel(op.shape) is channels_last


def test_a_shape_without_its_output_size_is_the_generic_kernel():
    assert not uses_channels_last_kernel(UpsampleShape(16384, 2))


def test_channels_last_traffic():
    # 16 ch, 16 x 16 -> 32 x 32, fp32: input 4,096, output 16,384 elements; the kernel's
    # copies move 3 x 4,096 + 5 x 16,384 = 94,208 elements = 376,832 bytes.
    small = upsample_nearest("u", 1, 16, 16, 16, 2, "fp32")
    assert small.bytes[MAIN_MEMORY] == (4096 + 16384) * 4
    assert main_memory_bytes(small, CPU) == 376_832
    assert main_memory_bytes(small, GPU) == (4096 + 16384) * 4  # one kernel on a GPU
    # 16 ch, 64 x 64 -> 128 x 128: the generic kernel reads the input and writes the output.
    big = upsample_nearest("u", 1, 16, 64, 64, 2, "fp32")
    assert main_memory_bytes(big, CPU) == (65536 + 262144) * 4


def test_roofline_prices_the_channels_last_traffic_on_a_cpu():
    small = upsample_nearest("u", 1, 16, 16, 16, 2, "fp32")
    stream = replace(small, shape=UpsampleShape(16384, 2), bytes={MAIN_MEMORY: 376_832.0})
    assert RooflineModel(CPU).memory_time(small) == RooflineModel(CPU).memory_time(stream)
    unsized = replace(small, shape=UpsampleShape(16384, 2))
    assert RooflineModel(GPU).memory_time(small) == RooflineModel(GPU).memory_time(unsized)


def test_priced_kind_per_path():
    small = upsample_nearest("u", 1, 64, 16, 16, 2, "fp32")
    big = upsample_nearest("u", 1, 64, 64, 64, 2, "fp32")
    assert priced_kind(small, CPU, split=True) == OpKind.UPSAMPLE_CL
    assert priced_kind(big, CPU, split=True) == OpKind.UPSAMPLE
    assert priced_kind(small, CPU, split=False) == OpKind.UPSAMPLE
    assert priced_kind(small, GPU, split=True) == OpKind.UPSAMPLE
    # Pricing: the path's kind only where the calibration fitted it.
    assert priced_kind(small, CPU) == OpKind.UPSAMPLE
    eff = replace(
        CPU.efficiency,
        kind_speed={"upsample": 0.5, "upsample_cl": 0.2},
        kind_overhead_s={"upsample": 0.0, "upsample_cl": 0.0},
    )
    fitted = replace(CPU, efficiency=eff)
    assert priced_kind(small, fitted) == OpKind.UPSAMPLE_CL
    assert priced_kind(big, fitted) == OpKind.UPSAMPLE
    # upsample_cl's speed (0.2) prices the channels-last op: its time is the memory term / 0.2.
    model = RooflineModel(fitted)
    assert model.time(small).compute_s == 0.0
    assert model.time(small).memory_s == pytest.approx(RooflineModel(CPU).memory_time(small) / 0.2)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        # LR 16 x 32, x4: hourglass up1..up4 outputs 2x4, 4x8, 8x16, 16x32 (H + W <= 48);
        # heads: first x2 to 32 x 64 (96), second to 64 x 128 (192).
        (16, 32, {"up1": "cl", "up2": "cl", "up3": "cl", "up4": "cl", "1.0": "cl", "2.0": "gen"}),
        # LR 64 x 80: up1..up4 outputs 8x10, 16x20, 32x40 (72), 64x80 (144); heads 128 x 160.
        (64, 80, {"up1": "cl", "up2": "cl", "up3": "cl", "up4": "gen", "1.0": "gen", "2.0": "gen"}),
    ],
)
def test_cdc_upsample_paths_per_layer(height, width, expected):
    kinds = {"cl": OpKind.UPSAMPLE_CL, "gen": OpKind.UPSAMPLE}
    seen = 0
    for op in describe_cdc(4, 1, height, width).ops():
        if op.kind != OpKind.UPSAMPLE:
            continue
        part = op.name.split(".")[1] if op.name.startswith("HG_") else op.name.split(".", 1)[1]
        assert priced_kind(op, CPU, split=True) == kinds[expected[part]], op.name
        seen += 1
    assert seen == 6 * 4 + 6 * 2  # 4 per hourglass, 2 per x4 head


@pytest.mark.parametrize("quick", [True, False])
def test_upsample_suites_fit_and_hold_out_both_paths(quick):
    fit: dict[str, int] = {}
    held: dict[str, int] = {}
    for name in ("upsample", "upsample_cl"):
        suite = SUITES[name]
        shapes = suite.quick if quick else suite.full
        for shape, split in zip(shapes, split_shapes(name, shapes, DEFAULT_SEED), strict=True):
            (op,) = suite.build_ops(shape, "fp32")
            kind = priced_kind(op, CPU, split=True)
            assert kind == (OpKind.UPSAMPLE_CL if name == "upsample_cl" else OpKind.UPSAMPLE)
            tally = fit if split == "fit" else held
            tally[kind] = tally.get(kind, 0) + 1
    assert fit["upsample"] >= 3 and fit["upsample_cl"] >= 3
    assert held["upsample"] >= 1 and held["upsample_cl"] >= 1


def _measured(suite: str, shapes, split: str = "fit"):
    return measured_at_model(CPU, suite, shapes, split)


def test_fit_merges_an_unidentifiable_channels_last_path_into_upsample():
    from xpusim.calibrate.pipeline import fit_measured

    gemms = [{"m": m, "n": 256, "k": 256} for m in (64, 128, 256, 512, 1024, 2048, 4096)]
    both = fit_measured(
        _measured("gemm", gemms)
        + _measured("upsample", SUITES["upsample"].quick)
        + _measured("upsample_cl", SUITES["upsample_cl"].quick),
        CPU,
    )
    assert {"upsample", "upsample_cl"} <= set(both.fitted_kinds)
    # A stored quick run of the old single suite: sides 16 and 64, one channels-last fit case.
    old = [{"channels": c, "size": n} for c in (16, 64) for n in (16, 64)]
    one = fit_measured(_measured("gemm", gemms) + _measured("upsample", old[1:]), CPU)
    assert "upsample" in one.fitted_kinds and "upsample_cl" not in one.fitted_kinds
    assert one.model_gap == pytest.approx(0.0, abs=1e-9)
