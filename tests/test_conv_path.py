"""torch's CPU convolution path (sim/cost/conv_path.py): ConvParams::use_mkldnn's rule by
hand-checked shapes, the kind a CPU prices a convolution under, GPUs unchanged, the
overlay's thread count, and a conv2d micro suite that fits both kinds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from measured_at_model import measured_at_model
from xpusim.calibrate.suites import DEFAULT_SEED, SUITES, split_shapes
from xpusim.hwprofiles import load_device
from xpusim.hwprofiles.errors import ProfileError
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel
from xpusim.sim.cost.conv_path import uses_mkldnn
from xpusim.sim.cost.priced_kind import priced_kind
from xpusim.sim.ir import ConvShape, OpKind
from xpusim.sim.workloads.cdc import describe_cdc

CPU = load_device("cpu-host")
OVERLAY = Path(__file__).resolve().parents[1] / "calibrate/data/cpu-host/overlay.toml"


def _conv(cin: int, h: int, w: int, k: int, dtype: str = "fp32", batch: int = 1):
    return ops.conv2d("c", batch, cin, cin, h, w, k, dtype=dtype)


@pytest.mark.parametrize(
    ("cin", "h", "w", "k", "threads", "dtype", "batch", "mkldnn"),
    [
        (32, 25, 25, 3, 1, "fp32", 1, False),  # 20,000 elements: thnn_conv2d (profiled)
        (32, 26, 26, 3, 1, "fp32", 1, True),  # 21,632: mkldnn_convolution (profiled)
        (64, 17, 17, 3, 1, "fp32", 1, False),  # 18,496
        (64, 18, 18, 3, 1, "fp32", 1, True),  # 20,736
        (20, 32, 32, 3, 1, "fp32", 1, False),  # exactly 20,480: "> 20480" is strict
        (20, 32, 33, 3, 1, "fp32", 1, True),  # 21,120
        (64, 64, 64, 1, 1, "fp32", 1, False),  # a 1x1 at one thread: never oneDNN
        (64, 64, 64, 1, 2, "fp32", 1, True),  # ... but at two threads, if large
        (32, 16, 16, 1, 2, "fp32", 1, False),  # 8,192 elements: small, thnn at any threads
        (64, 16, 16, 5, 1, "fp32", 1, True),  # 5x5 (kernel > 3 both ways): oneDNN
        (16, 8, 8, 3, 1, "fp32", 2, True),  # batch > 1
        (16, 8, 8, 3, 1, "bf16", 1, True),  # bf16 goes to oneDNN whatever the shape
        (64, 64, 64, 3, 1, "fp64", 1, False),  # not fp32 / bf16 / fp16: the slow path
    ],
)
def test_use_mkldnn_rule(cin, h, w, k, threads, dtype, batch, mkldnn):
    op = _conv(cin, h, w, k, dtype, batch)
    assert uses_mkldnn(op.shape, dtype, threads) is mkldnn


def test_shape_without_input_counts_as_onednn():
    assert uses_mkldnn(ConvShape(625, 32, 288, 1), "fp32", 1)


def test_cpu_kind_by_the_rule():
    assert priced_kind(_conv(32, 25, 25, 3), CPU, split=True) == OpKind.CONV2D_IM2COL
    assert priced_kind(_conv(32, 26, 26, 3), CPU, split=True) == OpKind.CONV2D
    # A 1x1 on the slow path is one BLAS GEMM on the input itself (no column buffer).
    assert priced_kind(_conv(64, 24, 24, 1), CPU, split=True) == OpKind.GEMM
    padded = ops.conv2d("c", 1, 64, 64, 24, 24, 1, padding=1, dtype="fp32")
    assert priced_kind(padded, CPU, split=True) == OpKind.CONV2D_IM2COL
    strided = ops.conv2d("c", 1, 64, 64, 24, 24, 1, stride=2, dtype="fp32")
    assert priced_kind(strided, CPU, split=True) == OpKind.CONV2D  # strided: oneDNN
    two = replace(CPU, threads=2)
    assert priced_kind(_conv(64, 24, 24, 1), two, split=True) == OpKind.CONV2D
    assert priced_kind(_conv(32, 25, 25, 3), CPU, split=False) == OpKind.CONV2D
    # The op's own kind is CONV2D everywhere; only a CPU's pricing renames it.
    assert _conv(32, 25, 25, 3).kind == OpKind.CONV2D


def test_pricing_splits_only_where_calibrated():
    """An overlay without a conv2d_im2col speed (every overlay fitted before the rule)
    prices every convolution as conv2d, as it was fitted."""
    slow = _conv(32, 25, 25, 3)
    assert priced_kind(slow, CPU) == OpKind.CONV2D
    old = load_device("cpu-host", calibration=OVERLAY)
    assert priced_kind(slow, old) == OpKind.CONV2D
    eff = replace(CPU.efficiency, kind_speed={"conv2d_im2col": 0.6})
    assert priced_kind(slow, replace(CPU, efficiency=eff)) == OpKind.CONV2D_IM2COL


def test_cpu_prices_the_slow_path_at_its_own_speed():
    eff = replace(CPU.efficiency, kind_speed={"conv2d": 1.0, "conv2d_im2col": 0.5},
                  kind_overhead_s={"conv2d": 0.0, "conv2d_im2col": 0.0})
    dev = replace(CPU, efficiency=eff)
    slow, fast = _conv(32, 25, 25, 3), _conv(32, 26, 26, 3)
    # The same op as the rule's other path: the shape without its input is oneDNN.
    slow_as_onednn = _unstated(slow)
    model = RooflineModel(dev)
    launch = eff.launch_overhead_s  # not scaled by a kind's speed
    want = launch + 2.0 * (model.time(slow_as_onednn).time_s - launch)
    assert model.time(slow).time_s == pytest.approx(want, rel=1e-12)
    fast_unstated = _unstated(fast)
    assert model.time(fast).time_s == model.time(fast_unstated).time_s


def _unstated(op):
    """``op`` as described before the rule: its shape without the input it reads."""
    return replace(op, shape=replace(op.shape, images=1, in_elements=0, kernel=0, stride=1,
                                     groups=1, padding=0))


@pytest.mark.parametrize("device", ["h100-sxm5-80gb", "ascend-910b2"])
def test_gpu_and_npu_conv_cost_unchanged(device):
    dev = load_device(device)
    model = RooflineModel(dev)
    for op in describe_cdc(4, 1, 16, 16, dtype="fp32").ops():
        if op.kind != OpKind.CONV2D:
            continue
        assert priced_kind(op, dev, split=True) == OpKind.CONV2D
        assert model.time(op) == model.time(_unstated(op))


def test_overlay_threads_reach_the_device(tmp_path):
    assert load_device("cpu-host", calibration=OVERLAY).threads == 1
    text = OVERLAY.read_text().replace("threads = 1", "threads = 2", 1)
    two = tmp_path / "two.toml"
    two.write_text(text)
    assert load_device("cpu-host", calibration=two).threads == 2
    bad = tmp_path / "bad.toml"
    unrecorded = tmp_path / "unrecorded.toml"
    unrecorded.write_text(text.replace("threads = 2", "threads = 0", 1))
    assert load_device("cpu-host", calibration=unrecorded).threads == 1
    bad.write_text(OVERLAY.read_text().replace("threads = 1", "threads = -1", 1))
    with pytest.raises(ProfileError, match="provenance.threads"):
        load_device("cpu-host", calibration=bad)


@pytest.mark.parametrize("quick", [True, False])
def test_conv_suite_fits_both_paths(quick):
    suite = SUITES["conv2d"]
    shapes = suite.quick if quick else suite.full
    kinds: dict[str, int] = {}
    for shape, split in zip(shapes, split_shapes("conv2d", shapes, DEFAULT_SEED), strict=True):
        if split != "fit":
            continue
        (op,) = suite.build_ops(shape, "fp32")
        kind = priced_kind(op, CPU, split=True)
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds.get("conv2d", 0) >= 3
    assert kinds.get("conv2d_im2col", 0) >= 3


def _measured(suite: str, shapes, split: str = "fit"):
    return measured_at_model(CPU, suite, shapes, split)


def test_fit_merges_an_unidentifiable_slow_path_into_conv2d(monkeypatch):
    from xpusim.calibrate import pipeline
    from xpusim.calibrate.pipeline import fit_measured

    splits: list[bool] = []
    real = pipeline.build_table

    def recording(graphs, base, split_conv=True):
        splits.append(split_conv)
        return real(graphs, base, split_conv)

    monkeypatch.setattr(pipeline, "build_table", recording)

    suite = SUITES["conv2d"]
    gemms = [{"m": m, "n": 256, "k": 256} for m in (64, 128, 256, 512, 1024, 2048, 4096)]
    onednn = [s for s in suite.full if uses_mkldnn(suite.build_ops(s, "fp32")[0].shape,
                                                   "fp32", 1)]
    slow = [s for s in suite.full if s not in onednn]
    both = fit_measured(_measured("gemm", gemms) + _measured("conv2d", onednn + slow), CPU)
    assert {"conv2d", "conv2d_im2col"} <= set(both.fitted_kinds)
    assert splits == [True]
    one = fit_measured(_measured("gemm", gemms) + _measured("conv2d", onednn + slow[:2]), CPU)
    assert "conv2d" in one.fitted_kinds and "conv2d_im2col" not in one.fitted_kinds
    assert splits == [True, True, False]  # built split, then merged back
