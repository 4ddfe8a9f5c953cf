"""The serving loop's shortcuts against the per-request computations they replace.

``RunningBatch.prefilled`` adds the one block a request's first token may cross instead of
taking its prompt's units out and its decoding units in; ``admit`` takes the units the
admission already computed; ``advance`` finds the finishing requests without
``_live_end``; ``Server.run`` checks the longest request against the cache instead of every
request. Each is compared here with the computation it replaces.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_system
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.kvcache import KVLayout
from xpusim.sim.inference.lowering import StepSimulator
from xpusim.sim.inference.running import RunningBatch
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import Request
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

# (full, sliding, window) of a windowed layout, or None.
LAYOUTS = [None, (1, 1, 64), (0, 1, 40), (2, 1, 16)]


def _layout(block: int, windowed: tuple[int, int, int] | None) -> KVLayout:
    if windowed is None:
        return KVLayout(block=block)
    full, sliding, window = windowed
    return KVLayout(block, full, sliding, math.ceil(window / block) + 1)


@settings(max_examples=300, deadline=None)
@given(
    prompts=st.lists(st.integers(1, 300), min_size=1, max_size=10),
    generated=st.integers(0, 40),
    block=st.sampled_from([1, 4, 16]),
    step_tokens=st.integers(1, 3),
    windowed=st.sampled_from(LAYOUTS),
    given_units=st.booleans(),
)
def test_admit_and_prefilled_keep_need_as_units_summed(prompts, generated, block, step_tokens,
                                                      windowed, given_units):
    """Requests (fresh or resumed with ``generated`` tokens) are admitted, then prefilled
    one by one: ``need`` stays the sum of units(prompt + generated + step_tokens) over the
    batch, and the decoding requests' context sum follows."""
    layout = _layout(block, windowed)
    batch = RunningBatch(block, step_tokens, layout=layout)
    requests = [Request(i, 0.0, prompt=p, output=10_000, generated=generated)
                for i, p in enumerate(prompts)]
    for r in requests:
        units = layout.units(r.prompt + r.generated + step_tokens)
        batch.admit(r, units if given_units else None)
    assert batch.need == sum(layout.units(r.prompt + r.generated + step_tokens)
                             for r in requests)
    for r in requests:
        batch.prefilled(r)
        assert batch.need == sum(layout.units(q.prompt + q.generated + step_tokens)
                                 for q in requests)
    batch.pending = []
    assert (batch.context, batch.need, batch.residues, batch.open) == batch.rescanned()


@settings(max_examples=200, deadline=None)
@given(
    outputs=st.lists(st.integers(2, 30), min_size=1, max_size=12),
    leave=st.lists(st.integers(0, 11), max_size=4),
    steps=st.lists(st.integers(1, 12), min_size=1, max_size=6),
)
def test_advance_returns_the_requests_that_end_at_each_tick(outputs, leave, steps):
    """With stale heap entries (requests that left early), ``advance`` returns exactly the
    requests still decoding whose output is reached at the new tick, in heap order, each
    with its tokens written."""
    batch = RunningBatch(16, 1)
    requests = [Request(i, 0.0, prompt=10, output=o, generated=1) for i, o in enumerate(outputs)]
    for r in requests:
        batch.join_decoding(r)
    for i in sorted(set(leave)):
        if i < len(requests) and id(requests[i]) in batch.decoding:
            batch.leave(requests[i])
    for k in steps:
        k = min(k, batch.steps_left()) if batch.decoding else k
        if not batch.decoding:
            break
        tick = batch.tick + k
        expected = sorted((r for r in batch.decoding.values()
                           if r.output - batch.generated(r) == k), key=lambda r: r.id)
        done = batch.advance(k)
        assert sorted(done, key=lambda r: r.id) == expected
        assert all(r.generated == r.output for r in done)
        assert batch.tick == tick
        for r in done:
            batch.leave(r)


def _state(batch: RunningBatch) -> tuple:
    return (batch.context, batch.need, batch.tick, list(batch.residues), list(batch.decoding),
            dict(batch.since), dict(batch.entry), dict(batch.live), batch.serial)


@settings(max_examples=200, deadline=None)
@given(
    outputs=st.lists(st.integers(2, 40), min_size=1, max_size=12),
    contexts=st.lists(st.integers(1, 60), min_size=12, max_size=12),
    leave=st.lists(st.integers(0, 11), max_size=4),
    steps=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    block=st.sampled_from([1, 4, 16]),
)
def test_finish_is_advance_then_leave_all(outputs, contexts, leave, steps, block):
    """``finish`` (the serving loop's path) leaves the batch exactly as ``advance``
    followed by ``leave_all`` of the requests it returns, and returns the same list."""
    pair = []
    for _ in range(2):
        batch = RunningBatch(block, 1)
        requests = [Request(i, 0.0, prompt=contexts[i], output=o, generated=1)
                    for i, o in enumerate(outputs)]
        for r in requests:
            batch.join_decoding(r)
        for i in sorted(set(leave)):
            if i < len(requests) and id(requests[i]) in batch.decoding:
                batch.leave(requests[i])
        pair.append((batch, requests))
    (one, ones), (two, twos) = pair
    for k in steps:
        if not one.decoding:
            break
        k = min(k, one.steps_left(), two.steps_left())  # each drops its stale heap heads
        done = one.advance(k)
        one.leave_all(done)
        got = two.finish(k)
        assert [r.id for r in got] == [r.id for r in done]
        assert [(r.generated, r.finish_s) for r in twos] == [(r.generated, r.finish_s)
                                                             for r in ones]
        # The same sums and tables (the dict keys are the requests' ids: by request id).
        ids = {id(a): a.id for a in ones} | {id(a): a.id for a in twos}
        a, b = _state(one), _state(two)
        assert a[:4] == b[:4] and a[8] == b[8]
        assert [ids[k] for k in a[4]] == [ids[k] for k in b[4]]
        assert {ids[k]: v for k, v in a[5].items()} == {ids[k]: v for k, v in b[5].items()}
        assert {ids[k]: v for k, v in a[6].items()} == {ids[k]: v for k, v in b[6].items()}
        assert {s: r.id for s, r in a[7].items()} == {s: r.id for s, r in b[7].items()}
        assert one.ends == two.ends


def _server(capacity_tokens: float) -> Server:
    sim = StepSimulator(load_model("qwen2-0.5b"), load_system("dgx-a100"), ParallelPlan(1),
                        load_engine("vllm-0.6"))
    return Server(StepCosts(sim), capacity_tokens, block_size=16)


def test_a_request_longer_than_the_cache_is_named_first_in_order():
    """Only the longest request is checked up front; when it fails, the message names the
    first request (in order) that does not fit, as the per-request scan did."""
    requests = [Request(0, 0.0, 100, 50), Request(1, 0.0, 900, 200), Request(2, 0.0, 2000, 10)]
    with pytest.raises(InputError, match="request 1 needs 1100 tokens"):
        _server(1024).run(requests)
    fits = [Request(0, 0.0, 100, 50), Request(1, 0.0, 200, 20)]
    assert _server(1024).run(fits).metrics()["completed"] == 2
