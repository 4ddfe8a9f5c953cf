"""CUDA-graph batch padding (TensorRT-LLM 1.0 ``enable_padding``): which sizes are
captured, what a generation-only step runs at, and that the serving loop prices it so."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.graph_padding import capture_sizes, padded_batch, padded_step
from xpusim.sim.inference.lowering import StepSimulator
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import LengthDist, Workload, make_requests
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

PERF_OVERVIEW = (1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 1024, 2048, 4096, 8192)


def test_capture_sizes_drop_what_exceeds_the_limits_and_capture_the_bound():
    # max_batch_size 224 (trtllm-bench's heuristic), max_num_tokens 2400: 256 and up are
    # dropped and 224 is captured in their place (_filter_cuda_graph_batch_sizes).
    assert capture_sizes(PERF_OVERVIEW, 224, 2400) == (1, 2, 4, 8, 16, 32, 64, 128, 224)
    # The token budget binds when it is the smaller bound.
    assert capture_sizes(PERF_OVERVIEW, 4096, 300) == (1, 2, 4, 8, 16, 32, 64, 128, 256, 300)
    # A bound that is itself a configured size is not captured twice.
    assert capture_sizes(PERF_OVERVIEW, 256, 8192) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert capture_sizes((), 256, 8192) == ()


def test_padded_batch_rounds_up_to_a_captured_size():
    captured = (1, 2, 4, 8, 16, 32, 64, 128, 224)
    assert [padded_batch(b, captured) for b in (1, 3, 5, 128, 129, 187, 224)] == [
        1, 4, 8, 128, 224, 224, 224]
    assert padded_batch(300, captured) == 300  # no graph that large: unpadded
    assert padded_batch(7, ()) == 7


def test_padded_step_keeps_the_real_requests_kv_total():
    seqs, context = padded_step(187, 1200.0, (128, 224))
    assert seqs == 224
    assert seqs * context == pytest.approx(187 * 1200.0)
    assert padded_step(128, 1200.0, (128, 224)) == (128, 1200.0)


def _sim() -> StepSimulator:
    # A 7B model on one A100: its decode steps are device-bound (the host work of
    # trtllm-1.0's overlap scheduler hides behind them), so padding shows in step times.
    return StepSimulator(load_model("llama-2-7b"), load_system("dgx-a100"), ParallelPlan(1),
                         load_engine("trtllm-1.0"))


def test_a_generation_only_step_is_priced_at_the_padded_batch():
    sim = _sim()
    padded = StepCosts(sim, graph_sizes=(1, 2, 4, 8))
    plain = StepCosts(sim)
    # 5 requests at mean context 400 run as 8 sequences holding the same 2,000 KV tokens.
    assert padded.decode_device(*padded_step(5, 400.0, (1, 2, 4, 8))) == plain.decode_device(
        8, 250.0)
    assert padded.mixed(5, 400.0, [], 5, 0) == pytest.approx(plain.decode_device(8, 250.0))
    assert padded.mixed(5, 400.0, [], 5, 0) > plain.mixed(5, 400.0, [], 5, 0)
    # The jump path (decode_stepper) prices the same step identically.
    assert padded.decode_stepper(5, True)(400.0) == padded.mixed(5, 400.0, [], 5, 0)
    # A step with a prompt chunk is not a graph replay: unpadded.
    assert padded.mixed(5, 400.0, [64], 5, 1) == plain.mixed(5, 400.0, [64], 5, 1)


@pytest.mark.parametrize("jump", [True, False])
def test_padding_never_speeds_a_serving_run(jump):
    w = Workload(60, 10_000.0, LengthDist("uniform", 32, 512), LengthDist("uniform", 8, 300), 3)
    sizes = capture_sizes(PERF_OVERVIEW, 64, 8192)
    padded = Server(StepCosts(_sim(), graph_sizes=sizes), 200_000, max_num_seqs=64,
                    seed=3).run(make_requests(w), jump=jump)
    plain = Server(StepCosts(_sim()), 200_000, max_num_seqs=64, seed=3).run(
        make_requests(w), jump=jump)
    assert padded.makespan_s > plain.makespan_s


def test_trtllm_1_0_profile_carries_the_perf_overview_sizes():
    assert load_engine("trtllm-1.0").cuda_graph_batch_sizes == PERF_OVERVIEW
    # Stacks without a size list read from their source run unpadded.
    assert load_engine("trtllm-0.10").cuda_graph_batch_sizes == ()
