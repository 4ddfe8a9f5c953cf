"""Continuous batching on a pipeline-parallel deployment (``xpusim infer --serve --pp P``).

The serving engines that run pipeline parallelism keep P micro-batches in flight, one per
stage, so that every stage works while the others do (docs/inference.md, "Pipeline
parallelism", with the sources):

* vLLM V0 (0.6; ``EngineProfile.pp_scheduler`` "virtual-engines"): P schedulers ("virtual
  engines"), each with its own waiting queue, its own ``max_num_seqs`` and token budget and
  ``num_gpu_blocks // P`` of the KV blocks (vllm/core/scheduler.py, Scheduler.__init__); a
  new request joins the scheduler with the fewest unfinished requests
  (vllm/engine/llm_engine.py, add_request). Each virtual engine schedules its next step
  once its last one has come out of the last stage.
* TensorRT-LLM ("micro-batches": the 0.10 C++ batch manager, mNumMicroBatches = PP size
  over one capacity scheduler of max_batch_size x PP requests and one KV cache manager;
  1.0's PyTorch ``PyExecutor._executor_loop_pp``, num_micro_batches = pp_size): each
  micro-batch is scheduled in turn, up to ``max_num_seqs`` (max_batch_size) requests and
  ``max_batched_tokens`` tokens, from the requests not in flight and one KV cache. A
  request stays with the micro-batch that admitted it: the PP loop frees a micro-batch's
  requests (``_remove_inflight_ids``) right before that micro-batch is scheduled again.
* vLLM V1 ("batch-queue": one scheduler, up to P batches in flight, global
  ``max_num_seqs``, one KV cache) runs ``serving_pp_queue.BatchQueueServer``, which
  reuses this module's event chain.

Each micro-batch's iteration is an event chain: the engine's host work before it
(scheduling, inputs, new requests: ``StageTimes.before_s``) on the engine's one host
thread; then stage 0, its hand-off to stage 1, stage 1, ... (a stage runs one micro-batch
at a time, in the order they entered the pipeline; the hand-off holds the sending stage:
the send is on its stream); then, on the host thread again, the outputs (sampling,
detokenisation: ``after_s``), after which the micro-batch's requests have their tokens and
it is scheduled again. The fill at the start, the pipeline's steady beat (the slowest
stage plus its hand-off, when the host keeps up) and the drain at the end all come out of
these times; nothing else is added. The pp=1 overlap of host and device work
(``host_overlap``) is not applied: vLLM turns its async output processing off under PP
(config.py: "Async output processing can not be enabled with pipeline parallel") and
TensorRT-LLM 1.0 runs ``_executor_loop_pp`` instead of the overlap loop; the micro-batches
overlap one another's host work instead.

Admission, preemption and the step composition are ``serving.Server``'s for the engine's
policy ("prefill-first" or "mixed"), per micro-batch; speculative decoding and static
batching are not modelled with PP (refused in sim/api/serve.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from tqdm import tqdm
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import EngineProfile
from xpusim.sim.inference.kvcache import KVLayout
from xpusim.sim.inference.pipeline_costs import PipelineCosts, StageTimes
from xpusim.sim.inference.serve_result import ServeResult
from xpusim.sim.inference.workload import Request


@dataclass
class _Pool:
    """KV-cache units (blocks without windowed layers) and those taken."""

    total: int
    used: int = 0


@dataclass(frozen=True)
class _Flight:
    """A micro-batch's iteration in the pipeline: who gets a token when it lands."""

    decodes: list[Request]  # decoding requests: one token each
    prompts: list[Request]  # prompts that end with this iteration: their first token
    after_s: float  # the host's output work once it leaves the last stage


@dataclass
class _MicroBatch:
    """One virtual engine's or micro-batch's requests and its place in the pipeline."""

    index: int
    waiting: deque[Request]  # its own queue (virtual engines) or the shared one
    pool: _Pool  # its own blocks (virtual engines) or the shared cache
    running: list[Request] = field(default_factory=list)  # decoding, in admission order
    pending: list[Request] = field(default_factory=list)  # prompts still prefilling
    ready_s: float = 0.0  # when it can be scheduled (its last iteration's outputs back)
    flight: _Flight | None = None

    @property
    def unfinished(self) -> int:
        """vLLM's get_num_unfinished_seq_groups: waiting + running."""
        return len(self.waiting) + len(self.running) + len(self.pending)


def check_pp_engine(engine: EngineProfile, pp: int) -> None:
    """A pipeline-parallel serving run needs an engine whose PP scheduler is modelled,
    with a continuous-batching policy."""
    if engine.pp_scheduler == "none":
        note = f" ({engine.pp_note})" if engine.pp_note else ""
        raise InputError(
            f"--pp {pp} with --serve: engine '{engine.name}' states no pipeline-parallel "
            f"scheduler{note}; profiles with one: vllm-nightly (V1 batch queue), vllm-0.6 "
            "(virtual engines), trtllm-0.10, trtllm-0.17 and trtllm-1.0 (micro-batches); "
            "pick one with --engine, drop --serve to price one step through the stages, "
            "or serve with --tp/--ep only")
    if engine.pp_scheduler == "batch-queue" and engine.policy != "mixed":
        raise InputError(f"--pp {pp} with --serve: engine '{engine.name}' states vLLM V1's "
                         "batch queue, whose one scheduler mixes prompts and decodes; its "
                         f"policy must be \"mixed\" (got \"{engine.policy}\")")
    if engine.policy == "static":
        raise InputError(f"--pp {pp} with --serve: engine '{engine.name}' batches "
                         "statically, which has no pipeline-parallel scheduler modelled")


class PipelineServer:
    """The serving loop of a ``pp``-stage deployment: micro-batches through the stages."""

    def __init__(self, costs: PipelineCosts, kv_capacity_tokens: float, max_num_seqs: int,
                 max_batched_tokens: int, block_size: int = 16,
                 layout: KVLayout | None = None) -> None:
        engine = costs.engine
        self.costs, self.engine = costs, engine
        self.layout = layout if layout is not None else KVLayout(block=block_size)
        self.kv_capacity_tokens = kv_capacity_tokens
        self.max_num_seqs, self.max_batched_tokens = max_num_seqs, max_batched_tokens
        self.split = engine.pp_scheduler == "virtual-engines"
        total, pp = self.layout.total_units(kv_capacity_tokens), costs.pp
        if self.split:  # vLLM: num_gpu_blocks //= pipeline_parallel_size per scheduler
            pools = [_Pool(total // pp) for _ in range(pp)]
            queues: list[deque[Request]] = [deque() for _ in range(pp)]
        else:
            pools, queues = [_Pool(total)] * pp, [deque()] * pp
        self.batches = [_MicroBatch(i, queues[i], pools[i]) for i in range(pp)]
        self.host_free = 0.0  # when the engine's host thread is next free
        self.stage_free = [0.0] * pp  # when each stage is next free
        self.stage_busy = [0.0] * pp  # each stage's busy time (device + its hand-off)
        self.held: dict[int, int] = {}  # id(request) -> KV units it holds
        self.stats = {"steps": 0, "prefill": 0, "preempt": 0, "batch_sum": 0}

    def _units(self, r: Request) -> int:
        """KV units a request holds: all it will need (full reservation), or its context
        and the next token (``Server._reserve``)."""
        if self.engine.kv_reserve == "full":
            return self.layout.units(r.prompt + r.output)
        return self.layout.units(r.prompt + r.generated + 1)

    def run(self, requests: list[Request], progress: bool = False) -> ServeResult:
        """Serve ``requests`` to completion through the pipeline."""
        room = self.batches[0].pool.total
        for r in requests:
            if self.layout.units(r.prompt + r.output) > room:
                share = " (a virtual engine's 1/pp share)" if self.split else ""
                raise InputError(
                    f"request {r.id} needs {r.prompt + r.output} tokens of KV cache; the "
                    f"deployment holds {room * self.layout.block} per scheduler{share}: "
                    "shorten it or add devices")
        bar = tqdm(total=len(requests), disable=not progress, unit="req", desc="serving")
        arrivals, finished = deque(requests), 0
        while finished < len(requests):
            mb = min(self.batches, key=lambda b: (b.ready_s, b.flight is None, b.index))
            t = max(mb.ready_s, self.host_free)
            self._arrive(arrivals, t)
            if mb.flight is not None:
                t += mb.flight.after_s
                done = self._land(mb, t)
                finished += done
                bar.update(done)
            work = self._schedule(mb)
            if work is None:
                self.host_free = t
                mb.ready_s = self._wake(mb, arrivals, finished < len(requests))
                continue
            times, mb.flight = work
            self.host_free = t + times.before_s
            mb.ready_s = self._through(times, self.host_free)
        bar.close()
        return self._result(requests)

    def _arrive(self, arrivals: deque[Request], now: float) -> None:
        """Requests due by ``now`` join a queue: the shared one, or the virtual engine's
        with the fewest unfinished requests (the first of equals)."""
        while arrivals and arrivals[0].arrival_s <= now:
            r = arrivals.popleft()
            target = min(self.batches, key=lambda b: (b.unfinished, b.index))
            target.waiting.append(r)

    def _wake(self, mb: _MicroBatch, arrivals: deque[Request], left: bool) -> float:
        """When an idle micro-batch looks again: the next arrival, or the next landing of
        another micro-batch (it frees KV cache and, under one queue, requests)."""
        times = [b.ready_s for b in self.batches
                 if b is not mb and (b.flight is not None or b.unfinished)]
        wake = min([arrivals[0].arrival_s if arrivals else math.inf, *times])
        if wake == math.inf and left:
            raise InputError("the pipeline's schedulers can admit no waiting request "
                             "(a request larger than one scheduler's KV share?)")
        return wake

    def _through(self, times: StageTimes, start: float) -> float:
        """The iteration through the stages from ``start``: each stage takes it when free
        (first come, first served) and holds it for its device time and hand-off."""
        t, last = start, len(times.device) - 1
        for s, device in enumerate(times.device):
            busy = device + (times.sends[s] if s < last else 0.0)
            t = max(t, self.stage_free[s]) + busy
            self.stage_free[s] = t
            self.stage_busy[s] += busy
        return t

    def _land(self, mb: _MicroBatch, now: float) -> int:
        """The outputs of ``mb``'s iteration, processed at ``now``: each decoding request
        gains a token, each finished prompt its first; the requests that reach their
        output length finish and free their KV units. Returns how many finished."""
        flight = mb.flight
        assert flight is not None
        mb.flight = None
        for r in flight.decodes:
            r.generated += 1
        if flight.prompts:
            ended = {id(r) for r in flight.prompts}
            for r in flight.prompts:
                r.generated += 1
                if r.first_token_s is None:
                    r.first_token_s = now
            mb.pending = [r for r in mb.pending if id(r) not in ended]
            mb.running += flight.prompts
        done = [r for r in mb.running if r.generated >= r.output]
        if done:
            for r in done:
                r.finish_s = now
                mb.pool.used -= self.held.pop(id(r))
            mb.running = [r for r in mb.running if r.generated < r.output]
        return len(done)

    def _schedule(self, mb: _MicroBatch) -> tuple[StageTimes, _Flight] | None:
        """``mb``'s next iteration by the engine's policy, or None with nothing to run."""
        if self.engine.policy == "mixed":
            return self._mixed(mb)
        return self._prefill_first(mb)

    def _fit(self, mb: _MicroBatch) -> bool:
        """Incremental KV: the requests of ``mb`` take the units their next token needs;
        while the cache overflows the latest admitted decoding request is preempted
        (recompute: ``Server._preempt``). Returns whether any was."""
        if self.engine.kv_reserve == "full":
            return False
        pool, held = mb.pool, self.held
        for r in (*mb.running, *mb.pending):
            units = self._units(r)
            pool.used += units - held[id(r)]
            held[id(r)] = units
        preempted = False
        while pool.used > pool.total and mb.running:
            victim = mb.running.pop()
            pool.used -= held.pop(id(victim))
            self._pause(mb, victim)
            preempted = True
        return preempted

    def _pause(self, mb: _MicroBatch, victim: Request) -> None:
        """``Server._pause``: back to the head of the queue, to be prefilled again (the
        recomputed context capped at the engine's ``max_input_len``, if set)."""
        victim.preemptions += 1
        cap = self.engine.max_input_len
        if cap:
            victim.generated = min(victim.generated, max(0, cap - victim.prompt))
        victim.prefill_left = 0
        self.stats["preempt"] += 1
        mb.waiting.appendleft(victim)

    def _take(self, mb: _MicroBatch, r: Request) -> bool:
        """Admit the queue's head ``r`` into ``mb`` if its KV units fit."""
        units = self._units(r)
        if mb.pool.used + units > mb.pool.total:
            return False
        mb.waiting.popleft()
        mb.pool.used += units
        self.held[id(r)] = units
        return True

    def _prefill_first(self, mb: _MicroBatch) -> tuple[StageTimes, _Flight] | None:
        """vLLM V0's default policy (``Server._run_batched``): a prefill of the requests
        admitted within the token budget and batch limit, else a decode of every running
        request after preemption."""
        admit: list[Request] = []
        budget = self.max_batched_tokens
        while mb.waiting and len(mb.running) + len(admit) < self.max_num_seqs:
            r = mb.waiting[0]
            if (admit and r.context > budget) or not self._take(mb, r):
                break
            budget -= r.context
            admit.append(r)
        if admit:
            mb.pending = admit
            self.stats["prefill"] += 1
            times = self.costs.prefill(len(admit), sum(r.context for r in admit) / len(admit))
            return times, _Flight([], admit, times.after_s)
        self._fit(mb)
        if not mb.running:
            return None
        n = len(mb.running)
        self.stats["steps"] += 1
        self.stats["batch_sum"] += n
        times = self.costs.decode(n, sum(r.context for r in mb.running) / n)
        return times, _Flight(list(mb.running), [], times.after_s)

    def _mixed(self, mb: _MicroBatch) -> tuple[StageTimes, _Flight] | None:
        """In-flight batching (``Server._run_mixed``): every decoding request's token, the
        prompt chunks of the requests still prefilling, then newly admitted prompts, up
        to the token budget; none admitted after a preemption."""
        preempted = self._fit(mb)
        decoding = len(mb.running)
        budget = self.max_batched_tokens - decoding
        chunks: list[int] = []
        prefixes: list[int] = []
        prompts: list[Request] = []
        for r in mb.pending:
            if budget <= 0:
                break
            budget -= self._chunk(r, budget, chunks, prefixes, prompts)
        admitted = 0 if preempted else self._admit_mixed(mb, budget, chunks, prefixes, prompts)
        if not decoding and not chunks:
            return None
        self.stats["steps"] += 1
        self.stats["prefill"] += 1 if chunks else 0
        self.stats["batch_sum"] += decoding
        context = sum(r.context for r in mb.running) / decoding if decoding else 0.0
        times = self.costs.mixed(decoding, context, chunks, prefixes, decoding + len(prompts),
                                 admitted)
        return times, _Flight(list(mb.running), prompts, times.after_s)

    @staticmethod
    def _chunk(r: Request, budget: int, chunks: list[int], prefixes: list[int],
               prompts: list[Request]) -> int:
        """A chunk of ``r``'s prompt within ``budget``; returns its size."""
        c = min(r.prefill_left, budget)
        chunks.append(c)
        prefixes.append(r.prompt + r.generated - r.prefill_left)
        r.prefill_left -= c
        if r.prefill_left == 0:
            prompts.append(r)
        return c

    def _admit_mixed(self, mb: _MicroBatch, budget: int, chunks: list[int],
                     prefixes: list[int], prompts: list[Request]) -> int:
        """``Server._admit_mixed`` for ``mb``: from the queue's head while the batch limit,
        the KV cache and the token budget allow; without chunked prefill a prompt enters
        only whole. Returns the requests that entered for the first time."""
        admitted = 0
        whole = not self.engine.chunked_prefill
        while (mb.waiting and budget > 0
               and len(mb.running) + len(mb.pending) < self.max_num_seqs):
            r = mb.waiting[0]
            context = r.prompt + r.generated
            if whole and budget < context <= self.max_batched_tokens:
                break
            if not self._take(mb, r):
                break
            r.prefill_left = context
            mb.pending.append(r)
            budget -= self._chunk(r, budget, chunks, prefixes, prompts)
            admitted += 1 if r.preemptions == 0 else 0
        return admitted

    def _result(self, requests: list[Request]) -> ServeResult:
        """The run's ``ServeResult``, with each stage's share of the makespan busy."""
        stats = self.stats
        makespan = max([r.finish_s for r in requests if r.finish_s is not None], default=0.0)
        mean_batch = stats["batch_sum"] / stats["steps"] if stats["steps"] else 0.0
        pipeline = {
            "pp": self.costs.pp,
            "scheduler": self.engine.pp_scheduler,
            "micro_batches": self.costs.pp,
            "stage_busy_share": [b / makespan if makespan else 0.0 for b in self.stage_busy],
        }
        return ServeResult(requests, makespan, stats["steps"], stats["prefill"],
                           stats["preempt"], mean_batch, self.kv_capacity_tokens,
                           extra={"pipeline": pipeline})
