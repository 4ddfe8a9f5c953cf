"""The serving loop's incremental bookkeeping against brute-force recomputation.

``Server`` keeps the KV blocks the batch needs as one running sum per iteration (the
preemption check's, reduced per victim and reused by admission and by the run-length
bound) and computes a decode run's KV bound in closed form. The mixed policy's
``RunningBatch`` keeps its sums (context, KV blocks, the residue histogram) and its
requests' tokens across iterations. Here every such value is checked, during real runs,
against the per-request sums the loop used to rescan, and the closed-form run length
against stepping the block counts one step at a time.
"""

from __future__ import annotations

import functools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_system
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.kvcache import KVLayout
from xpusim.sim.inference.lowering import StepSimulator
from xpusim.sim.inference.running import RunningBatch
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import LengthDist, Request, Workload, make_requests
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

# Windowed layouts the tests run: (full, sliding, window); cap = ceil(window / block) + 1.
WINDOWED = [(1, 1, 64), (0, 1, 40), (2, 1, 16)]
UNBOUNDED = 2_000


def _layout(block: int, windowed: tuple[int, int, int] | None) -> KVLayout:
    if windowed is None:
        return KVLayout(block=block)
    full, sliding, window = windowed
    return KVLayout(block, full, sliding, math.ceil(window / block) + 1)


def _blocks(tokens: int, block: int | KVLayout) -> int:
    """A request's units, written out: full x ceil(t / b) + sliding x min(that, cap)."""
    if isinstance(block, int):
        return math.ceil(tokens / block)
    n = math.ceil(tokens / block.block)
    if not block.sliding:
        return n
    return block.full * n + block.sliding * min(n, block.cap)


def _brute_need(running: list[Request], extra: int, block: int | KVLayout) -> int:
    return sum(_blocks(r.context + extra, block) for r in running)


def _brute_kv_steps(
    running: list[Request], total: int, step_tokens: int, block: int | KVLayout
) -> int:
    """Steps j = 0, 1, ... whose preemption check passes, counted one at a time (up to
    ``UNBOUNDED``: with every windowed request at its cap and no full layer, the need
    stops growing and every step passes)."""
    j = 0
    while j < UNBOUNDED and _brute_need(running, step_tokens + j, block) <= total:
        j += 1
    return max(1, j)


def _first_cap(running: list[Request], step_tokens: int, layout: KVLayout) -> int | None:
    """The first step j >= 1 at which some request's windowed blocks reach the cap."""
    b, cap = layout.block, layout.cap
    below = [r.context + step_tokens for r in running if math.ceil((r.context + step_tokens) / b) < cap]
    return min((cap - 1) * b + 1 - t for t in below) if below else None


def _assert_kv_steps(got: int, running: list[Request], total: int, step_tokens: int,
                     block: int | KVLayout) -> None:
    """The closed-form bound equals stepping one at a time; with windows it may stop
    earlier, but only at the first cap step."""
    brute = _brute_kv_steps(running, total, step_tokens, block)
    if brute == UNBOUNDED:
        assert got >= brute or got == _first_cap(running, step_tokens, block)
    elif isinstance(block, KVLayout) and block.windowed and got != brute:
        assert got < brute and got == _first_cap(running, step_tokens, block)
    else:
        assert got == brute


def _check_batch(batch: RunningBatch, blocks_total: int, block: KVLayout) -> None:
    """Every sum the batch keeps against the requests, summed afresh. A decoding request's
    tokens are its written ``generated`` plus the steps since (``RunningBatch.generated``),
    checked against its output length and against every step having added one token."""
    decoding = list(batch.decoding.values())
    now = {id(r): batch.generated(r) for r in decoding}
    assert all(1 <= now[id(r)] < r.output for r in decoding)
    assert batch.context == sum(r.prompt + now[id(r)] for r in decoding)
    st = batch.step_tokens
    assert batch.need == sum(_blocks(r.prompt + now[id(r)] + st, block) for r in decoding) + sum(
        _blocks(r.context + st, block) for r in batch.pending)
    assert (batch.context, batch.need, batch.residues, batch.open) == batch.rescanned()
    if decoding and not batch.pending:
        assert batch.steps_left() == min(r.output - now[id(r)] for r in decoding)
        if batch.need <= blocks_total:
            # The closed form over the residue histogram against stepping one at a time.
            current = [Request(0, 0.0, prompt=r.prompt + now[id(r)], output=0) for r in decoding]
            _assert_kv_steps(batch.kv_steps(blocks_total), current, blocks_total, st, block)


class _CheckedServer(Server):
    """A server that recomputes every incremental quantity by brute force as it runs."""

    checks = 0

    def _run_length(self, running, need, step_tokens):
        if self._jump and (self.kv_reserve != "full" or self.policy != "mixed"):
            assert need == _brute_need(running, step_tokens, self.layout)
            kv = self._kv_steps(running, need, step_tokens)
            _assert_kv_steps(kv, running, self.blocks_total, step_tokens, self.layout)
            self.checks += 1
        return super()._run_length(running, need, step_tokens)

    def _admit_mixed(self, s, batch, chunks, budget):
        _check_batch(batch, self.blocks_total, self.layout)
        self.checks += 1
        if self.kv_reserve == "full":
            running = [*batch.decoding.values(), *batch.pending]
            assert s.held == sum(_blocks(r.prompt + r.output, self.layout) for r in running)
        return super()._admit_mixed(s, batch, chunks, budget)


@functools.cache
def _costs(engine: str) -> StepCosts:
    return StepCosts(_sim(engine))


def _sim(engine: str) -> StepSimulator:
    return StepSimulator(load_model("qwen2-0.5b"), load_system("dgx-a100"), ParallelPlan(1),
                         load_engine(engine))


@pytest.mark.parametrize("engine,capacity", [
    ("vllm-0.6", 6_000), ("sglang-0.4", 6_000), ("trtllm-0.10", 12_000),
    ("trtllm-1.0", 12_000), ("trtllm-0.5", 200_000),
])
@pytest.mark.parametrize("seed", [1, 2])
def test_incremental_bookkeeping_equals_brute_force_during_a_run(engine, capacity, seed):
    _checked_run(engine, capacity, seed, None)


@pytest.mark.parametrize("engine,capacity", [
    ("vllm-0.6", 4_000), ("sglang-0.4", 4_000), ("trtllm-1.0", 12_000),
])
@pytest.mark.parametrize("windowed", WINDOWED)
def test_windowed_bookkeeping_equals_brute_force_during_a_run(engine, capacity, windowed):
    """The same with windowed layers: prompts of 16..400 tokens against windows of 16..64
    tokens, so requests join below and above their cap and cross it while decoding."""
    _checked_run(engine, capacity, 1, windowed)


def _checked_run(engine: str, capacity: int, seed: int, windowed) -> None:
    w = Workload(80, 10_000.0, LengthDist("uniform", 16, 400), LengthDist("uniform", 4, 250),
                 seed)
    server = _CheckedServer(StepCosts(_sim(engine)), capacity, seed=seed,
                            layout=_layout(16, windowed))
    res = server.run(make_requests(w))
    assert res.metrics()["completed"] == 80
    assert server.checks > 0
    # Every request's tokens were written back when it finished.
    assert all(r.generated == r.output for r in res.requests)


@settings(max_examples=200, deadline=None)
@given(
    contexts=st.lists(st.integers(1, 300), min_size=1, max_size=12),
    block=st.sampled_from([1, 4, 16]),
    slack=st.integers(0, 60),
    step_tokens=st.integers(1, 3),
    steps=st.lists(st.integers(1, 40), max_size=4),
    windowed=st.sampled_from([None, *WINDOWED]),
)
def test_running_batch_sums_follow_its_steps(contexts, block, slack, step_tokens, steps, windowed):
    """Requests join at their contexts, the batch advances a few runs of steps, and the
    kept sums and the closed-form KV bound equal the brute-force ones after each."""
    layout = _layout(block, windowed)
    batch = RunningBatch(block, step_tokens, layout=layout)
    requests = [Request(i, 0.0, prompt=c, output=10_000) for i, c in enumerate(contexts)]
    for r in requests:
        batch.join_decoding(r)
    for k in [0, *steps]:
        if k:
            assert batch.advance(k) == []  # outputs of 10,000 tokens: nobody finishes
        current = [Request(0, 0.0, prompt=r.prompt + batch.generated(r), output=0)
                   for r in requests]
        need = _brute_need(current, step_tokens, layout)
        assert batch.need == need
        assert batch.context == sum(r.prompt for r in current)
        assert (batch.context, batch.need, batch.residues, batch.open) == batch.rescanned()
        total = need + slack
        _assert_kv_steps(batch.kv_steps(total), current, total, step_tokens, layout)


@settings(max_examples=200, deadline=None)
@given(
    contexts=st.lists(st.integers(1, 300), min_size=1, max_size=12),
    block=st.sampled_from([1, 4, 16]),
    slack=st.integers(0, 60),
    step_tokens=st.integers(1, 3),
    windowed=st.sampled_from([None, *WINDOWED]),
)
def test_need_and_kv_steps_equal_brute_force(contexts, block, slack, step_tokens, windowed):
    running = [Request(i, 0.0, prompt=c, output=10_000) for i, c in enumerate(contexts)]
    layout = _layout(block, windowed)
    server = Server(_costs("vllm-0.6"), 1.0, block_size=block, layout=layout)
    for extra in (0, 1, step_tokens):
        assert server._need(running, extra) == _brute_need(running, extra, layout)
    need = _brute_need(running, step_tokens, layout)
    server.blocks_total = need + slack  # the step itself fits, as after a preemption check
    _assert_kv_steps(server._kv_steps(running, need, step_tokens), running,
                     server.blocks_total, step_tokens, layout)
