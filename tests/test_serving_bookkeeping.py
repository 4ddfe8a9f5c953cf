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
from xpusim.sim.inference.lowering import StepSimulator
from xpusim.sim.inference.running import RunningBatch
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import LengthDist, Request, Workload, make_requests
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan


def _blocks(tokens: int, block: int) -> int:
    return math.ceil(tokens / block)


def _brute_need(running: list[Request], extra: int, block: int) -> int:
    return sum(_blocks(r.context + extra, block) for r in running)


def _brute_kv_steps(running: list[Request], total: int, step_tokens: int, block: int) -> int:
    """Steps j = 0, 1, ... whose preemption check passes, counted one at a time."""
    j = 0
    while _brute_need(running, step_tokens + j, block) <= total:
        j += 1
    return max(1, j)


def _check_batch(batch: RunningBatch, blocks_total: int, block: int) -> None:
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
    assert (batch.context, batch.need, batch.residues) == batch.rescanned()
    if decoding and not batch.pending:
        assert batch.steps_left() == min(r.output - now[id(r)] for r in decoding)
        if batch.need <= blocks_total:
            # The closed form over the residue histogram against stepping one at a time.
            current = [Request(0, 0.0, prompt=r.prompt + now[id(r)], output=0) for r in decoding]
            assert batch.kv_steps(blocks_total) == _brute_kv_steps(current, blocks_total, st, block)


class _CheckedServer(Server):
    """A server that recomputes every incremental quantity by brute force as it runs."""

    checks = 0

    def _run_length(self, running, need, step_tokens):
        if self._jump and (self.kv_reserve != "full" or self.policy != "mixed"):
            assert need == _brute_need(running, step_tokens, self.block)
            kv = self._kv_steps(running, need, step_tokens)
            assert kv == _brute_kv_steps(running, self.blocks_total, step_tokens, self.block)
            self.checks += 1
        return super()._run_length(running, need, step_tokens)

    def _admit_mixed(self, s, batch, chunks, budget):
        _check_batch(batch, self.blocks_total, self.block)
        self.checks += 1
        if self.kv_reserve == "full":
            running = [*batch.decoding.values(), *batch.pending]
            assert s.held == sum(_blocks(r.prompt + r.output, self.block) for r in running)
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
    w = Workload(80, 10_000.0, LengthDist("uniform", 16, 400), LengthDist("uniform", 4, 250),
                 seed)
    server = _CheckedServer(StepCosts(_sim(engine)), capacity, seed=seed)
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
)
def test_running_batch_sums_follow_its_steps(contexts, block, slack, step_tokens, steps):
    """Requests join at their contexts, the batch advances a few runs of steps, and the
    kept sums and the closed-form KV bound equal the brute-force ones after each."""
    batch = RunningBatch(block, step_tokens)
    requests = [Request(i, 0.0, prompt=c, output=10_000) for i, c in enumerate(contexts)]
    for r in requests:
        batch.join_decoding(r)
    for k in [0, *steps]:
        if k:
            assert batch.advance(k) == []  # outputs of 10,000 tokens: nobody finishes
        current = [Request(0, 0.0, prompt=r.prompt + batch.generated(r), output=0)
                   for r in requests]
        need = _brute_need(current, step_tokens, block)
        assert batch.need == need
        assert batch.context == sum(r.prompt for r in current)
        total = need + slack
        assert batch.kv_steps(total) == _brute_kv_steps(current, total, step_tokens, block)


@settings(max_examples=200, deadline=None)
@given(
    contexts=st.lists(st.integers(1, 300), min_size=1, max_size=12),
    block=st.sampled_from([1, 4, 16]),
    slack=st.integers(0, 60),
    step_tokens=st.integers(1, 3),
)
def test_need_and_kv_steps_equal_brute_force(contexts, block, slack, step_tokens):
    running = [Request(i, 0.0, prompt=c, output=10_000) for i, c in enumerate(contexts)]
    server = Server(_costs("vllm-0.6"), 1.0, block_size=block)
    for extra in (0, 1, step_tokens):
        assert server._need(running, extra) == _brute_need(running, extra, block)
    need = _brute_need(running, step_tokens, block)
    server.blocks_total = need + slack  # the step itself fits, as after a preemption check
    assert server._kv_steps(running, need, step_tokens) == _brute_kv_steps(
        running, server.blocks_total, step_tokens, block)
