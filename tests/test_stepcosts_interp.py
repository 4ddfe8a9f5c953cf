"""``StepCosts._interp_fn`` (the serving loop's interpolation over context and token
grids) checks the segment of its previous call first and keeps each segment's
differences; its values must be the formula's, y0 + (y1 - y0) * (x - x0) / (x1 - x0) on
the clamped segment, to the bit, in any call order. And the closures a serving run keeps
form no reference cycle with their ``StepCosts``."""

from __future__ import annotations

import bisect
import gc
import random

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference.decode_runs import Interp
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepSimulator
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.stepcosts import CONTEXT_GRID, TOKEN_GRID, StepCosts
from xpusim.sim.inference.workload import LengthDist, Workload, make_requests
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan


def _costs() -> StepCosts:
    # _interp_fn reads no simulator: the target is not used here.
    return StepCosts(target=None)  # type: ignore[arg-type]


def _reference(fn, grid, x):
    """The interpolation as written before the segment memo."""
    i = min(max(bisect.bisect_right(grid, x) - 1, 0), len(grid) - 2)
    x0, x1 = grid[i], grid[i + 1]
    y0, y1 = fn(x0), fn(x1)
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def test_hand_computed_values():
    at = _costs()._interp_fn(lambda x: float(x * x), (0, 10, 20))
    assert at(5) == 50.0  # 0 + (100 - 0) * 5 / 10
    assert at(15) == 250.0  # 100 + (400 - 100) * 5 / 10
    assert at(5.0) == 50.0  # back in the first segment
    assert at(-5) == -50.0  # clamped to the first segment: extrapolated
    assert at(25) == 550.0  # clamped to the last: 100 + 300 * 15 / 10
    assert at(10) == 100.0  # a grid point starts its segment
    assert at(20) == 400.0


def test_each_segment_priced_once():
    calls: list[float] = []

    def fn(x):
        calls.append(x)
        return 2.0 * x

    at = _costs()._interp_fn(fn, (0, 10, 20, 40))
    for x in (1, 2, 15, 3, 16, 35, 100, -1, 12):
        at(x)
    # Segments [0,10), [10,20), [20,40) once each, a shared end priced once for both.
    assert calls == [0, 10, 20, 40]


@pytest.mark.parametrize("grid", [CONTEXT_GRID, TOKEN_GRID], ids=["context", "tokens"])
def test_equals_formula_in_any_order(grid):
    def fn(x):
        return 1e-3 + 3.7e-7 * x + 1.3e-12 * x * x + 1.0 / (x + 7.0)

    rng = random.Random(5)
    top = grid[-1]
    xs = [rng.uniform(-100, top * 1.5) for _ in range(2000)]
    xs += [float(g) for g in grid] + list(grid) + [g - 1e-9 for g in grid[1:]]
    xs += [rng.choice(xs) + rng.choice((0.0, 0.5, 1.0)) for _ in range(2000)]  # repeats
    rng.shuffle(xs)
    at = _costs()._interp_fn(fn, grid)
    for x in xs:
        assert at(x) == _reference(fn, grid, x), x


@pytest.mark.parametrize("grid", [CONTEXT_GRID, TOKEN_GRID], ids=["context", "tokens"])
def test_two_cursors_share_the_table_and_equal_the_formula(grid):
    # A mixed step reads the token work at two points in turn through two cursors of one
    # ``Interp`` (StepCosts.mixed_device): each is the formula, and every segment is
    # still priced once for both.
    calls: list[float] = []

    def fn(x):
        return 2e-4 + 1.1e-7 * x + 3.0 / (x + 11.0)

    def counted(x):
        calls.append(x)
        return fn(x)

    interp = Interp(counted, grid)
    first, second = interp.at, interp.cursor()
    rng = random.Random(9)
    for _ in range(3000):
        lo = rng.choice(grid) + rng.uniform(0, 300)
        hi = lo + rng.choice((0, 1, 128, 640, 3000))
        assert first(hi) == _reference(fn, grid, hi)
        assert second(lo) == _reference(fn, grid, lo)
    # Each grid point priced once, whichever segment or cursor reached it first.
    assert sorted(calls) == sorted(grid[i] for i in interp.points)
    assert set(interp.points) == {j for i in interp.ends for j in (i, i + 1)}


@pytest.mark.parametrize("engine", ["vllm-0.6", "trtllm-0.10"])  # prefill-first, mixed
def test_a_serving_run_leaves_no_reference_cycle(engine):
    """The pricing closures a run keeps hold no reference to their ``StepCosts``: the run's
    objects are freed by reference counting, none left for the cyclic collector."""
    sim = StepSimulator(load_model("qwen2-0.5b"), load_system("dgx-a100"), ParallelPlan(1),
                        load_engine(engine))
    w = Workload(40, 10_000.0, LengthDist("uniform", 32, 512), LengthDist("uniform", 8, 300), 3)
    gc.collect()
    gc.disable()
    try:
        Server(StepCosts(sim), 200_000, seed=3).run(make_requests(w))
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert "StepCosts" not in left
    assert left == []
