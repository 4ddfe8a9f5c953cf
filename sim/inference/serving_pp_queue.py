"""vLLM V1's pipeline-parallel serving loop: one scheduler, a queue of P batches in flight.

``EngineProfile.pp_scheduler`` "batch-queue" (``xpusim infer --serve --pp P``;
docs/inference.md, "Serving through the stages", with the sources). What vLLM V1 does
(vllm-project/vllm, vllm/v1/engine/core.py and vllm/v1/core/sched/scheduler.py):

* One ``Scheduler`` and one ``KVCacheManager`` over all ``num_gpu_blocks`` (nothing is
  split by the PP size): one waiting queue, one running list, one KV cache.
* ``EngineCore.step_with_batch_queue`` keeps up to ``batch_queue_size`` =
  ``max_concurrent_batches`` = ``pipeline_parallel_size`` batches in flight (async
  scheduling off). It schedules a new batch whenever the queue is not full and the
  scheduler has work; when the queue is full or nothing can be scheduled it blocks on the
  oldest batch, then updates the scheduler from its output.
* ``Scheduler.schedule`` gives each batch its own ``max_num_batched_tokens`` budget, but
  ``max_num_seqs`` bounds ``len(self.running)``, which holds the requests in flight too:
  the sequence limit is global. A running request whose tokens are all scheduled (a
  decode in flight, or a prompt whose last chunk is in flight) has ``num_new_tokens ==
  0`` and is skipped ("PP>1 and we have already scheduled all prompt tokens but they are
  not finished yet"); ``num_computed_tokens`` advances at scheduling
  (``_update_after_schedule``), so a prompt's next chunk can go into the next batch while
  its previous chunk is still in the pipeline.
* No request is admitted in a step that preempted; the victim is the last of
  ``self.running`` (``self.running.pop()``), in flight or not. A victim that was in
  flight gets no token from that batch (``update_from_output`` walks ``self.running``,
  which no longer holds it) and is recomputed when admitted again.

The event chain of an iteration (host work before it, the stages, the hand-offs, the
output work after it) and its prices are ``PipelineServer``'s; only who is scheduled,
and when, differs. The batch composition is the mixed policy's (``Server._run_mixed``):
the decoding requests' tokens, the chunks of prompts still prefilling, then new prompts
from the queue's head while the token budget, ``max_num_seqs`` and the KV cache allow.
"""

from __future__ import annotations

from collections import deque

from tqdm import tqdm
from xpusim.sim.errors import InputError
from xpusim.sim.inference.kvcache import KVLayout
from xpusim.sim.inference.pipeline_costs import PipelineCosts, StageTimes
from xpusim.sim.inference.serve_result import ServeResult
from xpusim.sim.inference.serving_pp import PipelineServer, _Flight, _MicroBatch
from xpusim.sim.inference.workload import Request

# One batch in the queue: its serial number, what lands, when it leaves the last stage.
_Queued = tuple[int, _Flight, float]


class BatchQueueServer(PipelineServer):
    """The serving loop of a ``pp``-stage vLLM V1 deployment (``pp_scheduler``
    "batch-queue"): one scheduler filling a queue of up to ``pp`` batches in flight."""

    def __init__(self, costs: PipelineCosts, kv_capacity_tokens: float, max_num_seqs: int,
                 max_batched_tokens: int, block_size: int = 16,
                 layout: KVLayout | None = None) -> None:
        super().__init__(costs, kv_capacity_tokens, max_num_seqs, max_batched_tokens,
                         block_size, layout)
        # The base builds pp micro-batches over one shared queue and pool; V1 has one
        # scheduler, so one holder of the waiting queue, the running lists and the cache.
        self.shared: _MicroBatch = self.batches[0]
        self.batches = [self.shared]
        self.inflight: dict[int, int] = {}  # id(request) -> serial of its batch in flight
        self.serial = 0

    def run(self, requests: list[Request], progress: bool = False) -> ServeResult:
        """Serve ``requests`` to completion: fill the batch queue, else wait on its oldest."""
        room = self.shared.pool.total
        for r in requests:
            if self.layout.units(r.prompt + r.output) > room:
                raise InputError(
                    f"request {r.id} needs {r.prompt + r.output} tokens of KV cache; the "
                    f"deployment holds {room * self.layout.block}: shorten it or add devices")
        bar = tqdm(total=len(requests), disable=not progress, unit="req", desc="serving")
        arrivals, finished, t = deque(requests), 0, 0.0
        queue: deque[_Queued] = deque()
        while finished < len(requests):
            self._arrive(arrivals, t)
            work = self._schedule_shared() if len(queue) < self.costs.pp else None
            if work is not None:
                times, flight = work
                t += times.before_s
                queue.append((self._enqueue(flight), flight, self._through(times, t)))
            elif queue:  # full, or nothing to schedule: block on the oldest batch
                serial, flight, ready = queue.popleft()
                t = max(t, ready) + flight.after_s
                done = self._land_shared(serial, flight, t)
                finished += done
                bar.update(done)
            elif arrivals:  # idle: the next request wakes the engine
                t = max(t, arrivals[0].arrival_s)
            else:
                raise InputError("the scheduler can admit no waiting request "
                                 "(a request larger than the KV cache?)")
        bar.close()
        return self._result(requests)

    def _enqueue(self, flight: _Flight) -> int:
        """Mark the batch's requests in flight; returns its serial number."""
        self.serial += 1
        for r in (*flight.decodes, *flight.prompts):
            self.inflight[id(r)] = self.serial
        return self.serial

    def _schedule_shared(self) -> tuple[StageTimes, _Flight] | None:
        """The next batch from the requests not in flight (``Scheduler.schedule``), or
        None when there is none."""
        mb = self.shared
        preempted = self._fit(mb)
        decodes = [r for r in mb.running if id(r) not in self.inflight]
        budget = self.max_batched_tokens - len(decodes)
        chunks: list[int] = []
        prefixes: list[int] = []
        prompts: list[Request] = []
        for r in mb.pending:  # prompts whose last chunk is in flight have none left
            if budget <= 0:
                break
            if r.prefill_left:
                budget -= self._chunk(r, budget, chunks, prefixes, prompts)
        admitted = 0 if preempted else self._admit_mixed(mb, budget, chunks, prefixes, prompts)
        if not decodes and not chunks:
            return None
        n = len(decodes)
        self.stats["steps"] += 1
        self.stats["prefill"] += 1 if chunks else 0
        self.stats["batch_sum"] += n
        context = sum(r.context for r in decodes) / n if n else 0.0
        times = self.costs.mixed(n, context, chunks, prefixes, n + len(prompts), admitted)
        return times, _Flight(decodes, prompts, times.after_s)

    def _pause(self, mb: _MicroBatch, victim: Request) -> None:
        """``PipelineServer._pause``; a victim in flight keeps no claim on its batch."""
        self.inflight.pop(id(victim), None)
        super()._pause(mb, victim)

    def _land_shared(self, serial: int, flight: _Flight, now: float) -> int:
        """The outputs of batch ``serial`` at ``now``: a token for each of its requests
        not preempted since (a finished prompt's first), after which the prompts decode;
        those at their output length finish and free their KV units."""
        mb = self.shared
        landed = [r for r in (*flight.decodes, *flight.prompts)
                  if self.inflight.get(id(r)) == serial]
        for r in landed:
            del self.inflight[id(r)]
            r.generated += 1
        live = {id(r) for r in landed}
        ended = [r for r in flight.prompts if id(r) in live]
        if ended:
            for r in ended:
                if r.first_token_s is None:
                    r.first_token_s = now
            out = {id(r) for r in ended}
            mb.pending = [r for r in mb.pending if id(r) not in out]
            mb.running += ended
        done = [r for r in landed if r.generated >= r.output]
        for r in done:
            r.finish_s = now
            mb.pool.used -= self.held.pop(id(r))
        if done:
            gone = {id(r) for r in done}
            mb.running = [r for r in mb.running if id(r) not in gone]
        return len(done)
