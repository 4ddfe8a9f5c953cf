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

Step times come from ``StepSimulator`` (ops -> cost model -> engine, with the
engine profile's host overheads). Decode time is linear in context for a fixed
batch (only the KV read grows), so each batch size is simulated at a few context
grid points and interpolated; prefill likewise over the prompt length.
"""

from __future__ import annotations

import bisect
import csv
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm
from xpusim.sim.errors import InputError
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inputs import open_text
from xpusim.sim.limits import MAX_REQUESTS, MAX_SEQ, MAX_SERVE_TOKENS, check_float, check_int

MIN_RATE = 1e-6  # requests/s (docs/limits.md)
CONTEXT_GRID = (0, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


@dataclass
class Request:
    id: int
    arrival_s: float
    prompt: int
    output: int
    alpha: float = 0.0  # per-request acceptance rate (speculative decoding)
    generated: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None
    preemptions: int = 0
    prefill_left: int = 0  # prompt (+ recomputed) tokens still to prefill (mixed policy)

    @property
    def context(self) -> int:
        return self.prompt + self.generated


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution: "const:N" / "N", "uniform:A:B", "exp:MEAN" (geometric-like)."""

    kind: str
    a: float
    b: float = 0.0

    @staticmethod
    def parse(text: str, what: str) -> LengthDist:
        parts = str(text).split(":")
        try:
            if len(parts) == 1:
                parts = ["const", parts[0]]
            kind, args = parts[0], [float(x) for x in parts[1:]]
        except ValueError:
            raise InputError(
                f"{what}: cannot read '{text}'; use N, const:N, uniform:A:B or exp:MEAN"
            ) from None
        for x in args:  # sim.limits: a finite token count within the sequence limit
            check_float(x, f"{what} '{text}': length", 0.0, float(MAX_SEQ))
        if kind == "const" and len(args) == 1 and args[0] >= 1:
            return LengthDist("const", args[0])
        if kind == "uniform" and len(args) == 2 and 1 <= args[0] <= args[1]:
            return LengthDist("uniform", args[0], args[1])
        if kind == "exp" and len(args) == 1 and args[0] >= 1:
            return LengthDist("exp", args[0])
        raise InputError(
            f"{what}: cannot read '{text}'; use N or const:N (N >= 1 tokens), uniform:A:B "
            "(1 <= A <= B) or exp:MEAN (MEAN >= 1)"
        )

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a

    def sample(self, rng: np.random.Generator) -> int:
        if self.kind == "const":
            return max(1, round(self.a))
        if self.kind == "uniform":
            return int(rng.integers(round(self.a), round(self.b) + 1))
        return max(1, round(rng.exponential(self.a)))


@dataclass(frozen=True)
class Workload:
    """How requests are generated: Poisson arrivals at ``rate`` per second, or a trace."""

    num_requests: int = 200
    rate: float = 1.0
    prompt: LengthDist = LengthDist("const", 512)
    output: LengthDist = LengthDist("const", 128)
    seed: int = 0
    trace: str | None = None  # CSV with arrival_s, prompt_tokens, output_tokens
    alpha: float = 0.0  # mean acceptance (speculative decoding)
    alpha_concentration: float = 20.0  # Beta(alpha*c, (1-alpha)*c) per request


def make_requests(w: Workload) -> list[Request]:
    rng = np.random.default_rng(w.seed)
    if w.trace:
        rows = read_trace(w.trace)
        check_serve_tokens(sum(p + o for _, p, o in rows), f"--trace {w.trace}")
    else:
        if w.rate <= 0:
            raise InputError(f"--rate must be > 0 requests/s, got {w.rate}")
        if w.rate < MIN_RATE:
            # Below this the arrivals span years of simulated time: a typo, not a load.
            raise InputError(
                f"--rate {w.rate:g}: below {MIN_RATE:g} requests/s (one request a ~12 days); "
                "pass a larger --rate"
            )
        if w.num_requests < 1:
            raise InputError(f"--requests must be >= 1, got {w.num_requests}")
        check_int(w.num_requests, "--requests", 1, MAX_REQUESTS)
        check_serve_tokens(
            w.num_requests * (w.prompt.mean + w.output.mean),
            f"--requests {w.num_requests} x (prompt {w.prompt.mean:g} + output "
            f"{w.output.mean:g} tokens on average)",
        )
        gaps = rng.exponential(1.0 / w.rate, w.num_requests)
        arrivals = np.cumsum(gaps) - gaps[0]
        rows = [(float(t), w.prompt.sample(rng), w.output.sample(rng)) for t in arrivals]
    out = []
    for i, (t, p, o) in enumerate(rows):
        alpha = 0.0
        if w.alpha > 0:
            if w.alpha >= 1:
                alpha = 1.0
            else:
                c = w.alpha_concentration
                alpha = float(rng.beta(w.alpha * c, (1 - w.alpha) * c))
        out.append(Request(i, t, p, o, alpha))
    return out


def check_serve_tokens(tokens: float, where: str) -> None:
    """The run's work from its inputs, before any request is simulated: every token is
    scheduled by the serving loop, so the time grows with the total."""
    if tokens > MAX_SERVE_TOKENS:
        raise InputError(
            f"{where}: {tokens:,.0f} tokens to serve, above the limit of "
            f"{MAX_SERVE_TOKENS:,} (docs/limits.md): pass fewer --requests or shorter "
            "--prompt-len/--output-len (throughput and latency settle after a few "
            "thousand requests)"
        )


def read_trace(path: str) -> list[tuple[float, int, int]]:
    """(arrival_s, prompt_tokens, output_tokens) rows, sorted; a file the csv module
    cannot split is an InputError like any other bad trace."""
    try:
        return _read_trace(path)
    except csv.Error as exc:
        raise InputError(f"--trace {path}: not a CSV trace ({exc})") from None


def _read_trace(path: str) -> list[tuple[float, int, int]]:
    rows = []
    with open_text(path, "--trace") as fh:  # sim.inputs: size, UTF-8, file type checked
        reader = csv.DictReader(fh)
        need = {"arrival_s", "prompt_tokens", "output_tokens"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise InputError(f"--trace {path}: needs CSV columns {', '.join(sorted(need))}")
        for n, row in enumerate(reader, start=2):
            if n - 1 > MAX_REQUESTS:
                raise InputError(
                    f"--trace {path}: more than {MAX_REQUESTS:,} requests (the serving-run "
                    "limit, docs/limits.md); split the trace"
                )
            where = f"--trace {path}: line {n}:"
            # sim.limits: finite numbers, whole token counts within the sequence limit.
            rows.append(
                (
                    check_float(row["arrival_s"], f"{where} arrival_s", 0.0, 1e9),
                    check_int(row["prompt_tokens"], f"{where} prompt_tokens", 1, MAX_SEQ),
                    check_int(row["output_tokens"], f"{where} output_tokens", 1, MAX_SEQ),
                )
            )
    if not rows:
        raise InputError(f"--trace {path}: no requests")
    return sorted(rows)


class StepCosts:
    """Step times from the simulator, interpolated over context on CONTEXT_GRID."""

    def __init__(
        self,
        target: StepSimulator,
        draft: StepSimulator | None = None,
        gamma: int = 0,
        exact: bool = False,
    ) -> None:
        self.target, self.draft, self.gamma = target, draft, gamma
        self.exact = exact  # price every step shape by a full engine run (the reference)
        self._steppers: dict[tuple[int, bool], Callable[[float], float]] = {}

    def _time(self, sim: StepSimulator, batch: StepBatch, host: bool = True) -> float:
        """A step's time: ``StepSimulator.time_s`` (the same sum without building the
        graph), or the full engine run when ``exact``."""
        return sim.run(batch, host).time_s if self.exact else sim.time_s(batch, host)

    @staticmethod
    def _interp(fn, x: float) -> float:
        i = min(max(bisect.bisect_right(CONTEXT_GRID, x) - 1, 0), len(CONTEXT_GRID) - 2)
        x0, x1 = CONTEXT_GRID[i], CONTEXT_GRID[i + 1]
        y0, y1 = fn(x0), fn(x1)
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

    def _interp_fn(self, fn) -> Callable[[float], float]:
        """``lambda x: self._interp(fn, x)`` with each grid segment's end points priced
        once (the same arithmetic, without pricing two grid points per call)."""
        ends: dict[int, tuple[float, float, float, float]] = {}
        last = len(CONTEXT_GRID) - 2

        def at(x: float) -> float:
            i = min(max(bisect.bisect_right(CONTEXT_GRID, x) - 1, 0), last)
            e = ends.get(i)
            if e is None:
                x0, x1 = CONTEXT_GRID[i], CONTEXT_GRID[i + 1]
                e = ends[i] = (x0, x1, fn(x0), fn(x1))
            x0, x1, y0, y1 = e
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

        return at

    def decode_stepper(self, batch: int, mixed: bool) -> Callable[[float], float]:
        """The time of a plain decode step of ``batch`` requests as a function of their
        mean context: ``decode(batch, c)``, or with ``mixed`` the in-flight-batching
        iteration with no prompt chunk, ``mixed(batch, c, [], batch, 0)``. Kept per
        batch: a run of identical decode steps prices each step through it."""
        key = (batch, mixed)
        fn = self._steppers.get(key)
        if fn is not None:
            return fn
        if not mixed:
            fn = self._interp_fn(
                lambda c: self._time(self.target, StepBatch(batch, 1, c, "decode")))
        else:
            assert self.draft is None  # an SD round is priced by sd_round, step by step
            engine = self.target.engine
            device = self._interp_fn(lambda c: self._device(StepBatch(batch, 1, c, "decode")))
            before = engine.step_host_time(batch) + engine.request_time(0)
            after = engine.sampling_time(batch)
            step_time = engine.step_time

            def fn(c: float) -> float:
                return step_time(device(c), before, after)

        self._steppers[key] = fn
        return fn

    def decode(self, batch: int, context: float) -> float:
        return self._interp(
            lambda c: self._time(self.target, StepBatch(batch, 1, c, "decode")), context
        )

    def prefill(self, sequences: int, prompt: float) -> float:
        # Prefill time over the prompt length: simulate at grid lengths (>= 1 token).
        return self._interp(
            lambda q: self._time(self.target, StepBatch(sequences, max(q, 1), 0, "prefill")),
            prompt,
        )

    def _device(self, batch: StepBatch) -> float:
        return self._time(self.target, batch, host=False)

    def decode_device(self, batch: int, context: float) -> float:
        return self._interp(lambda c: self._device(StepBatch(batch, 1, c, "decode")), context)

    def prefill_token_device(self, chunk: float) -> float:
        """Device time one prompt chunk of ``chunk`` tokens adds to a forward.

        A one-sequence prefill of the chunk less a one-token forward: the weight
        stream and the kernel launches are paid once per forward, whatever it holds.
        Exact for the weight GEMMs; a chunk's attention to earlier chunks of its
        prompt is left out (it is small for prompts within one token budget).
        """
        base = self._device(StepBatch(1, 1, 0, "prefill"))
        full = self._interp(
            lambda q: self._device(StepBatch(1, max(q, 1), 0, "prefill")), max(chunk, 1)
        )
        return max(0.0, full - base)

    def mixed(
        self, decode_batch: int, context: float, chunks: list[int], sampled: int, admitted: int
    ) -> float:
        """One in-flight-batching iteration: ``decode_batch`` decode tokens (or SD rounds)
        at mean ``context`` plus prompt ``chunks``; host work by the engine's overlap rule."""
        engine = self.target.engine
        if decode_batch and self.draft is not None:
            device = self.sd_round(decode_batch, context)  # includes its own host terms
        elif decode_batch:
            device = self.decode_device(decode_batch, context)
        else:
            device = self._device(StepBatch(1, 1, 0, "prefill"))
        device += sum(self.prefill_token_device(c) for c in chunks)
        before = engine.step_host_time(decode_batch + len(chunks)) + engine.request_time(admitted)
        after = engine.sampling_time(sampled)
        return engine.step_time(device, before, after)

    def sd_round(self, batch: int, context: float) -> float:
        assert self.draft is not None
        g = self.gamma
        draft = self._interp(
            lambda c: self._time(self.draft, StepBatch(batch, 1, c, "decode")),
            context + (g - 1) / 2,
        )
        verify = self._interp(
            lambda c: self._time(self.target, StepBatch(batch, g + 1, c, "verify")), context
        )
        return g * draft + verify + self.target.engine.reject_time(batch * (g + 1))


@dataclass
class ServeResult:
    requests: list[Request]
    makespan_s: float
    steps: int
    prefill_steps: int
    preemptions: int
    mean_batch: float
    kv_capacity_tokens: float
    extra: dict = field(default_factory=dict)

    def metrics(self) -> dict:
        done = [r for r in self.requests if r.finish_s is not None]
        ttft = np.array([r.first_token_s - r.arrival_s for r in done])
        tpot = np.array(
            [(r.finish_s - r.first_token_s) / (r.output - 1) for r in done if r.output > 1]
        )
        e2e = np.array([r.finish_s - r.arrival_s for r in done])
        out_tokens = sum(r.output for r in done)

        def pct(x: np.ndarray) -> dict:
            if len(x) == 0:
                return {"mean": None, "p50": None, "p90": None, "p99": None}
            return {
                "mean": float(x.mean()),
                "p50": float(np.percentile(x, 50)),
                "p90": float(np.percentile(x, 90)),
                "p99": float(np.percentile(x, 99)),
            }

        return {
            "requests": len(self.requests),
            "completed": len(done),
            "makespan_s": self.makespan_s,
            "throughput_tokens_per_s": out_tokens / self.makespan_s if self.makespan_s else 0.0,
            "throughput_requests_per_s": len(done) / self.makespan_s if self.makespan_s else 0.0,
            "ttft_s": pct(ttft),
            "tpot_s": pct(tpot),
            "e2e_s": pct(e2e),
            "steps": self.steps,
            "prefill_steps": self.prefill_steps,
            "preemptions": self.preemptions,
            "mean_decode_batch": self.mean_batch,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            **self.extra,
        }


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
        reqs = self.requests
        while self.count < len(reqs) and reqs[self.count].arrival_s <= now:
            waiting.append(reqs[self.count])
            self.count += 1


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
    ) -> None:
        self.costs = costs
        self.blocks_total = int(kv_capacity_tokens // block_size)
        self.block = block_size
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.rng = np.random.default_rng(seed + 1)
        self.kv_capacity_tokens = kv_capacity_tokens

    def _blocks(self, tokens: int) -> int:
        return math.ceil(tokens / self.block)

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
        for r in requests:
            need = self._blocks(r.prompt + r.output)
            if need > self.blocks_total:
                raise InputError(
                    f"request {r.id} needs {r.prompt + r.output} tokens of KV cache; the "
                    f"deployment holds {self.blocks_total * self.block}: shorten it or "
                    "add devices"
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
        makespan = max((r.finish_s for r in requests if r.finish_s is not None), default=0.0)
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

    def _run_length(self, running: list[Request], waiting: deque, step_tokens: int) -> int:
        """How many decode steps, from this one, can run with the batch unchanged.

        Up to the first finish; with incremental KV, while every running request's
        next-step blocks are sure to fit (each request gains at most one block per
        ``block`` tokens, so ``free // n`` blocks each last ``free // n * block`` tokens);
        admission that failed stays failed (the cache only fills, FCFS keeps the head),
        and an arrival into an empty queue ends the run (checked by the caller)."""
        if not self._jump:
            return 1
        k = min(r.output - r.generated for r in running)
        if self.kv_reserve != "full" or self.policy != "mixed":
            need = sum(self._blocks(r.context + step_tokens) for r in running)
            spare = (self.blocks_total - need) // len(running)
            k = min(k, spare * self.block // step_tokens + 1)
        return max(1, k)

    def _decode_run(self, running, waiting, arrivals, now, steps_max, step_time) -> tuple[float, int]:
        """Advance ``steps_max`` decode steps (fewer if a request arrives into an empty
        queue): each priced by ``step_time(mean context)``; returns (clock, steps)."""
        batch = len(running)
        total = sum(r.context for r in running)
        steps = 0
        while True:
            now += step_time((total + steps * batch) / batch)
            steps += 1
            if steps >= steps_max or (not waiting and arrivals.next_s <= now):
                break
        for r in running:
            r.generated += steps
        return now, steps

    def _run_batched(self, requests, arrivals, stats, bar) -> None:
        """Prefill-first (vLLM V0) and static batching."""
        waiting: deque[Request] = deque()
        running: list[Request] = []
        used = 0  # KV blocks in use
        finished = 0
        now = 0.0
        step_tokens = self.costs.gamma + 1 if self.costs.draft else 1
        while finished < len(requests):
            arrivals.pull(now, waiting)
            if not running and not waiting:
                now = arrivals.next_s
                continue
            admit: list[Request] = []
            # Static batching admits a new batch only when the last one has drained,
            # and prefills all of it at once (no token budget).
            static = self.policy == "static"
            if (
                static
                and not running
                and len(waiting) < self.max_num_seqs
                and arrivals.count < len(requests)
            ):
                # A static batch is formed from the queue once it is full (or no
                # more requests will come), as a fixed-batch benchmark does.
                now = arrivals.next_s
                continue
            budget = math.inf if static else self.max_batched_tokens
            while (
                waiting
                and len(running) + len(admit) < self.max_num_seqs
                and not (static and running)
            ):
                r = waiting[0]
                need = self._reserve(r)
                if used + need > self.blocks_total or (admit and r.context > budget):
                    break
                waiting.popleft()
                used += need
                budget -= r.context
                admit.append(r)
            if admit:
                mean_prompt = sum(r.context for r in admit) / len(admit)
                now += self.costs.prefill(
                    len(admit), mean_prompt
                ) + self.costs.target.engine.request_time(len(admit))
                stats["prefill"] += 1
                for r in admit:
                    if r.first_token_s is None:
                        r.first_token_s = now
                    r.generated += 1
                running += admit
                finished += len(self._retire(running, now, bar))
                used = self._held(running)
                continue
            # Decode: every running request needs room for this step's new tokens.
            preempted = False
            while (
                running
                and sum(self._blocks(r.context + step_tokens) for r in running)
                > self.blocks_total
            ):
                # Recompute preemption: the most recently admitted request frees its
                # blocks and is prefilled again (prompt + generated) when readmitted.
                victim = running.pop()
                victim.preemptions += 1
                stats["preempt"] += 1
                waiting.appendleft(victim)
                preempted = True
            if not running:
                continue
            batch = len(running)
            if self.costs.draft:
                context = sum(r.context for r in running) / batch
                now += self.costs.sd_round(batch, context)
                for r in running:
                    r.generated = min(r.output, r.generated + self._sd_tokens(r.alpha))
                steps = 1
            else:
                k = 1 if preempted else self._run_length(running, waiting, step_tokens)
                now, steps = self._decode_run(
                    running, waiting, arrivals, now, k, self.costs.decode_stepper(batch, False)
                )
            stats["steps"] += steps
            stats["batch_sum"] += batch * steps
            finished += len(self._retire(running, now, bar))
            used = self._held(running)

    def _held(self, running: list[Request]) -> int:
        """KV blocks the running requests hold after a step."""
        if self.kv_reserve == "full":
            return sum(self._blocks(r.prompt + r.output) for r in running)
        return sum(self._blocks(r.context) for r in running)

    def _reserve(self, r: Request) -> int:
        """KV blocks a request holds: all it will ever need ("full"), or its context."""
        if self.kv_reserve == "full":
            return self._blocks(r.prompt + r.output)
        return self._blocks(r.context + 1)

    def _run_mixed(self, requests, arrivals, stats, bar) -> None:
        """In-flight batching: decodes and prompt chunks share each step's token budget."""
        waiting: deque[Request] = deque()
        running: list[Request] = []
        finished = 0
        now = 0.0
        step_tokens = self.costs.gamma + 1 if self.costs.draft else 1
        # Bookkeeping kept incrementally, not rescanned every iteration: the running
        # requests still prefilling (in running order), and with full reservation the
        # KV blocks the running requests hold (constant per request).
        pending: list[Request] = []
        full = self.kv_reserve == "full"
        held = 0
        while finished < len(requests):
            arrivals.pull(now, waiting)
            if not running and not waiting:
                now = arrivals.next_s
                continue
            decoding = (
                [r for r in running if r.prefill_left == 0] if pending else running[:]
            )
            budget = self.max_batched_tokens - len(decoding) * step_tokens
            chunks: list[tuple[Request, int]] = []
            for r in pending:
                if budget > 0:
                    c = min(r.prefill_left, budget)
                    chunks.append((r, c))
                    budget -= c
            used = held if full else sum(self._reserve(r) for r in running)
            admitted = 0
            while waiting and budget > 0 and len(running) < self.max_num_seqs:
                r = waiting[0]
                if used + self._reserve(r) > self.blocks_total:
                    break
                waiting.popleft()
                used += self._reserve(r)
                if full:
                    held += self._reserve(r)
                r.prefill_left = r.context  # prompt, plus generated tokens if recomputed
                c = min(r.prefill_left, budget)
                chunks.append((r, c))
                budget -= c
                running.append(r)
                pending.append(r)
                admitted += 1
            preempted = False
            if self.kv_reserve != "full":
                # Recompute preemption when the running requests outgrow the cache (vLLM).
                while decoding and (
                    sum(self._blocks(r.context + step_tokens) for r in running)
                    > self.blocks_total
                ):
                    victim = decoding.pop()
                    running.remove(victim)
                    victim.preemptions += 1
                    stats["preempt"] += 1
                    waiting.appendleft(victim)
                    preempted = True
            if not decoding and not chunks:
                continue
            batch = len(decoding)
            if not chunks and not preempted and not self.costs.draft and batch == len(running):
                # Only decodes: a run of identical steps until something changes.
                k = self._run_length(running, waiting, step_tokens)
                now, steps = self._decode_run(
                    running, waiting, arrivals, now, k, self.costs.decode_stepper(batch, True)
                )
                stats["steps"] += steps
                stats["batch_sum"] += batch * steps
                done = self._retire(running, now, bar)
                finished += len(done)
                if full:
                    held -= sum(self._reserve(r) for r in done)
                continue
            context = sum([r.prompt + r.generated for r in decoding]) / batch if batch else 0.0
            done_prefill = [r for r, c in chunks if c >= r.prefill_left]
            now += self.costs.mixed(
                batch, context, [c for _, c in chunks], batch + len(done_prefill), admitted
            )
            for r in decoding:
                if self.costs.draft:
                    r.generated = min(r.output, r.generated + self._sd_tokens(r.alpha))
                else:
                    r.generated += 1
            for r, c in chunks:
                r.prefill_left -= c
                if r.prefill_left == 0:
                    if r.first_token_s is None:
                        r.first_token_s = now
                    r.generated += 1
            if chunks:
                pending = [r for r in pending if r.prefill_left > 0]
            stats["steps"] += 1
            stats["prefill"] += 1 if chunks else 0
            stats["batch_sum"] += batch
            done = self._retire(running, now, bar)
            finished += len(done)
            if full:
                held -= sum(self._reserve(r) for r in done)

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
