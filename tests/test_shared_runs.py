"""Engine runs (``StepSimulator.run``) shared by simulators of equal inputs through their
``StepMemo``: a second simulator gets results equal (``==``) to a fresh run's, as its own
copies (no dict shared with the memo or the first simulator), and its ``time_s`` stays
the fast path's until it runs the step itself (as before the runs were shared)."""

from __future__ import annotations

from xpusim.hwprofiles import load_system
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inference.priced_step import clear_memos
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

ARGS = ("qwen2-57b-a14b", "hgx-a800", ParallelPlan(tp=2), "bf16", "vllm-0.6")


def _sim() -> StepSimulator:
    model, system, plan, dtype, engine = ARGS
    return StepSimulator(load_model(model), load_system(system), plan, load_engine(engine),
                         dtype)


def test_a_shared_run_equals_a_fresh_one_and_is_a_copy():
    batches = [StepBatch(b, q, 512, phase) for b in (1, 7, 64)
               for q, phase in ((1, "decode"), (3, "verify"))]
    clear_memos()
    first = _sim()
    fast = [first.time_s(b) for b in batches]
    ran = [first.run(b) for b in batches] + [first.run(b, host=False) for b in batches]
    second = _sim()
    assert [second.time_s(b) for b in batches] == fast  # not read from the shared runs
    shared = [second.run(b) for b in batches] + [second.run(b, host=False) for b in batches]
    clear_memos()
    fresh = _sim()
    assert shared == ran == [fresh.run(b) for b in batches] + [
        fresh.run(b, host=False) for b in batches]
    for a, b in zip(ran, shared, strict=True):
        assert a is not b and a.by_kind is not b.by_kind and a.details is not b.details
    shared[0].by_kind["x"] = 1.0  # a caller's change reaches no other simulator
    assert "x" not in _sim().run(batches[0]).by_kind
