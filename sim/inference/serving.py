"""Continuous-batching serving simulation (an event loop over iterations), vLLM-V0 style.

Requests arrive (Poisson or a trace), wait in FCFS order, and are admitted while
the KV cache has room for their prompt (paged in blocks) and the batch is below
``max_num_seqs``. Each iteration is either a prefill of the newly admitted
requests (prefill has priority, as in vLLM's default scheduler) or one decode
step of every running request; with speculative decoding a decode step is one SD
round that emits 1 + accepted tokens per request, the acceptance sampled per
request. When a decode step finds no free block, the most recently admitted
request is preempted and recomputed later (vLLM's recompute preemption).

With an engine whose ``policy`` is "mixed" (chunked prefill / in-flight batching:
SGLang, TensorRT-LLM, MindIE, vLLM with chunked prefill) every iteration runs the
decode token of every running request together with prompt chunks of admitted
requests, up to ``max_batched_tokens`` tokens in all (``Server._run_mixed``); with
``kv_reserve = "full"`` a request is admitted only when its prompt plus its whole
output fits (TensorRT-LLM's GUARANTEED_NO_EVICT) and is never preempted.

Step times come from ``StepCosts`` (sim/inference/stepcosts.py: ``StepSimulator``'s
ops -> cost model -> engine with the engine profile's host overheads, interpolated over
context); the requests from ``Workload`` (sim/inference/workload.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm
from xpusim.sim.errors import InputError
from xpusim.sim.inference.kvcache import KVLayout
from xpusim.sim.inference.running import RunningBatch, windowed_kv_steps
from xpusim.sim.inference.serve_result import ServeResult
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import Request


class _Arrivals:
    """Requests in list order, joining the queue once the clock reaches their arrival."""

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests
        self.count = 0  # requests arrived so far

    @property
    def next_s(self) -> float:
        """Arrival time of the next request (inf when all have arrived)."""
        if self.count < len(self.requests):
            return self.requests[self.count].arrival_s
        return math.inf

    def pull(self, now: float, waiting: deque) -> None:
        reqs, count = self.requests, self.count  # locals: once per request of a run
        end = len(reqs)
        while count < end and reqs[count].arrival_s <= now:
            waiting.append(reqs[count])
            count += 1
        self.count = count


@dataclass
class _Loop:
    """The state of one run's event loop: the queue, the batch and the clock."""

    waiting: deque[Request] = field(default_factory=deque)
    # The batch of the prefill-first and static policies (the mixed policy's is a
    # ``RunningBatch``, which keeps its sums).
    running: list[Request] = field(default_factory=list)
    now: float = 0.0
    finished: int = 0
    used: int = 0  # KV blocks in use (prefill-first and static policies)
    # Mixed policy with full reservation: the KV blocks the running requests hold
    # (constant per request), kept rather than rescanned every iteration.
    held: int = 0
    # KV blocks the running requests need for the next step (sum of
    # blocks(context + step_tokens)), as the last preemption check left it: the
    # run-length bound that follows it in the same iteration reuses it instead of
    # rescanning the batch (prefill-first and static policies; the mixed policy keeps
    # it in its ``RunningBatch``).
    need: int = 0


class Server:
    """The continuous-batching scheduler: an event loop over serving iterations."""

    def __init__(
        self,
        costs: StepCosts,
        kv_capacity_tokens: float,
        max_num_seqs: int = 256,
        max_batched_tokens: int = 8192,
        block_size: int = 16,
        seed: int = 0,
        layout: KVLayout | None = None,
    ) -> None:
        """``layout``: what a request's KV holds (``kvcache.kv_layout``: windowed layers
        capped under an engine that frees them); None: every layer the whole context.
        ``blocks_total`` and every block count below are in the layout's units (blocks
        when no layer is windowed)."""
        self.costs = costs
        # Whether a prompt may be split over steps (the engine's chunked prefill).
        self.chunked = costs.target.engine.chunked_prefill
        self.layout = layout if layout is not None else KVLayout(block=block_size)
        if self.layout.block != block_size:
            raise InputError(
                f"KV layout block {self.layout.block} differs from block_size {block_size}"
            )
        self.blocks_total = self.layout.total_units(kv_capacity_tokens)
        self.block = block_size
        # The block size where units are blocks (no windowed layer), else 0: admission
        # reads it every iteration (the layout is fixed for the server's life).
        self._plain_block = 0 if self.layout.windowed else block_size
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.rng = np.random.default_rng(seed + 1)
        self.kv_capacity_tokens = kv_capacity_tokens

    def _blocks(self, tokens: int) -> int:
        # Units of the layout: the integer ceiling of tokens / block without windows.
        return self.layout.units(tokens)

    def _holds(self) -> str:
        """The cache's size in tokens, for messages (whole blocks without windows)."""
        if self.layout.windowed:
            return f"{self.kv_capacity_tokens:,.0f} (whole context on every layer)"
        return str(self.blocks_total * self.block)

    def _need(self, running: list[Request], extra: int) -> int:
        """Sum of ``_blocks(r.context + extra)`` over ``running``, inlined: this runs
        once per iteration over the whole batch (tests/test_serving_bookkeeping.py
        checks it against the per-request sum)."""
        if self.layout.windowed:
            units = self.layout.units
            return sum([units(r.prompt + r.generated + extra) for r in running])
        b = self.block
        return -sum([(-(r.prompt + r.generated + extra)) // b for r in running])

    def run(
        self, requests: list[Request], progress: bool = False, jump: bool = True
    ) -> ServeResult:
        """Serve ``requests`` to completion.

        An event loop over iterations: arrivals join the queue at their time; each
        iteration admits, prefills and decodes as the engine's policy says and advances
        the clock by the step's time. A run of decode steps in which nothing can change
        the batch (no arrival can be admitted, no request finishes or is preempted, no
        prompt chunk is pending) is advanced in one go (``jump``): each of its steps is
        still priced at its own mean context, but the per-request bookkeeping is done
        once per run instead of once per step. ``jump=False`` steps one iteration at a
        time (the reference the tests compare with); the two agree exactly.
        """
        engine = self.costs.target.engine
        self.policy, self.kv_reserve = engine.policy, engine.kv_reserve
        # Units grow with the tokens (``KVLayout.units``): only the longest request can
        # fail, and the message names the first that does.
        longest = max([r.prompt + r.output for r in requests], default=0)
        if self._blocks(longest) > self.blocks_total:
            r = next(r for r in requests if self._blocks(r.prompt + r.output) > self.blocks_total)
            raise InputError(
                f"request {r.id} needs {r.prompt + r.output} tokens of KV cache; the "
                f"deployment holds {self._holds()}: shorten it or add devices"
            )
        # Runs of identical decode steps: only without speculative decoding, whose
        # per-request acceptance draws must stay in step order.
        self._jump = jump and not self.costs.draft
        arrivals = _Arrivals(requests)
        stats = {"steps": 0, "prefill": 0, "preempt": 0, "batch_sum": 0}
        bar = tqdm(total=len(requests), disable=not progress, unit="req", desc="serving")
        if self.policy == "mixed":
            self._run_mixed(requests, arrivals, stats, bar)
        else:
            self._run_batched(requests, arrivals, stats, bar)
        bar.close()
        makespan = max([r.finish_s for r in requests if r.finish_s is not None], default=0.0)
        mean_batch = stats["batch_sum"] / stats["steps"] if stats["steps"] else 0.0
        return ServeResult(
            requests,
            makespan,
            stats["steps"],
            stats["prefill"],
            stats["preempt"],
            mean_batch,
            self.kv_capacity_tokens,
        )

    def _run_length(self, running: list[Request], need: int, step_tokens: int) -> int:
        """How many decode steps, from this one, can run with the batch unchanged.

        Up to the first finish; with incremental KV, while the preemption check of every
        step would pass (``need``: the blocks this step needs, as that check found them);
        admission that failed stays failed (the cache only fills, FCFS keeps the head),
        and an arrival into an empty queue ends the run (checked by the caller)."""
        if not self._jump:
            return 1
        k = min(r.output - r.generated for r in running)
        if self.kv_reserve != "full" or self.policy != "mixed":
            k = min(k, self._kv_steps(running, need, step_tokens))
        return max(1, k)

    def _kv_steps(self, running: list[Request], need: int, step_tokens: int) -> int:
        """The number of consecutive decode steps, from this one, whose preemption check
        passes: steps j = 0, 1, ... while sum(blocks(context + j + step_tokens)) stays
        within the cache (each step adds one token per request; ``need`` is the sum at
        j = 0).

        Request i's block count grows at step f_i (1..block: the step at which its
        tokens cross a block boundary) and every ``block`` steps after, so each
        ``block`` steps add exactly one block per request: ``spare // n`` whole periods
        fit, and in the next the (spare % n + 1)-th smallest f_i is the first step that
        does not. Exact, so a run stops only where stepping one at a time would have
        preempted (the earlier bound, ``spare // n * block + 1`` steps, is never larger)."""
        spare = self.blocks_total - need
        if spare < 0:
            return 1
        if self.layout.windowed:
            return windowed_kv_steps(running, spare, step_tokens, self.layout)
        b = self.block
        periods, rest = divmod(spare, len(running))
        first = sorted([(-(r.prompt + r.generated + step_tokens)) % b for r in running])
        return periods * b + first[rest] + 1

    def _decode_run(
        self, total, batch, waiting, arrivals, now, steps_max, stepper
    ) -> tuple[float, int]:
        """Advance ``steps_max`` decode steps of ``batch`` requests whose contexts sum to
        ``total`` (fewer if a request arrives into an empty queue): each priced by
        ``stepper`` at its own mean context; returns (clock, steps). The caller adds the
        tokens. Neither the queue nor the arrivals change during the run: an arrival ends
        it only into an empty queue, once the clock reaches the next one."""
        arrival = math.inf if waiting else arrivals.next_s
        return stepper.advance(now, total, batch, steps_max, arrival)

    def _run_batched(self, requests, arrivals, stats, bar) -> None:
        """Prefill-first (vLLM V0) and static batching."""
        s = _Loop()
        step_tokens = self.costs.gamma + 1 if self.costs.draft else 1
        # Static batching admits a new batch only when the last one has drained, and
        # prefills all of it at once (no token budget).
        static = self.policy == "static"
        while s.finished < len(requests):
            arrivals.pull(s.now, s.waiting)
            if not s.running and not s.waiting:
                s.now = arrivals.next_s
                continue
            if (
                static
                and not s.running
                and len(s.waiting) < self.max_num_seqs
                and arrivals.count < len(requests)
            ):
                # A static batch is formed from the queue once it is full (or no
                # more requests will come), as a fixed-batch benchmark does.
                s.now = arrivals.next_s
                continue
            admit = self._admit_batched(s, static)
            if admit:
                self._prefill_batch(s, admit, stats)
            else:
                # Decode: every running request needs room for this step's new tokens.
                preempted = self._preempt(s, step_tokens, stats)
                if not s.running:
                    continue
                self._decode_batched(s, arrivals, preempted, step_tokens, stats)
            s.finished += len(self._retire(s.running, s.now, bar))
            s.used = self._held(s.running)

    def _admit_batched(self, s: _Loop, static: bool) -> list[Request]:
        """Admit from the head of the queue while the KV cache, the batch limit and the
        prefill token budget allow (nothing while a static batch runs)."""
        admit: list[Request] = []
        budget = math.inf if static else self.max_batched_tokens
        while (
            s.waiting
            and len(s.running) + len(admit) < self.max_num_seqs
            and not (static and s.running)
        ):
            r = s.waiting[0]
            need = self._reserve(r)
            if s.used + need > self.blocks_total or (admit and r.context > budget):
                break
            s.waiting.popleft()
            s.used += need
            budget -= r.context
            admit.append(r)
        return admit

    def _prefill_batch(self, s: _Loop, admit: list[Request], stats: dict) -> None:
        """One prefill of the admitted requests; each gets its first token."""
        mean_prompt = sum(r.context for r in admit) / len(admit)
        s.now += self.costs.prefill(
            len(admit), mean_prompt
        ) + self.costs.target.engine.request_time(len(admit))
        stats["prefill"] += 1
        for r in admit:
            if r.first_token_s is None:
                r.first_token_s = s.now
            r.generated += 1
        s.running += admit

    def _preempt(self, s: _Loop, step_tokens: int, stats: dict) -> bool:
        """Recompute preemption (vLLM) while the running requests outgrow the cache: the
        most recently admitted request frees its blocks and is paused (``_pause``)."""
        preempted = False
        need = self._need(s.running, step_tokens)
        while s.running and need > self.blocks_total:
            victim = s.running.pop()
            need -= self._blocks(victim.prompt + victim.generated + step_tokens)
            self._pause(s, victim, stats)
            preempted = True
        s.need = need
        return preempted

    def _pause(self, s: _Loop, victim: Request, stats: dict) -> None:
        """``victim`` goes back to the head of the queue, to be prefilled again (prompt +
        generated) when readmitted; with the engine's ``max_input_len`` set (TensorRT-LLM's
        pause) the recomputed context is capped at it and the generated tokens beyond are
        generated again."""
        victim.preemptions += 1
        cap = self.costs.target.engine.max_input_len
        if cap:  # LlmRequest::pause: new prompt = min(max_input_len, prompt + generated)
            victim.generated = min(victim.generated, max(0, cap - victim.prompt))
        stats["preempt"] += 1
        s.waiting.appendleft(victim)

    def _decode_batched(
        self, s: _Loop, arrivals: _Arrivals, preempted: bool, step_tokens: int, stats: dict
    ) -> None:
        """One SD round, or a run of identical decode steps, of every running request."""
        batch = len(s.running)
        if self.costs.draft:
            context = sum(r.context for r in s.running) / batch
            s.now += self.costs.sd_round(batch, context)
            for r in s.running:
                r.generated = min(r.output, r.generated + self._sd_tokens(r.alpha))
            steps = 1
        else:
            k = 1 if preempted else self._run_length(s.running, s.need, step_tokens)
            total = sum([r.prompt + r.generated for r in s.running])
            s.now, steps = self._decode_run(
                total, batch, s.waiting, arrivals, s.now, k, self.costs.decode_stepper(batch, False)
            )
            for r in s.running:
                r.generated += steps
        stats["steps"] += steps
        stats["batch_sum"] += batch * steps

    def _held(self, running: list[Request]) -> int:
        """KV blocks the running requests hold after a step."""
        if self.kv_reserve == "full":
            return sum(self._blocks(r.prompt + r.output) for r in running)
        return self._need(running, 0)

    def _reserve(self, r: Request) -> int:
        """KV blocks a request holds: all it will ever need ("full"), or its context."""
        # ``layout.units`` directly (``_blocks``): tried at every iteration of a run.
        if self.kv_reserve == "full":
            return self.layout.units(r.prompt + r.output)
        return self.layout.units(r.prompt + r.generated + 1)

    def _run_mixed(self, requests, arrivals, stats, bar) -> None:
        """In-flight batching: decodes and prompt chunks share each step's token budget.
        The batch's sums are kept as requests join, leave and gain tokens
        (``RunningBatch``), so an iteration costs O(1) bookkeeping plus one pass that
        adds each decoding request's token."""
        s = _Loop()
        step_tokens = self.costs.gamma + 1 if self.costs.draft else 1
        batch = RunningBatch(self.block, step_tokens, layout=self.layout)
        # Read once: the loop below runs ~2M times over ``validate --published``.
        incremental, total = self.kv_reserve != "full", len(requests)
        waiting, decodes, blocks_total = s.waiting, batch.decoding, self.blocks_total
        max_tokens, plain = self.max_batched_tokens, not self.costs.draft
        while s.finished < total:
            # ``arrivals.pull`` only when the next request is due (most iterations: none is).
            count = arrivals.count
            if count < total and requests[count].arrival_s <= s.now:
                arrivals.pull(s.now, waiting)
            if not decodes and not batch.pending and not waiting:  # not batch
                s.now = arrivals.next_s
                continue
            # Full reservation never preempts: every admitted request's KV is held.
            # Started requests come first: when one of them cannot grow, the latest
            # started ones are preempted and no new request is admitted this step
            # (TensorRT-LLM MaxUtilizationScheduler: pending requests are tried only
            # if all started ones fit; vLLM's scheduler: no prefills after a preemption).
            preempted = (incremental and batch.need > blocks_total
                         and self._preempt_mixed(s, batch, stats))
            decoding = len(decodes)
            budget = max_tokens - decoding * step_tokens
            chunks: list[tuple[Request, int]] = []
            if batch.pending:
                chunks, budget = self._pending_chunks(batch, budget)
            admitted = 0 if preempted else self._admit_mixed(s, batch, chunks, budget)
            if not decoding and not chunks:
                continue
            if not chunks and not preempted and plain and not batch.pending:
                # Only decodes: a run of identical steps until something changes.
                k = self._run_length_mixed(batch)
                s.now, steps = self._decode_run(
                    batch.context, decoding, waiting, arrivals, s.now, k,
                    self.costs.decode_stepper(decoding, True),
                )
                done = batch.finish(steps)
                stats["steps"] += steps
                stats["batch_sum"] += decoding * steps
            else:
                done = self._mixed_step(s, batch, chunks, admitted, stats)
            if done:
                self._retire_mixed(s, batch, done, bar)

    def _preempt_mixed(self, s: _Loop, batch: RunningBatch, stats: dict) -> bool:
        """``_preempt`` over the decoding requests of ``batch``, whose ``need`` is kept."""
        preempted = False
        while batch.decoding and batch.need > self.blocks_total:
            self._pause(s, batch.pop_latest(), stats)
            preempted = True
        return preempted

    def _run_length_mixed(self, batch: RunningBatch) -> int:
        """``_run_length`` of a batch with no prompt pending."""
        if not self._jump:
            return 1
        k = batch.steps_left()
        if self.kv_reserve != "full":
            k = min(k, batch.kv_steps(self.blocks_total))
        return max(1, k)

    def _retire_mixed(self, s: _Loop, batch: RunningBatch, done: list[Request], bar) -> None:
        """Finish ``done`` (requests that have all their tokens, out of ``batch`` already:
        ``RunningBatch.finish``, ``_mixed_step``) at the current time."""
        now = s.now
        for r in done:
            r.finish_s = now
        if self.kv_reserve == "full":  # ``_reserve`` of each: the units it held
            if b := self._plain_block:
                s.held += sum([(-(r.prompt + r.output)) // b for r in done])
            else:
                units = self.layout.units
                s.held -= sum([units(r.prompt + r.output) for r in done])
        s.finished += len(done)
        bar.update(len(done))

    @staticmethod
    def _pending_chunks(batch: RunningBatch, budget: int) -> tuple[list[tuple[Request, int]], int]:
        """Prompt chunks of the requests still prefilling, in order, within ``budget``."""
        chunks: list[tuple[Request, int]] = []
        for r in batch.pending:
            if budget <= 0:
                break  # no later request gets a chunk
            c = min(r.prefill_left, budget)
            chunks.append((r, c))
            budget -= c
        return chunks, budget

    def _admit_mixed(
        self, s: _Loop, batch: RunningBatch, chunks: list[tuple[Request, int]], budget: int
    ) -> int:
        """Admit from the head of the queue while the KV cache, the batch limit and the
        token budget allow; each admitted request's first chunk joins ``chunks``. Without
        the engine's ``chunked_prefill`` a prompt is admitted only whole (it waits, and
        so does the queue behind it, until a step's budget holds it), unless it exceeds
        the whole budget, which only chunks can serve.

        Returns how many requests entered for the first time: the engine's per-request
        host work (``request_overhead_s``: request and response objects, response
        delivery) is paid once per request, not again when a preempted one resumes."""
        if not s.waiting or budget <= 0 or len(batch.decoding) + len(batch.pending) >= (
                self.max_num_seqs):
            return 0  # most iterations: nothing to try, or no room in the batch
        full = self.kv_reserve == "full"
        used = self._taken(s, batch, full)
        admitted = 0
        whole = not self.chunked
        # Read once: every iteration of a run tries the queue's head (~10^6 times over a
        # 30,000-request run), and ``len(batch)`` grows by one per admission.
        waiting, reserve, size = s.waiting, self._reserve, len(batch)
        own, pending, joined = not full and batch.step_tokens == 1, batch.pending, 0
        step = batch.step_tokens
        # Without windowed layers ``_reserve`` is a block count, computed here inline.
        block = self._plain_block
        while waiting and budget > 0 and size < self.max_num_seqs:
            r = waiting[0]
            context = r.prompt + r.generated  # ``r.context``: plus recomputed tokens
            if whole and budget < context <= self.max_batched_tokens:
                break  # no chunked prefill: the prompt waits for a step that holds it
            if not block:
                need = reserve(r)
            elif full:
                need = -(-(r.prompt + r.output) // block)
            else:
                need = -(-(context + 1) // block)
            if used + need > self.blocks_total:
                break
            waiting.popleft()
            used += need
            if full:
                s.held += need
            r.prefill_left = context
            c = min(context, budget)
            chunks.append((r, c))
            budget -= c
            # The incremental reservation is the units the batch counts for a prompt
            # (units(prompt + generated + 1)) when a step adds one token; else the units
            # of context + step tokens: ``batch.admit`` inline, its sum added once below.
            pending.append(r)
            joined += need if own else (-(-(context + step) // block) if block
                                        else batch.units(context + step))
            size += 1
            admitted += 1 if r.preemptions == 0 else 0
        batch.need += joined
        return admitted

    @staticmethod
    def _taken(s: _Loop, batch: RunningBatch, full: bool) -> int:
        """The KV units admission counts as taken: the blocks held under full
        reservation, else the batch's sum of units(context + 1)."""
        if full:
            return s.held
        if batch.step_tokens == 1:
            # The preemption check's sum of blocks(context + 1): the same as the
            # incremental reservation admission counts.
            return batch.need
        return batch.need_at(1)

    def _mixed_step(
        self,
        s: _Loop,
        batch: RunningBatch,
        chunks: list[tuple[Request, int]],
        admitted: int,
        stats: dict,
    ) -> list[Request]:
        """One iteration of decode tokens (or SD rounds) and prompt chunks. Returns the
        requests that reached their output length, out of ``batch`` (``leave_all``)."""
        decoding = len(batch.decoding)
        context = batch.context / decoding if decoding else 0.0
        # The chunks' sizes, the tokens each one's prompt already holds in the KV cache
        # (its earlier chunks, which a chunk attends to) and the prompts that end with
        # their chunk (c = min(left, budget), so c == left): one pass, the tokens left
        # written here (the pricing and ``advance`` read no chunk's request).
        sizes: list[int] = []
        prefixes: list[int] = []
        ready: list[Request] = []
        for r, c in chunks:
            left = r.prefill_left
            sizes.append(c)
            prefixes.append(r.prompt + r.generated - left)
            r.prefill_left = left - c
            if c == left:
                ready.append(r)
        s.now += self.costs.mixed(decoding, context, sizes, decoding + len(ready), admitted,
                                  prefixes)
        done = self._sd_advance(batch) if self.costs.draft else batch.finish(1)
        if ready:
            now = s.now
            for r in ready:
                if r.first_token_s is None:
                    r.first_token_s = now
            batch.prefilled_all(ready)
            if late := [r for r in ready if r.generated >= r.output]:
                if not self.costs.draft:
                    batch.leave_all(late)  # ``finish`` left the others
                done += late
            # Only a chunk's request can reach 0 left (the others keep theirs, > 0).
            batch.pending = [r for r in batch.pending if r.prefill_left > 0]
        if self.costs.draft:
            batch.resync()  # each request gained its own number of tokens
            batch.leave_all(done)
        stats["steps"] += 1
        stats["prefill"] += 1 if chunks else 0
        stats["batch_sum"] += decoding
        return done

    def _sd_advance(self, batch: RunningBatch) -> list[Request]:
        """The decoding requests' tokens after one SD round, the acceptance draws in
        running order; returns those that reached their output length (still in the
        batch: ``_mixed_step`` resyncs it first)."""
        for r in batch.decoding.values():
            r.generated = min(r.output, r.generated + self._sd_tokens(r.alpha))
        return [r for r in batch.decoding.values() if r.generated >= r.output]

    def _sd_tokens(self, alpha: float) -> int:
        """1 + the number of leading drafted tokens accepted (each with probability alpha)."""
        accepted = 0
        while accepted < self.costs.gamma and self.rng.random() < alpha:
            accepted += 1
        return accepted + 1

    @staticmethod
    def _retire(running: list[Request], now: float, bar) -> list[Request]:
        """Finish the requests that have all their tokens; returns them."""
        done = [r for r in running if r.generated >= r.output]
        if done:
            for r in done:
                r.finish_s = now
            running[:] = [r for r in running if r.generated < r.output]
        bar.update(len(done))
        return done

