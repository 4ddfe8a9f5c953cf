"""The running batch of the in-flight-batching loop, with its sums kept, not rescanned.

``Server._run_mixed`` reads, every iteration, the total context of the decoding requests
(the step's mean context) and the KV blocks the whole batch needs for the next step (the
preemption check, admission and the decode-run bound). Summed afresh these were a pass
over up to thousands of requests per iteration; here they are updated as requests join,
leave and gain tokens. Integer sums, so they equal the rescanned ones exactly
(``RunningBatch.rescanned`` recomputes them; tests/test_serving_bookkeeping.py compares the
two during real runs).

The blocks need a trick to follow a step in O(1): when every decoding request gains one
token, request r needs one more block exactly when (context_r + step_tokens) % block == 0
before the step. Every decoding request gains the same tokens per step (outside
speculative decoding, after which the sums are rescanned), so (context_r - tick) % block
is fixed while r decodes (``tick``: tokens each decoding request has gained so far), and
the requests crossing a block boundary at a step are one bucket of a histogram over that
residue.

For the same reason a decoding request's ``generated`` is not written every step: it is
brought up to date (``tick`` less the tick it was last written at) when the request
leaves the batch, and the requests that finish are found from a heap of the tick at
which each reaches its output length, so a step costs O(1) plus the requests it ends.

Sliding-window layers (``KVLayout.windowed``: the engine frees their blocks outside the
window) hold at most ``cap`` blocks: a request's units are full x blocks + sliding x
min(blocks, cap). The full class grows at every crossing, as above; the windowed class
only while the request is below its cap, so a second histogram (``open``) holds the
residues of the requests still below it, and a heap (``caps``) the tick at which each
reaches it (fixed while it decodes, like its end); ``advance`` takes them out of
``open`` as it passes those ticks. The run-length bound (``kv_steps``) holds the open
set fixed, so it is exact up to the next cap tick and stops there.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
from dataclasses import dataclass, field

from xpusim.sim.inference.kvcache import KVLayout, blocks_of
from xpusim.sim.inference.workload import Request

# Serials below this keep a heap key's two parts apart: one serial per entry (a request
# entering the decoding set, or re-entered after a speculative round), so at most about
# a run's tokens (MAX_SERVE_TOKENS, sim.limits: 5e7), far below 2**40.
_SERIAL_BITS = 40  # ``advance`` splits keys by shift and mask
_SERIALS = 1 << _SERIAL_BITS


def _key(tick: int, serial: int) -> int:
    """A heap entry: ordered as (tick, serial) for 0 <= serial < ``_SERIALS``, any tick."""
    return tick * _SERIALS + serial


@dataclass
class RunningBatch:
    """The running requests: ``decoding`` (past their prompt, by id, in admission order)
    and ``pending`` (still prefilling, in admission order), with

    * ``context``: the sum of prompt + generated over the decoding requests;
    * ``need``: the sum of units(prompt + generated + step_tokens) over all of them
      (``layout.units``: blocks without windowed layers);
    * ``residues[i]``: how many decoding requests have (context - tick) % block == i;
    * ``since[id]``: the tick a decoding request's ``generated`` was last written at (it
      has ``tick - since`` more tokens than it says);
    * ``ends``: (tick at which it reaches its output length, serial) of each decoding
      request, a heap of ``_key`` integers; ``entry[id]`` is the serial of the request's
      current entry and ``live[serial]`` the request, and entries of requests that left
      (or were re-entered) are skipped;
    * ``open`` and ``caps`` (windowed layouts only): the residue histogram of the decoding
      requests whose windowed blocks are below the cap, and (tick at which they reach
      it, serial), a heap skipped like ``ends``.

    A heap entry is one integer, tick x 2**40 + serial (``_key``), ordered as the pair
    (tick, serial) is: an integer compares in one step where a tuple compares item by
    item, and the heaps take a push and a pop per request (~3.3M over ``validate
    --published``'s serving rows, 2026-12-07).
    """

    block: int
    step_tokens: int
    decoding: dict[int, Request] = field(default_factory=dict)
    pending: list[Request] = field(default_factory=list)
    context: int = 0
    need: int = 0
    tick: int = 0
    residues: list[int] = field(default_factory=list)
    since: dict[int, int] = field(default_factory=dict)
    ends: list[int] = field(default_factory=list)
    entry: dict[int, int] = field(default_factory=dict)
    live: dict[int, Request] = field(default_factory=dict)  # serial -> request, entries in use
    serial: int = 0  # heap tie-break and entry identity
    layout: KVLayout | None = None
    open: list[int] = field(default_factory=list)
    caps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.residues = [0] * self.block
        self.open = [0] * self.block
        if self.layout is None:
            self.layout = KVLayout(block=self.block)
        assert self.layout.block == self.block, "layout and batch block sizes differ"
        if self.layout.windowed:
            self.units = self.layout.units
        else:
            # Units are blocks (``KVLayout.units`` without windows), read ~7 times per
            # request of a run: the same function, bound to the block size.
            self.units = functools.partial(blocks_of, block=self.block)
        # Whether any layer is windowed (the layout is fixed for the batch's life): the
        # per-request paths below skip ``_below_cap`` without windows.
        self._windowed = self.layout.windowed

    def __len__(self) -> int:
        return len(self.decoding) + len(self.pending)

    def __bool__(self) -> bool:
        # Read every iteration (``if not batch``): without it ``bool`` calls ``__len__``.
        return bool(self.decoding or self.pending)

    def blocks(self, tokens: int) -> int:
        return -(-tokens // self.block)

    def admit(self, r: Request, units: int | None = None) -> None:
        """``r`` starts (or restarts) its prompt. ``units``: ``units(r.prompt +
        r.generated + step_tokens)`` where the caller has it (admission's reservation)."""
        self.pending.append(r)
        if units is None:
            units = self.units(r.prompt + r.generated + self.step_tokens)
        self.need += units

    def prefilled(self, r: Request) -> None:
        """``r``'s prompt is done (the caller drops it from ``pending``): it gets its
        first token and decodes from the next step."""
        if self._windowed:
            before = r.prompt + r.generated + self.step_tokens
            r.generated += 1
            self.need += self.units(before + 1) - self.units(before)
            self._decode(r)
            return
        self.prefilled_all([r])

    def prefilled_all(self, requests: list[Request]) -> None:
        """``prefilled`` of each of ``requests``, in order. Without windowed layers
        ``_decode`` and ``_track`` are inline and the batch's tables read once: this runs
        for every request (~3.3M times over ``validate --published``'s serving rows)."""
        if self._windowed:
            for r in requests:
                self.prefilled(r)
            return
        b, tick, step_tokens = self.block, self.tick, self.step_tokens
        residues, decoding, since = self.residues, self.decoding, self.since
        entry, live, ends = self.entry, self.live, self.ends
        added = context_sum = 0
        serial = self.serial
        for r in requests:
            # Its units go from blocks(before) to blocks(before + 1): one block more
            # exactly when ``before`` fills its last block (as ``_crossings`` counts).
            context = r.prompt + r.generated + 1
            r.generated += 1
            if (context - 1 + step_tokens) % b == 0:
                added += 1
            context_sum += context
            residues[(context - tick) % b] += 1
            key = id(r)
            decoding[key] = r
            since[key] = tick
            serial += 1
            old = entry.get(key)
            if old is not None:
                del live[old]
            entry[key] = serial
            live[serial] = r
            heapq.heappush(ends, (tick + r.output - r.generated) * _SERIALS + serial)  # _key
        self.serial = serial
        self.need += added
        self.context += context_sum

    def join_decoding(self, r: Request) -> None:
        """``r``, past its prompt, decodes from the next step."""
        self.need += self.units(r.prompt + r.generated + self.step_tokens)
        self._decode(r)

    def _decode(self, r: Request) -> None:
        """``r``, its units counted in ``need``, joins the decoding requests."""
        context = r.prompt + r.generated
        self.context += context
        self.residues[(context - self.tick) % self.block] += 1
        if self._windowed and self._below_cap(context):
            self.open[(context - self.tick) % self.block] += 1
        self._track(r)

    def _below_cap(self, context: int) -> bool:
        """Whether a request with ``context`` tokens still grows its windowed blocks."""
        lay = self.layout
        assert lay is not None
        return lay.windowed and self.blocks(context + self.step_tokens) < lay.cap

    def _track(self, r: Request) -> None:
        """``r`` decodes from now on, its ``generated`` written at this tick."""
        key, tick = id(r), self.tick  # once: this runs for every request of a run
        self.decoding[key] = r
        self.since[key] = tick
        serial = self.serial = self.serial + 1
        old = self.entry.get(key)
        if old is not None:  # re-entered (``resync``): its earlier entries go stale
            del self.live[old]
        self.entry[key] = serial
        self.live[serial] = r
        heapq.heappush(self.ends, (tick + r.output - r.generated) * _SERIALS + serial)  # _key
        if self._windowed and self._below_cap(context := r.prompt + r.generated):
            # Its windowed blocks reach the cap when context + step_tokens first equals
            # (cap - 1) x block + 1, context growing one token per tick.
            assert self.layout is not None
            at = tick + (self.layout.cap - 1) * self.block + 1 - self.step_tokens - context
            heapq.heappush(self.caps, _key(at, serial))

    def generated(self, r: Request) -> int:
        """Decoding request ``r``'s generated tokens now."""
        return r.generated + self.tick - self.since[id(r)]

    def leave(self, r: Request) -> None:
        """Decoding request ``r`` leaves the batch (finished or preempted)."""
        self.leave_all([r])

    def leave_all(self, requests: list[Request]) -> None:
        """``leave`` of each of ``requests``; without windowed layers ``_forget``'s
        integer updates inline, the batch's tables read once (once per request)."""
        decoding = self.decoding
        if self._windowed:
            for r in requests:
                del decoding[id(r)]
                self._forget(r)
            return
        tick, b, step_tokens = self.tick, self.block, self.step_tokens
        since, live, entry, residues = self.since, self.live, self.entry, self.residues
        context_sum = need = 0
        for r in requests:
            key = id(r)
            del decoding[key]
            r.generated += tick - since.pop(key)
            del live[entry.pop(key)]
            context = r.prompt + r.generated
            context_sum += context
            need += -(-(context + step_tokens) // b)  # blocks_of
            residues[(context - tick) % b] -= 1
        self.context -= context_sum
        self.need -= need

    def pop_latest(self) -> Request:
        """The most recently started decoding request, out of the batch (preemption)."""
        _, r = self.decoding.popitem()
        self._forget(r)
        return r

    def _forget(self, r: Request) -> None:
        """Write ``r``'s generated tokens and take it out of the sums (its heap entry
        stays, skipped once ``entry`` no longer names it; requests live for the whole
        run, so their ids are not reused)."""
        key = id(r)
        r.generated += self.tick - self.since.pop(key)
        del self.live[self.entry.pop(key)]
        context = r.prompt + r.generated
        self.context -= context
        self.need -= self.units(context + self.step_tokens)
        self.residues[(context - self.tick) % self.block] -= 1
        if self._windowed and self._below_cap(context):
            self.open[(context - self.tick) % self.block] -= 1

    def _live_end(self) -> int | None:
        """The tick of the heap's first entry of a request still decoding (stale ones
        dropped)."""
        while self.ends:
            end, serial = divmod(self.ends[0], _SERIALS)
            if serial in self.live:
                assert end >= self.tick, "a request went past its output length"
                return end
            heapq.heappop(self.ends)
        return None

    def steps_left(self) -> int:
        """The fewest tokens any decoding request still has to generate."""
        first = self._live_end()
        assert first is not None, "no decoding request"
        return first - self.tick

    def advance(self, steps: int) -> list[Request]:
        """Every decoding request gains ``steps`` tokens (at most the fewest any still
        needs); returns those that reached their output length (their ``generated``
        written)."""
        if self._tick(steps):
            return []  # no entry, live or stale, ends at this tick (most steps)
        done = self._ending()
        tick, since = self.tick, self.since
        for r in done:
            key = id(r)
            r.generated += tick - since[key]
            since[key] = tick
        return done

    def finish(self, steps: int) -> list[Request]:
        """``advance(steps)`` whose finished requests then leave the batch: ``leave_all``
        writes their generated tokens as it takes them out of the sums (~3M requests over
        ``validate --published``'s serving rows), so they are not written twice."""
        if self._tick(steps):
            return []
        done = self._ending()
        if done:
            self.leave_all(done)
        return done

    def _ending(self) -> list[Request]:
        """The decoding requests whose heap entries end at this tick, popped (stale
        entries dropped on the way: ``_live_end``'s loop, inline, since it runs for every
        request that finishes)."""
        done: list[Request] = []
        ends, tick, live, mask = self.ends, self.tick, self.live, _SERIALS - 1
        while ends:
            # divmod(key, _SERIALS) as a shift and a mask (_SERIALS = 2**_SERIAL_BITS; Python's
            # shifts floor like divmod): no tuple, once per finishing request.
            first = ends[0]
            end, serial = first >> _SERIAL_BITS, first & mask
            r = live.get(serial)
            if r is not None:
                assert end >= tick, "a request went past its output length"
                if end != tick:
                    break
                done.append(r)
            heapq.heappop(ends)
        return done

    def _tick(self, steps: int) -> bool:
        """The sums and the tick after ``steps`` one-token steps of every decoding
        request; True when no heap entry, live or stale, ends at the new tick."""
        self.context += steps * len(self.decoding)
        if self._windowed:
            self.need += self._windowed_growth(steps)
        elif steps == 1 and self.block > 1:
            # ``_crossings(1)`` inline (every mixed step advances one token): the
            # requests whose residue crosses a block boundary at this tick.
            self.need += self.residues[(-self.step_tokens - self.tick) % self.block]
        else:
            self.need += self._crossings(steps)
        tick = self.tick = self.tick + steps
        ends = self.ends
        return not ends or ends[0] >= (tick + 1) << _SERIAL_BITS  # _key(tick + 1, 0), inlined

    def _crossings(
        self, steps: int, hist: list[int] | None = None, start: int | None = None
    ) -> int:
        """Blocks the requests of ``hist`` (default: every decoding request) add over the
        ``steps`` one-token steps from tick ``start`` (default: now): at step j a request
        crosses when (residue + start + j + step_tokens) % block == 0. Each ``block``
        steps every request crosses exactly once."""
        count = len(self.decoding) if hist is None else sum(hist)
        hist = self.residues if hist is None else hist
        start = self.tick if start is None else start
        b = self.block
        periods, rest = divmod(steps, b)
        added = periods * count
        for j in range(rest):
            added += hist[(-self.step_tokens - start - j) % b]
        return added

    def _live_cap(self) -> int | None:
        """The tick of the ``caps`` heap's first entry of a request still decoding."""
        while self.caps:
            at, serial = divmod(self.caps[0], _SERIALS)
            if serial in self.live:
                return at
            heapq.heappop(self.caps)
        return None

    def _windowed_growth(self, steps: int) -> int:
        """Units the decoding requests add over the next ``steps`` steps: the full class
        at every crossing, the windowed class at the crossings of requests below their
        cap, each leaving ``open`` at the tick its blocks reach the cap."""
        lay = self.layout
        assert lay is not None
        added = lay.full * self._crossings(steps)
        now, end = self.tick, self.tick + steps
        while (first := self._live_cap()) is not None and first <= end:
            at, serial = divmod(heapq.heappop(self.caps), _SERIALS)
            r = self.live[serial]
            added += lay.sliding * self._crossings(at - now, self.open, now)
            # (context - tick) of r, fixed while it decodes
            self.open[(r.prompt + r.generated - self.since[id(r)]) % self.block] -= 1
            now = at
        return added + lay.sliding * self._crossings(end - now, self.open, now)

    def kv_steps(self, blocks_total: int) -> int:
        """``Server._kv_steps`` from the histogram: the consecutive one-token decode
        steps, from this one, whose preemption check passes (all requests decoding)."""
        spare = blocks_total - self.need
        if spare < 0:
            return 1
        if self.layout is not None and self.layout.windowed:
            return self._windowed_kv_steps(spare)
        b = self.block
        periods, rest = divmod(spare, len(self.decoding))
        # Each request's first crossing step f = (-(context + step_tokens)) % b + 1; the
        # (rest + 1)-th smallest f is the first step of the next period that fails.
        # f - 1 = (c - residue) % b with c = (-(tick + step_tokens)) % b, so the residues
        # in order of f are c, c - 1, ..., 0, b - 1, ..., c + 1: the histogram reversed
        # from c, and the step is the first whose running count exceeds ``rest``.
        c = (-(self.tick + self.step_tokens)) % b
        counts = list(itertools.accumulate(self.residues[c::-1] + self.residues[:c:-1]))
        first = bisect.bisect_right(counts, rest)
        assert first < b, "rest is below the number of decoding requests"
        return periods * b + first + 1

    def _windowed_kv_steps(self, spare: int) -> int:
        """``kv_steps`` with windowed layers: the requests of ``open`` add full + sliding
        units at a crossing, the others full; exact while ``open`` holds, so the run
        stops at the next cap tick at the latest."""
        lay = self.layout
        assert lay is not None
        b = self.block
        weights: dict[int, int] = {}
        for key in range(b):
            w = lay.full * self.residues[key] + lay.sliding * self.open[key]
            if w:
                first = (-(key + self.tick + self.step_tokens)) % b
                weights[first] = weights.get(first, 0) + w
        cap = self._live_cap()
        horizon = cap - self.tick if cap is not None else None
        return periodic_steps(spare, b, weights, horizon)

    def need_at(self, extra: int) -> int:
        """The sum of units(prompt + generated + extra) over the batch, rescanned (the
        admission of a speculative-decoding run, whose step needs other tokens)."""
        if self.layout is not None and self.layout.windowed:
            units = self.units
            return sum([units(r.prompt + self.generated(r) + extra)
                        for r in self.decoding.values()]) + sum(
                [units(r.prompt + r.generated + extra) for r in self.pending])
        b = self.block
        return -sum([(-(r.prompt + self.generated(r) + extra)) // b
                     for r in self.decoding.values()]) - sum(
            [(-(r.prompt + r.generated + extra)) // b for r in self.pending])

    def rescanned(self) -> tuple[int, int, list[int], list[int]]:
        """(context, need, residues, open) recomputed from the requests."""
        contexts = [r.prompt + self.generated(r) for r in self.decoding.values()]
        residues = [0] * self.block
        open_ = [0] * self.block
        for c in contexts:
            residues[(c - self.tick) % self.block] += 1
            if self._below_cap(c):
                open_[(c - self.tick) % self.block] += 1
        return sum(contexts), self.need_at(self.step_tokens), residues, open_

    def resync(self) -> None:
        """Recompute the sums after the requests gained unequal tokens (a speculative
        decoding round, whose caller wrote each request's ``generated``)."""
        self.ends = []
        self.caps = []
        for r in list(self.decoding.values()):
            self._track(r)
        self.context, self.need, self.residues, self.open = self.rescanned()


def periodic_steps(spare: int, block: int, weights: dict[int, int], horizon: int | None) -> int:
    """Consecutive one-token steps, from this one, whose KV check passes, when the
    requests whose next crossing is at step ``first + 1`` (and every ``block`` steps
    after) add ``weights[first]`` units each time and ``spare`` units are free now.

    Exact while the weights hold, i.e. up to ``horizon`` steps (a request's windowed
    blocks reaching their cap); the result is capped there (a lower bound after it).
    With no growth at all the check never fails: the horizon, or an unbounded run."""
    period = sum(weights.values())
    unbounded = horizon if horizon is not None else 1 << 62
    if period == 0:
        return max(1, unbounded)
    periods, rest = divmod(spare, period)
    steps = unbounded
    for first in sorted(weights):
        if rest < weights[first]:
            steps = periods * block + first + 1
            break
        rest -= weights[first]
    return max(1, min(steps, unbounded))


def windowed_kv_steps(
    running: list[Request], spare: int, step_tokens: int, layout: KVLayout
) -> int:
    """``Server._kv_steps`` with windowed layers, from the requests (the prefill-first
    and static policies keep no histogram): a request adds full + sliding units at a
    crossing while its windowed blocks are below the cap, full after; exact up to the
    first request reaching its cap."""
    b = layout.block
    weights: dict[int, int] = {}
    horizon: int | None = None
    for r in running:
        tokens = r.prompt + r.generated + step_tokens
        w = layout.full
        if -(-tokens // b) < layout.cap:
            w += layout.sliding
            at = (layout.cap - 1) * b + 1 - tokens  # the step its blocks reach the cap
            horizon = at if horizon is None else min(horizon, at)
        first = (-tokens) % b
        weights[first] = weights.get(first, 0) + w
    return periodic_steps(spare, b, weights, horizon)

