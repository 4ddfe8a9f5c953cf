"""Pipeline-parallel serving (``xpusim infer --serve --pp P``, sim/inference/serving_pp.py).

The event model is checked on stub stage times whose runs can be followed by hand; the
stage pricing against the single-step pipeline; the real command end to end.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import NO_ENGINE, load_engine
from xpusim.sim.inference.lowering import StepBatch
from xpusim.sim.inference.pipeline import PipelineSimulator
from xpusim.sim.inference.pipeline_costs import PipelineCosts, StageTimes
from xpusim.sim.inference.serving_pp import PipelineServer, check_pp_engine
from xpusim.sim.inference.serving_pp_queue import BatchQueueServer
from xpusim.sim.inference.workload import Request
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

import xpusim


class _FlatCosts:
    """Every iteration takes ``stage_s`` on each of ``pp`` stages; no hand-off, no host."""

    def __init__(self, pp: int, stage_s: float, engine) -> None:
        self.pp, self.engine, self.stage_s = pp, engine, stage_s

    def _times(self) -> StageTimes:
        return StageTimes((self.stage_s,) * self.pp, (0.0,) * (self.pp - 1), 0.0, 0.0)

    def mixed(self, *args) -> StageTimes:
        return self._times()

    def prefill(self, *args) -> StageTimes:
        return self._times()

    def decode(self, *args) -> StageTimes:
        return self._times()


def _engine(scheduler: str, policy: str):
    return dataclasses.replace(NO_ENGINE, pp_scheduler=scheduler, policy=policy,
                               kv_reserve="full")


def _requests(n: int, prompt: int = 100, output: int = 10) -> list[Request]:
    return [Request(i, 0.0, prompt, output) for i in range(n)]


def _serve(pp: int, stage_s: float, n: int, seqs: int, scheduler="micro-batches",
           policy="mixed", output: int = 10):
    cls = BatchQueueServer if scheduler == "batch-queue" else PipelineServer
    server = cls(_FlatCosts(pp, stage_s, _engine(scheduler, policy)), 1e6, seqs, 100_000)
    requests = _requests(n, output=output)
    return server.run(requests), requests


def test_two_equal_stages_double_the_tokens_less_the_fill():
    # Two micro-batches of 4 requests, each iteration 1 s on each of 2 stages: micro-batch 0
    # lands at 2, 4, ..., 2 x 10 s; micro-batch 1, one stage behind, at 3, 5, ..., 21 s.
    run, requests = _serve(pp=2, stage_s=1.0, n=8, seqs=4)
    assert [r.first_token_s for r in requests] == [2.0] * 4 + [3.0] * 4
    assert [r.finish_s for r in requests] == [20.0] * 4 + [21.0] * 4
    assert run.makespan_s == 21.0
    # One stage holding the whole model (2 s a step) at the same per-device batch of 4:
    single, _ = _serve(pp=1, stage_s=2.0, n=4, seqs=4)
    assert single.makespan_s == 20.0
    rate = 8 * 10 / run.makespan_s
    assert rate / (4 * 10 / single.makespan_s) == pytest.approx(2 * 20 / 21)  # 2x - fill
    assert run.extra["pipeline"]["stage_busy_share"] == [20 / 21, 20 / 21]


def test_virtual_engines_split_the_cache_and_take_requests_in_turn():
    # vLLM V0: 4 requests at once go to the scheduler with the fewest unfinished ones,
    # 0, 1, 0, 1; each prefills its two, then decodes them, one stage behind the other.
    run, requests = _serve(pp=2, stage_s=1.0, n=4, seqs=4, scheduler="virtual-engines",
                           policy="prefill-first", output=3)
    assert [r.first_token_s for r in requests] == [2.0, 3.0, 2.0, 3.0]
    assert [r.finish_s for r in requests] == [6.0, 7.0, 6.0, 7.0]
    server = PipelineServer(_FlatCosts(2, 1.0, _engine("virtual-engines", "mixed")), 1600,
                            4, 1000)
    assert [b.pool.total for b in server.batches] == [50, 50]  # 100 blocks of 16, halved
    with pytest.raises(InputError, match="virtual engine's 1/pp share"):
        server.run([Request(0, 0.0, 900, 10)])  # 910 tokens fit 100 blocks, not 50


def test_batch_queue_holds_max_num_seqs_across_the_batches_in_flight():
    # vLLM V1: one scheduler, max_num_seqs = 2 over everything running, in flight or not.
    # t=0: batch 1 admits requests 0 and 1 (stage 0 until 1, stage 1 until 2); the next
    # batch finds both in flight and no room for 2 and 3, so the engine waits on batch 1.
    # 0 and 1 get their first token at 2, their second (the last) at 4; only then are 2
    # and 3 admitted: first token at 6, done at 8. TensorRT-LLM's micro-batches (2 each)
    # run 2 and 3 one stage behind instead.
    run, requests = _serve(pp=2, stage_s=1.0, n=4, seqs=2, scheduler="batch-queue", output=2)
    assert [r.first_token_s for r in requests] == [2.0, 2.0, 6.0, 6.0]
    assert [r.finish_s for r in requests] == [4.0, 4.0, 8.0, 8.0]
    assert run.extra["pipeline"]["micro_batches"] == 2
    _, trt = _serve(pp=2, stage_s=1.0, n=4, seqs=2, output=2)
    assert [r.finish_s for r in trt] == [4.0, 4.0, 5.0, 5.0]


def test_batch_queue_sends_a_prompts_chunks_into_consecutive_batches():
    # A 250-token prompt, 100 tokens a batch. V1 advances num_computed_tokens when it
    # schedules, so chunk 2 enters right behind chunk 1 (stage 0 at 1-2, stage 1 at 2-3)
    # and chunk 3 at 2 once batch 1 is out: first token at 4, the second (last) at 6.
    # TensorRT-LLM keeps the request with its micro-batch: one chunk per 2 s, done at 8.
    def serve(cls, scheduler):
        server = cls(_FlatCosts(2, 1.0, _engine(scheduler, "mixed")), 1e6, 4, 100)
        request = Request(0, 0.0, 250, 2)
        server.run([request])
        return request.first_token_s, request.finish_s

    assert serve(BatchQueueServer, "batch-queue") == (4.0, 6.0)
    assert serve(PipelineServer, "micro-batches") == (6.0, 8.0)


def test_batch_queue_takes_the_whole_cache_and_needs_the_mixed_policy():
    server = BatchQueueServer(_FlatCosts(2, 1.0, _engine("batch-queue", "mixed")), 1600, 4,
                              1000)
    assert [b.pool.total for b in server.batches] == [100]  # 100 blocks of 16, not split
    with pytest.raises(InputError, match="its policy must be \"mixed\""):
        check_pp_engine(_engine("batch-queue", "prefill-first"), 2)
    assert load_engine("vllm-nightly").pp_scheduler == "batch-queue"
    assert "sgl-project/sglang#5724" in load_engine("sglang-0.4").pp_note


class _GrowingCosts(_FlatCosts):
    """Iterations that grow with their tokens, with host work: batches overlap unevenly."""

    def mixed(self, decodes, context, chunks, *args) -> StageTimes:
        device = 0.01 + 0.001 * decodes + 0.0001 * sum(chunks)
        return StageTimes((device,) * self.pp, (0.0,) * (self.pp - 1), 0.002, 0.001)


def test_batch_queue_preempts_in_flight_and_still_serves_every_token(monkeypatch):
    # A cache of 250 blocks for 120 requests of up to 500 tokens: recompute preemption,
    # some victims taken while their batch is in flight (V1's self.running.pop()). Every
    # request still ends with exactly its output tokens and the cache drains to empty.
    engine = dataclasses.replace(_engine("batch-queue", "mixed"), kv_reserve="incremental")
    server = BatchQueueServer(_GrowingCosts(2, 0.0, engine), 4000, 64, 512)
    in_flight = []
    pause = BatchQueueServer._pause

    def spy(self, mb, victim):
        in_flight.append(id(victim) in self.inflight)
        pause(self, mb, victim)

    monkeypatch.setattr(BatchQueueServer, "_pause", spy)
    requests = [Request(i, i / 200, 10 + (37 * i) % 290, 1 + (53 * i) % 200)
                for i in range(120)]
    run = server.run(requests)
    assert any(in_flight) and run.preemptions == len(in_flight)
    assert all(r.generated == r.output and r.finish_s is not None for r in requests)
    assert server.shared.pool.used == 0 and not server.held and not server.inflight


def test_an_idle_pipeline_waits_for_the_next_arrival():
    engine = _engine("micro-batches", "mixed")
    server = PipelineServer(_FlatCosts(2, 1.0, engine), 1e6, 4, 1000)
    requests = [Request(0, 0.0, 10, 2), Request(1, 100.0, 10, 2)]
    server.run(requests)
    assert [r.first_token_s for r in requests] == [2.0, 102.0]
    assert [r.finish_s for r in requests] == [4.0, 104.0]


@pytest.fixture(scope="module")
def pipe():
    engine = load_engine("trtllm-1.0")
    return PipelineSimulator(load_model("llama-2-7b"), load_system("dgx-h100"),
                             ParallelPlan(tp=1, pp=2), engine)


def test_stage_times_add_up_to_the_single_step_pipeline(pipe):
    costs = PipelineCosts(pipe)
    times = costs.decode(64, 1024.0)  # a grid point: the interpolation is exact there
    step = pipe.run(StepBatch(64, 1, 1024, "decode"), host=False)
    assert times.device == pytest.approx(tuple(s.device_s for s in step.stages), rel=1e-12)
    assert times.sends == pytest.approx(step.sends_s, rel=1e-12)
    engine = pipe.engine
    assert times.before_s == engine.step_host_time(64)
    assert times.after_s == engine.sampling_time(64)
    mixed = costs.mixed(3, 512.0, [256], [0], 4, 1)
    assert mixed.before_s == engine.step_host_time(4) + engine.request_time(1)
    assert mixed.sends == costs.sends(3 + 256)


KW = dict(model="llama-2-7b", system="dgx-h100", tp=1, pp=2, requests=40, rate=1000.0,
          prompt_len="256", output_len="64")


def test_pipeline_serving_is_deterministic_and_reports_its_stages():
    a = xpusim.serve(engine="trtllm-1.0", **KW)
    b = xpusim.serve(engine="trtllm-1.0", **KW)
    assert a.metrics == b.metrics
    pipeline = a.metrics["pipeline"]
    assert pipeline["pp"] == 2 and pipeline["scheduler"] == "micro-batches"
    assert all(0 < share <= 1 for share in pipeline["stage_busy_share"])
    assert a.metrics["completed"] == 40 and a.as_dict()["pp"] == 2
    vllm = xpusim.serve(engine="vllm-0.6", **KW)
    assert vllm.metrics["pipeline"]["scheduler"] == "virtual-engines"
    assert "pipeline" not in xpusim.serve(engine="trtllm-1.0", **{**KW, "pp": 1}).metrics


def test_cli_serves_through_the_stages(capsys):
    args = ["infer", "--model", "llama-2-7b", "--system", "dgx-h100", "--tp", "1", "--pp",
            "2", "--engine", "trtllm-1.0", "--serve", "--requests", "20", "--rate", "1000",
            "--prompt-len", "128", "--output-len", "32"]
    assert main(args) == 0
    assert "(tp=1, pp=2, trtllm-1.0): 20/20 requests" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pp"] == 2 and out["pipeline"]["micro_batches"] == 2
    v1 = ["vllm-nightly" if a == "trtllm-1.0" else a for a in args]
    assert main(v1) == 0
    assert "(tp=1, pp=2, vllm-nightly): 20/20 requests" in capsys.readouterr().out
    assert main([*v1, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pipeline"]["scheduler"] == "batch-queue" and out["pipeline"]["micro_batches"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--engine", "sglang-0.4"], "engine 'sglang-0.4' states no pipeline-parallel scheduler"),
    (["--engine", "sglang-0.4"], "came with sgl-project/sglang#5724, merged May 2025"),
    (["--engine", "trtllm-0.5"], "engine 'trtllm-0.5' states no pipeline-parallel"),
    (["--pp", "33"], "--pp 33 exceeds the 32 layers"),
    (["--draft", "eagle"], "without speculative decoding"),
])
def test_bad_pipeline_serving_inputs_exit_non_zero(capsys, extra, message):
    args = ["infer", "--model", "llama-2-7b", "--system", "dgx-h100", "--tp", "1", "--pp",
            "2", "--serve", "--requests", "4", *extra]
    assert main(args) != 0
    assert message in capsys.readouterr().err
