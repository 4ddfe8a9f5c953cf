"""Continuous-batching serving simulation."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.speculative import draft_simulator
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import LengthDist, Workload, make_requests
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan


@pytest.fixture(scope="module")
def sim():
    return StepSimulator(
        load_model("qwen2-0.5b"), load_system("dgx-a100"), ParallelPlan(1), load_engine("vllm-0.6")
    )


def _run(sim, capacity=200_000, seed=0, n=40, rate=20.0, costs=None, alpha=0.0):
    w = Workload(
        n, rate, LengthDist("uniform", 32, 256), LengthDist("uniform", 8, 64), seed, alpha=alpha
    )
    return Server(costs or StepCosts(sim), capacity, seed=seed).run(make_requests(w))


def test_all_requests_complete_with_sane_metrics(sim):
    res = _run(sim)
    m = res.metrics()
    assert m["completed"] == 40
    for r in res.requests:
        assert r.arrival_s <= r.first_token_s <= r.finish_s
        assert r.generated == r.output
    assert m["ttft_s"]["p50"] <= m["ttft_s"]["p90"] <= m["ttft_s"]["p99"]
    assert m["throughput_tokens_per_s"] == pytest.approx(
        sum(r.output for r in res.requests) / res.makespan_s
    )
    # A decode step never beats the simulator's batch-1 step.
    assert m["tpot_s"]["p50"] >= sim.run(StepBatch(1, 1, 0)).time_s * 0.99


def test_seeded_runs_are_identical(sim):
    a, b = _run(sim, seed=7).metrics(), _run(sim, seed=7).metrics()
    assert a == b
    assert _run(sim, seed=8).metrics() != a


def test_small_kv_cache_preempts_and_still_finishes(sim):
    tight = _run(sim, capacity=1200, n=30, rate=100.0)
    assert tight.preemptions > 0
    assert tight.metrics()["completed"] == 30
    roomy = _run(sim, n=30, rate=100.0)
    assert roomy.preemptions == 0
    assert tight.metrics()["e2e_s"]["mean"] >= roomy.metrics()["e2e_s"]["mean"]


def test_request_larger_than_cache_is_an_input_error(sim):
    with pytest.raises(InputError, match="KV cache"):
        _run(sim, capacity=100)


def test_interpolated_decode_matches_grid_points(sim):
    costs = StepCosts(sim)
    assert costs.decode(8, 512) == pytest.approx(sim.run(StepBatch(8, 1, 512)).time_s)
    mid = costs.decode(8, 384)
    assert costs.decode(8, 256) <= mid <= costs.decode(8, 512)


def test_speculative_serving_emits_more_tokens_per_step(sim):
    system = load_system("dgx-a100")
    target = StepSimulator(load_model("llama-2-7b"), system, ParallelPlan(1), sim.engine)
    draft = draft_simulator(
        load_model("llama-2-7b"), load_model("qwen2-0.5b"), system, ParallelPlan(1), sim.engine
    )
    plain = _run(target, costs=StepCosts(target), alpha=0.9)
    sd = _run(target, costs=StepCosts(target, draft, 4), alpha=0.9)
    assert sd.metrics()["completed"] == plain.metrics()["completed"]
    assert sd.steps < plain.steps
    tokens = sum(r.output for r in sd.requests)
    assert tokens / sd.steps > tokens / plain.steps


def test_length_dist_parsing():
    assert LengthDist.parse("128", "x").kind == "const"
    assert LengthDist.parse("uniform:1:5", "x").b == 5
    for bad in ("uniform:5:1", "exp:0", "zipf:2", "abc"):
        with pytest.raises(InputError):
            LengthDist.parse(bad, "--prompt-len")


def test_trace_file(tmp_path, sim):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,10\n0.05,50,5\n")
    reqs = make_requests(Workload(trace=str(trace)))
    assert [(r.prompt, r.output) for r in reqs] == [(100, 10), (50, 5)]
    res = Server(StepCosts(sim), 100_000).run(reqs)
    assert res.metrics()["completed"] == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("t,p\n1,2\n")
    with pytest.raises(InputError, match="columns"):
        make_requests(Workload(trace=str(bad)))
