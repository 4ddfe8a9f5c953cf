"""``xpusim op --timing {launch,kernel}``: kernel time = launch time - the host launch overhead."""

from __future__ import annotations

import json
import shlex

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim.cli.main import main
from xpusim.sim.cost.base import OpCost
from xpusim.sim.cost.op_timing import TIMINGS, as_timed, check_timing
from xpusim.sim.errors import InputError

import xpusim

# The issue-15 example: a DeepGEMM M=64 shape, memory-bound with a 5 us launch overhead.
GEMM = dict(kind="gemm", device="h800-sxm5-80gb", m=64, n=7168, k=2048, dtype="fp8")


def test_as_timed_by_hand():
    cost = OpCost(11e-6, 2e-6, 6e-6, 5e-6, "memory", {"x": 1.0})
    assert as_timed(cost, "launch", 5e-6) == (cost, 0.0)
    timed, excluded = as_timed(cost, "kernel", 5e-6)
    assert excluded == 5e-6
    assert timed.time_s == pytest.approx(6e-6) and timed.overhead_s == 0.0
    assert (timed.compute_s, timed.memory_s, timed.bound, timed.details) == (
        2e-6, 6e-6, "memory", {"x": 1.0})


def test_as_timed_keeps_other_overhead_and_rebinds():
    # 1 us launch-bound op; 0.5 us of calibrated per-kind extra stays under kernel timing.
    cost = OpCost(1.5e-6 + 0.4e-6, 0.4e-6, 0.1e-6, 1.5e-6, "overhead")
    timed, excluded = as_timed(cost, "kernel", 1.0e-6)
    assert excluded == 1.0e-6
    assert timed.overhead_s == pytest.approx(0.5e-6)
    assert timed.time_s == pytest.approx(0.9e-6)
    assert timed.bound == "overhead"  # 0.5 us extra still exceeds the 0.4 us body
    # Never takes out more than the cost's overhead.
    small = OpCost(3e-6, 1e-6, 1e-6, 2e-6, "overhead")
    timed, excluded = as_timed(small, "kernel", 5e-6)
    assert excluded == 2e-6 and timed.time_s == pytest.approx(1e-6) and timed.bound == "compute"


@pytest.mark.parametrize("bad", ["device", "KERNEL", "", None])
def test_bad_timing_is_an_input_error(bad):
    with pytest.raises(InputError, match="--timing"):
        check_timing(bad)
    with pytest.raises(InputError, match="--timing"):
        xpusim.op(**GEMM, timing=bad)


def test_gemm_kernel_is_launch_minus_the_launch_overhead():
    launch = xpusim.op(**GEMM)
    kernel = xpusim.op(**GEMM, timing="kernel")
    overhead = load_device("h800-sxm5-80gb").efficiency.launch_overhead_s
    assert launch.timing == "launch" and launch.launch_excluded_s == 0.0
    assert launch.cost.overhead_s == overhead
    assert kernel.launch_excluded_s == overhead
    assert kernel.time_s == pytest.approx(launch.time_s - overhead, rel=1e-12)
    assert kernel.cost.overhead_s == 0.0
    assert kernel.cost.memory_s == launch.cost.memory_s  # device terms unchanged
    assert kernel.achieved_flops == pytest.approx(kernel.flops / kernel.time_s)
    # The figures: 11.67 us as launched, 6.67 us as a profiler times the kernel.
    assert launch.time_s == pytest.approx(11.67e-6, abs=0.01e-6)
    assert kernel.time_s == pytest.approx(6.67e-6, abs=0.01e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kind="elementwise", numel=1e6),
        dict(kind="conv2d", in_ch=64, out_ch=64, height=56, width=56),
        dict(kind="attention", seq=1024),
        dict(kind="attention", seq=2048, impl="flash2", pass_="bwd", device="a100-sxm4-80gb"),
    ],
)
def test_every_kind_takes_its_launches_out(kwargs):
    launch = xpusim.op(**kwargs)
    kernel = xpusim.op(**kwargs, timing="kernel")
    assert kernel.launch_excluded_s > 0.0
    assert kernel.time_s == pytest.approx(launch.time_s - kernel.launch_excluded_s, rel=1e-12)
    if kwargs["kind"] == "attention":
        # attention prices one launch per kernel it runs: all of its overhead is launches
        assert kernel.launch_excluded_s == launch.cost.overhead_s
        assert kernel.achieved_tflops == pytest.approx(
            kernel.paper_flops / kernel.time_s / 1e12)


def test_cli_kernel_timing_equals_the_api(capsys):
    argv = "op gemm --device h800-sxm5-80gb --m 64 --n 7168 --k 2048 --dtype fp8 --timing kernel"
    assert main([*shlex.split(argv), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == xpusim.op(**GEMM, timing="kernel").as_dict()
    assert doc["timing"] == "kernel" and doc["launch_excluded_s"] > 0.0
    assert main(shlex.split(argv)) == 0
    assert "host launch overhead 5 us excluded" in capsys.readouterr().out


def test_cli_refuses_an_unknown_timing(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["op", "gemm", "--m", "8", "--n", "8", "--k", "8", "--timing", "device"])
    assert exit_.value.code == 2
    assert "--timing" in capsys.readouterr().err


def test_timings_listed():
    assert TIMINGS == ("launch", "kernel")
