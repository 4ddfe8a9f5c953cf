"""The serving loop's fast paths against its slow reference: runs of identical decode
steps advanced in one go (``jump``) and step shapes priced by ``StepSimulator.time_s``
give the same requests' timings as stepping every iteration with every step shape
priced by a full engine run, over every batching policy and KV reservation, with
preemption and with speculative decoding."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.speculative import draft_simulator
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import LengthDist, Workload, make_requests
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

# (engine, KV capacity in tokens): small capacities force preemption (incremental KV).
CASES = [
    ("vllm-0.6", 200_000), ("vllm-0.6", 6_000),      # prefill-first
    ("sglang-0.4", 200_000), ("sglang-0.4", 6_000),  # mixed, incremental
    ("trtllm-0.10", 200_000), ("trtllm-0.10", 12_000),  # mixed, incremental, pause cap
    ("trtllm-1.0", 200_000), ("trtllm-1.0", 12_000),  # mixed, full reservation
    ("trtllm-0.5", 200_000),                          # static
]


def _sim(engine: str) -> StepSimulator:
    return StepSimulator(load_model("qwen2-0.5b"), load_system("dgx-a100"), ParallelPlan(1),
                         load_engine(engine))


def _serve(sim, capacity, jump, exact, rate, draft=None, alpha=0.0):
    w = Workload(60, rate, LengthDist("uniform", 32, 512), LengthDist("uniform", 8, 300), 3,
                 alpha=alpha)
    costs = StepCosts(sim, draft, 3 if draft else 0, exact=exact)
    return Server(costs, capacity, seed=3).run(make_requests(w), jump=jump)


def _timings(res) -> list[float]:
    return [t for r in res.requests for t in (r.first_token_s, r.finish_s, r.preemptions)]


@pytest.mark.parametrize("engine,capacity", CASES)
@pytest.mark.parametrize("rate", [15.0, 10_000.0])
def test_jumps_and_fast_pricing_equal_the_stepwise_reference(engine, capacity, rate):
    sim = _sim(engine)
    ref = _serve(sim, capacity, jump=False, exact=True, rate=rate)
    fast = _serve(_sim(engine), capacity, jump=True, exact=False, rate=rate)
    assert _timings(fast) == pytest.approx(_timings(ref), rel=1e-12)
    for key in ("steps", "prefill_steps", "preemptions", "mean_decode_batch"):
        assert fast.metrics()[key] == ref.metrics()[key]
    assert fast.makespan_s == pytest.approx(ref.makespan_s, rel=1e-12)


def test_preemption_cases_do_preempt():
    """The small-capacity cases above exercise the KV bound of a jump."""
    res = _serve(_sim("sglang-0.4"), 6_000, jump=True, exact=False, rate=10_000.0)
    assert res.preemptions > 0


def test_speculative_decoding_is_unchanged_by_the_fast_paths():
    target = _sim("vllm-0.6")
    draft = draft_simulator(target.spec, "eagle", target.system, target.plan, target.engine,
                            "bf16", target.routing, ParallelPlan(1))
    ref = _serve(target, 200_000, jump=False, exact=True, rate=15.0, draft=draft, alpha=0.7)
    fast = _serve(_sim("vllm-0.6"), 200_000, jump=True, exact=False, rate=15.0,
                  draft=draft_simulator(target.spec, "eagle", target.system, target.plan,
                                        target.engine, "bf16", target.routing, ParallelPlan(1)),
                  alpha=0.7)
    assert _timings(fast) == pytest.approx(_timings(ref), rel=1e-12)


def test_time_s_equals_the_engine_run():
    sim = _sim("trtllm-0.10")
    for batch in (StepBatch(1, 1, 0, "decode"), StepBatch(37, 1, 3000, "decode"),
                  StepBatch(2, 700, 0, "prefill"), StepBatch(5, 4, 900, "verify")):
        for host in (True, False):
            assert sim.time_s(batch, host) == pytest.approx(
                _sim("trtllm-0.10").run(batch, host).time_s, rel=1e-12)
