"""Runs of identical decode steps priced in one numpy pass (``decode_runs``) give, to the
bit, the clock that stepping them one by one in Python gives: hand-computed values, random
interpolated functions over the context grid with every host-overlap rule and CUDA-graph
padding, real step simulators, and whole serving runs."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference import decode_runs
from xpusim.sim.inference.decode_runs import DecodeStepper, Interp
from xpusim.sim.inference.engine_profile import EngineProfile, load_engine
from xpusim.sim.inference.lowering import StepSimulator
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.stepcosts import CONTEXT_GRID, StepCosts
from xpusim.sim.inference.workload import LengthDist, Workload, make_requests
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan


def _loop(stepper: DecodeStepper, now: float, total: int, batch: int, steps_max: int,
          arrival: float = math.inf) -> tuple[float, int]:
    """The run as ``Server._decode_run`` stepped it before: one step at a time."""
    steps = 0
    while True:
        now += stepper((total + steps * batch) / batch)
        steps += 1
        if steps >= steps_max or arrival <= now:
            return now, steps


def _host(overlap: str, before: float, after: float):
    engine = EngineProfile(name="t", description="t", host_overlap=overlap)
    return (engine.step_time, overlap, before, after)


def test_hand_computed_run(monkeypatch):
    monkeypatch.setattr(decode_runs, "VECTOR_STEPS", 1)  # the numpy path at any length
    # Device time 2·c on (0, 10, 20); serial host work 1 before and 0.5 after each step.
    stepper = DecodeStepper(Interp(lambda x: 2.0 * x, (0, 10, 20)), None,
                            _host("none", 1.0, 0.5))
    # Contexts 0, 1, 2 (total 0, one request): steps 1.5, 3.5, 5.5 from t = 10.
    assert stepper.advance(10.0, 0, 1, 3, math.inf) == (20.5, 3)
    # Two requests at contexts summing to 38 (mean 19, 20, 21: across the grid point 20,
    # the last segment extrapolated) with the host hidden under the device ("all"),
    # padded to a batch of 4 (share 0.5: contexts 9.5, 10, 10.5).
    padded = DecodeStepper(Interp(lambda x: 2.0 * x, (0, 10, 20)), 0.5, _host("all", 1.0, 0.5))
    assert padded.advance(0.0, 38, 2, 3, math.inf) == (19.0 + 20.0 + 21.0, 3)
    assert list(padded.times(38, 2, 3)) == [19.0, 20.0, 21.0]
    # Host work above the device time: max(device, before + after) = 1.5 at context 0.
    assert padded.advance(0.0, 0, 2, 1, math.inf) == (1.5, 1)


def test_interp_many_equals_at_to_the_bit():
    def fn(x):
        return 1e-3 + 3.7e-7 * x + 1.3e-12 * x * x + 1.0 / (x + 7.0)

    rng = random.Random(11)
    xs = [rng.uniform(-100, 200_000) for _ in range(3000)] + [float(g) for g in CONTEXT_GRID]
    interp = Interp(fn, CONTEXT_GRID)
    many = interp.many(np.array(xs))
    assert [float(v) for v in many] == [Interp(fn, CONTEXT_GRID).at(x) for x in xs]


@pytest.mark.parametrize("overlap", ["all", "output", "none"])
@pytest.mark.parametrize("padded", [False, True])
def test_random_runs_equal_the_loop(overlap, padded, monkeypatch):
    rng = random.Random(hash((overlap, padded)) % 1000)
    for case in range(40):
        a, b, c = rng.uniform(1e-3, 1e-2), rng.uniform(1e-8, 1e-6), rng.uniform(0, 1e-12)

        def fn(x, a=a, b=b, c=c):
            return a + b * x + c * x * x

        batch = rng.randint(1, 3000)
        total = batch * rng.randint(0, 40_000) + rng.randint(0, batch - 1)
        steps = rng.randint(48, 6000)
        share = batch / (batch + rng.randint(1, 64)) if padded else None
        host = _host(overlap, rng.uniform(0, 0.02), rng.uniform(0, 0.01))
        now = rng.uniform(0, 1e4)
        fast = DecodeStepper(Interp(fn, CONTEXT_GRID), share, host)
        slow = DecodeStepper(Interp(fn, CONTEXT_GRID), share, host)
        assert fast.advance(now, total, batch, steps, math.inf) == _loop(
            slow, now, total, batch, steps), case


def _sim(engine: str) -> StepSimulator:
    return StepSimulator(load_model("qwen2-0.5b"), load_system("dgx-a100"), ParallelPlan(1),
                         load_engine(engine))


@pytest.mark.parametrize("engine,mixed,graphs", [
    ("trtllm-0.10", True, ()), ("trtllm-1.0", True, (1, 2, 4, 8, 16, 32, 64, 128, 256)),
    ("vllm-0.6", False, ()),
])
def test_real_steppers_equal_the_loop(engine, mixed, graphs):
    fast = StepCosts(_sim(engine), graph_sizes=graphs).decode_stepper(37, mixed)
    slow = StepCosts(_sim(engine), graph_sizes=graphs).decode_stepper(37, mixed)
    for total, steps in ((37 * 100, 3000), (37 * 3000 + 5, 500), (0, 48)):
        assert fast.advance(1.25, total, 37, steps, math.inf) == _loop(
            slow, 1.25, total, 37, steps)


def test_an_arrival_still_cuts_a_run():
    stepper = StepCosts(_sim("trtllm-0.10")).decode_stepper(8, True)
    now, steps = stepper.advance(0.0, 8 * 200, 8, 5000, 0.05)
    assert 1 <= steps < 5000
    assert (now, steps) == _loop(stepper, 0.0, 8 * 200, 8, 5000, 0.05)


@pytest.mark.parametrize("engine", ["vllm-0.6", "sglang-0.4", "trtllm-0.10", "trtllm-1.0"])
def test_serving_runs_equal_with_and_without_numpy(engine, monkeypatch):
    """Long decode runs (40 requests of 700 output tokens at once) through both paths: every
    request's first-token and finish time equal, and the numpy path was taken."""
    w = Workload(40, 10_000.0, LengthDist("uniform", 32, 256), LengthDist("const", 700), 3)

    def serve():
        res = Server(StepCosts(_sim(engine)), 400_000, seed=3).run(make_requests(w))
        return [(r.first_token_s, r.finish_s) for r in res.requests], res.steps

    calls = []
    many = Interp.many

    def counted(self, xs):
        calls.append(len(xs))
        return many(self, xs)

    monkeypatch.setattr(Interp, "many", counted)
    fast = serve()
    assert max(calls) >= 400
    monkeypatch.setattr(decode_runs, "VECTOR_STEPS", 1 << 40)
    assert serve() == fast
