"""TensorRT-LLM's max_utilization pause (issue 17): a preempted request keeps its
generated tokens only up to the engine's max_input_len, and the per-request host work
is paid once per request, not again when a paused request resumes.

Hand-computed: the Server's preemption and admission on a few requests, with a stub in
place of the step costs (only ``costs.target.engine`` is read by these two methods).
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.running import RunningBatch
from xpusim.sim.inference.serving import Server, _Loop
from xpusim.sim.inference.workload import Request


def _server(engine, kv_tokens: int) -> Server:
    costs = SimpleNamespace(target=SimpleNamespace(engine=engine))
    server = Server(costs, kv_tokens, max_num_seqs=16, max_batched_tokens=4096, block_size=16)
    server.policy, server.kv_reserve = engine.policy, engine.kv_reserve
    return server


def _two_requests() -> tuple[Request, Request]:
    # a: prompt 2048, 700 generated (2748 tokens = 172 blocks of 16);
    # b: prompt 128, 1000 generated (1128 tokens = 71 blocks), admitted last.
    a = Request(0, 0.0, prompt=2048, output=2048, generated=700)
    b = Request(1, 0.0, prompt=128, output=2048, generated=1000)
    return a, b


def test_trtllm_010_profile_pauses_with_the_build_max_input_len():
    engine = load_engine("trtllm-0.10")
    # perf-overview v0.10: trtllm-build --max_input_len 2048, --scheduler_policy max_utilization
    assert engine.max_input_len == 2048
    assert engine.kv_reserve == "incremental"


def _preempt(server: Server, first: Request, last: Request, stats: dict) -> tuple[list, list]:
    """The engine's preemption with ``first`` and ``last`` decoding (``last`` started
    last); returns (the requests still running, the queue)."""
    s = _Loop()
    if server.policy == "mixed":
        batch = RunningBatch(16, 1)
        batch.join_decoding(first)
        batch.join_decoding(last)
        assert server._preempt_mixed(s, batch, stats)
        return list(batch.decoding.values()), list(s.waiting)
    s.running = [first, last]
    assert server._preempt(s, 1, stats)
    return s.running, list(s.waiting)


def test_pause_keeps_generated_tokens_up_to_max_input_len():
    engine = replace(load_engine("trtllm-0.10"), max_input_len=2048)
    a, b = _two_requests()
    # Next step needs ceil(2749/16) + ceil(1129/16) = 172 + 71 = 243 blocks; 242 fit.
    server = _server(engine, 242 * 16)
    stats = {"preempt": 0}
    running, waiting = _preempt(server, a, b, stats)
    # b (the last started) is paused: new prompt = min(2048, 128 + 1000) = 1128, so all
    # 1000 generated tokens are kept and recomputed as context.
    assert running == [a] and waiting == [b]
    assert b.generated == 1000 and b.context == 1128 and b.preemptions == 1
    assert stats["preempt"] == 1


@pytest.mark.parametrize(
    ("engine_name", "max_input_len", "generated", "context"),
    [
        # TRT-LLM: min(2048, 2048 + 700) = 2048: the prompt is unchanged and the 700
        # tokens are lost (LlmRequest::pause resizes the tokens to the new prompt length).
        ("trtllm-0.10", 2048, 0, 2048),
        # vLLM has no cap: it recomputes prompt + generated and keeps every token.
        ("vllm-0.6", None, 700, 2748),
    ],
)
def test_a_paused_decoding_request_keeps_what_its_engine_keeps(
    engine_name, max_input_len, generated, context
):
    engine = load_engine(engine_name)
    if max_input_len is None:
        assert engine.max_input_len == 0  # no cap
    else:
        engine = replace(engine, max_input_len=max_input_len)
    a, b = _two_requests()
    # Pause a: it is the only decoding request in the pool.
    server = _server(engine, 242 * 16)
    _preempt(server, b, a, {"preempt": 0})
    assert a.generated == generated and a.context == context


def test_a_resumed_request_does_not_pay_the_per_request_host_work_again():
    engine = load_engine("trtllm-0.10")
    server = _server(engine, 100_000)
    fresh = Request(0, 0.0, prompt=64, output=16)
    resumed = Request(1, 0.0, prompt=64, output=16, generated=5, preemptions=1)
    s = _Loop()
    s.waiting.extend([fresh, resumed])
    batch = RunningBatch(16, 1)
    chunks: list = []
    # Both are admitted (64 + 69 tokens within the budget), one for the first time.
    assert server._admit_mixed(s, batch, chunks, 4096) == 1
    assert chunks == [(fresh, 64), (resumed, 69)]
    assert batch.pending == [fresh, resumed]
