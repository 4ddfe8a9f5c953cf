"""The finite-pipeline term of a GEMM's main loop (sim/cost/gemm_pipeline.py)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from xpusim.hwprofiles.loader import load_device
from xpusim.sim import ops
from xpusim.sim.cost.gemm_pipeline import pipeline_stages, pipelined_time
from xpusim.sim.cost.roofline import RooflineModel, stream_time_s


def test_stages_are_the_shared_memory_over_a_stage():
    # Hopper, 228 KB: 128x256 tile = 384 rows x 128 B = 48 KB per stage -> 4 stages (233472 // 49152).
    assert pipeline_stages(128, 256, 233472) == 4
    # Ampere, 164 KB: CUTLASS's Sm80 128x256x64 default has kStages = 3.
    assert pipeline_stages(128, 256, 167936) == 3
    assert pipeline_stages(64, 128, 233472) == 9
    assert pipeline_stages(256, 256, 1000) == 1


def test_at_the_ridge_the_loop_loses_one_stage_in_c_plus_one():
    # rho = 1: X = mu * C / (C + 1), so the time is (C + 1) / C of either side's.
    assert math.isclose(pipelined_time(1.0, 1.0, 4), 1.25)
    assert math.isclose(pipelined_time(2e-5, 2e-5, 7), 2e-5 * 8 / 7)


def test_hand_computed_off_the_ridge():
    # rho = mu1 / mu2 = compute / memory = 0.5, C = 4: X / mu2 = (0.5 - 0.5**5) / (1 - 0.5**5)
    share = (0.5 - 0.5**5) / (1 - 0.5**5)
    assert math.isclose(pipelined_time(1.0, 2.0, 4), 1.0 / share)
    # rho = 2 (compute-bound): X / mu2 = (2 - 2**5) / (1 - 2**5) = 30 / 31
    assert math.isclose(pipelined_time(2.0, 1.0, 4), 2.0 * 31 / 30)


def test_no_stages_or_an_empty_side_is_the_roofline():
    assert pipelined_time(3.0, 2.0, 0) == 3.0
    assert pipelined_time(0.0, 2.0, 4) == 2.0
    assert pipelined_time(3.0, 0.0, 4) == 3.0


@given(st.floats(1e-9, 1.0), st.floats(1e-9, 1.0), st.integers(1, 64))
def test_never_faster_than_the_roofline_and_deeper_never_slower(c, m, stages):
    t = pipelined_time(c, m, stages)
    assert t >= max(c, m) * (1 - 1e-12)
    assert pipelined_time(c, m, stages + 1) <= t * (1 + 1e-12)
    # At most the ridge's (C + 1) / C of the slower side.
    assert t <= max(c, m) * (stages + 1) / stages * (1 + 1e-9)


@given(st.floats(1e-9, 1.0), st.floats(1e-9, 1.0), st.floats(1.0, 4.0), st.integers(1, 16))
def test_more_work_on_either_side_never_shortens_the_loop(c, m, grow, stages):
    t = pipelined_time(c, m, stages)
    assert pipelined_time(c * grow, m, stages) >= t * (1 - 1e-12)
    assert pipelined_time(c, m * grow, stages) >= t * (1 - 1e-12)


def test_the_roofline_prices_a_ridge_gemm_through_the_pipeline():
    """H100, 240 x 8192 x 8192 FP16 (Vidur's 70B o_proj at M = 240): 128 x 256 tiles, 4 stages.
    The pipeline runs the op's own MMAs (32.2 GFLOP at 989 T x 0.8) against its operand reads
    less the HBM fill, and adds the shorter fill once; the output store follows."""
    dev = load_device("h100-sxm5-80gb")
    model = RooflineModel(dev)
    op = ops.gemm("ridge", 240, 8192, 8192, "fp16")
    cost = model.time(op)
    assert cost.details["pipeline_stages"] == 4
    rate = 989e12 * 0.8
    mma = op.flops / rate
    store = cost.details["epilogue_s"]
    reads = cost.memory_s - store
    reads_fill = stream_time_s(dev, 0.0)
    mma_fill = dev.efficiency.matrix_half_flops / rate
    piped = pipelined_time(mma, reads - reads_fill, 4) + min(mma_fill, reads_fill)
    expected = max(cost.compute_s, reads, piped) + store
    assert math.isclose(cost.time_s - cost.overhead_s, expected, rel_tol=1e-12)
    assert cost.time_s - cost.overhead_s > max(cost.compute_s, cost.memory_s) * 1.1


def test_a_tiny_gemm_pays_no_pipeline_loss_on_its_fill():
    """16 x 16 x 16: the fills (latency) dominate and are not pipelined work."""
    model = RooflineModel(load_device("h100-sxm5-80gb"))
    tiny = model.time(ops.gemm("tiny", 16, 16, 16, "bf16"))
    store = tiny.details["epilogue_s"]
    unbuffered = max(tiny.compute_s, tiny.memory_s - store) + store
    assert tiny.time_s - tiny.overhead_s == unbuffered


def test_far_from_the_ridge_almost_nothing_changes():
    model = RooflineModel(load_device("a100-sxm4-80gb"))
    big = model.time(ops.gemm("big", 8192, 8192, 8192, "fp16"))
    store = big.details["epilogue_s"]
    unbuffered = max(big.compute_s, big.memory_s - store) + store  # an infinite ring
    assert big.details["pipeline_stages"] > 0
    assert big.time_s - big.overhead_s < unbuffered * 1.001


def test_non_nvidia_devices_have_no_pipeline_term():
    model = RooflineModel(load_device("ascend-910b2"))
    assert model.gemm_stages(ops.gemm("g", 240, 8192, 8192, "bf16")) == 0


def test_a_named_kernel_uses_its_own_stage_count():
    from xpusim.sim.cost.gemm_impl import deepgemm_config

    dev = load_device("h800-sxm5-80gb")
    op = ops.gemm("dg", 128, 7168, 2112, "fp8", impl="deepgemm")
    stages = RooflineModel(dev).gemm_stages(op)
    assert stages == deepgemm_config(op.shape, dev.matrix_cores).num_stages


def test_op_gemm_text_explains_the_time_beyond_the_roofline(capsys):
    """The CLI line items add up: max(compute, reads) + pipeline loss + output store."""
    from xpusim.sim.cli.main import main

    assert main(["op", "gemm", "--device", "h100-sxm5-80gb", "--m", "240", "--n", "8192",
                 "--k", "8192", "--dtype", "fp16", "--timing", "kernel"]) == 0
    text = capsys.readouterr().out
    assert "main loop through 4 shared-memory stages" in text
    assert "output store after the main loop" in text
    cost = RooflineModel(load_device("h100-sxm5-80gb")).time(
        ops.gemm("ridge", 240, 8192, 8192, "fp16"))
    d = cost.details
    body = max(cost.compute_s, cost.memory_s - d["epilogue_s"]) + d["pipeline_loss_s"] \
        + d["epilogue_s"]
    assert math.isclose(cost.time_s - cost.overhead_s, body, rel_tol=1e-12)
