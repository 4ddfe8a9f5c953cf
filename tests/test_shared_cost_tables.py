"""Serving runs on step simulators of equal inputs share their interpolation tables
(``stepcosts.CostTables`` in ``StepMemo.costs``): a run after another reads the grid
points the first priced. None of it may change a number: a run on shared tables gives
the same floats as one on fresh tables, bit for bit."""

from __future__ import annotations

import gc

from xpusim.hwprofiles import load_system
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepSimulator
from xpusim.sim.inference.priced_step import clear_memos
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import LengthDist, Workload, make_requests
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan


def _sim(engine: str = "trtllm-0.10") -> StepSimulator:
    return StepSimulator(load_model("qwen2-0.5b"), load_system("dgx-a100"), ParallelPlan(1),
                         load_engine(engine))


def _workload(seed: int) -> Workload:
    return Workload(60, 5_000.0, LengthDist("uniform", 32, 3000), LengthDist("uniform", 8, 300),
                    seed)


def _run(sim: StepSimulator, seed: int, graphs: tuple[int, ...] = ()) -> tuple:
    costs = StepCosts(sim, graph_sizes=graphs)
    run = Server(costs, 400_000, max_batched_tokens=2048, seed=seed).run(
        make_requests(_workload(seed)))
    times = [(r.first_token_s, r.finish_s) for r in run.requests]
    probes = (costs.mixed(7, 900.5, [300, 40], 8, 1, [0, 512]),
              costs.mixed_device(3, 77.0, [1000], [2000]),
              costs.decode_device(5, 4000.0), costs.prefill(2, 700.0),
              costs.chunk_attention(300.0, 700.0), costs.prefill_token_device(96))
    return run.makespan_s, run.steps, times, probes


def test_equal_simulators_share_the_tables():
    clear_memos()
    first, second = StepCosts(_sim()), StepCosts(_sim())
    assert first._tables is second._tables
    first.decode_device(9, 300.0)
    assert second._grid_interp("decode_device", 9).points is first._grid[
        ("decode_device", 9, 0)].points
    assert StepCosts(_sim(), exact=True)._tables is not first._tables
    assert StepCosts(_sim("vllm-0.6"))._tables is not first._tables  # other inputs


def test_shared_tables_form_no_reference_cycle():
    """The tables hold floats, no pricing function: a dropped memo (``clear_memos``, or
    evicted) and its runs are freed by reference counting, none left for the cyclic
    collector (which ``xpusim validate`` pauses while a row runs)."""
    clear_memos()
    gc.collect()
    gc.disable()
    try:
        _run(_sim(), 1)
        _run(_sim(), 2)
        clear_memos()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    # (The system's collective pricer, dropped with ``shared_table``, holds cycles of its
    # own: not the pricing's.)
    pricing = {"StepMemo", "StepSimulator", "StepCosts", "CostTables", "Interp",
               "DecodeStepper", "PricedStep", "StepBatch"}
    assert not left & pricing


def test_a_run_on_shared_tables_equals_one_on_fresh_tables():
    for engine, graphs in (("trtllm-0.10", ()), ("vllm-0.6", (1, 2, 4, 8, 16, 32))):
        clear_memos()
        _run(_sim(engine), 1, graphs)  # fills the shared tables with another workload
        shared = _run(_sim(engine), 2, graphs)
        clear_memos()
        fresh = _run(_sim(engine), 2, graphs)
        assert shared == fresh  # the same floats, bit for bit
