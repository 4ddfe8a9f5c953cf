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
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from xpusim.sim.inference.workload import Request


@dataclass
class RunningBatch:
    """The running requests: ``decoding`` (past their prompt, by id, in admission order)
    and ``pending`` (still prefilling, in admission order), with

    * ``context``: the sum of prompt + generated over the decoding requests;
    * ``need``: the sum of blocks(prompt + generated + step_tokens) over all of them;
    * ``residues[i]``: how many decoding requests have (context - tick) % block == i;
    * ``since[id]``: the tick a decoding request's ``generated`` was last written at (it
      has ``tick - since`` more tokens than it says);
    * ``ends``: (tick at which it reaches its output length, serial, request) of each
      decoding request, a heap; ``entry[id]`` is the serial of the request's current
      entry, and entries of requests that left (or were re-entered) are skipped.
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
    ends: list[tuple[int, int, Request]] = field(default_factory=list)
    entry: dict[int, int] = field(default_factory=dict)
    serial: int = 0  # heap tie-break (Requests do not compare) and entry identity

    def __post_init__(self) -> None:
        self.residues = [0] * self.block

    def __len__(self) -> int:
        return len(self.decoding) + len(self.pending)

    def blocks(self, tokens: int) -> int:
        return -(-tokens // self.block)

    def admit(self, r: Request) -> None:
        """``r`` starts (or restarts) its prompt."""
        self.pending.append(r)
        self.need += self.blocks(r.prompt + r.generated + self.step_tokens)

    def prefilled(self, r: Request) -> None:
        """``r``'s prompt is done (the caller drops it from ``pending``): it gets its
        first token and decodes from the next step."""
        self.need -= self.blocks(r.prompt + r.generated + self.step_tokens)
        r.generated += 1
        self.join_decoding(r)

    def join_decoding(self, r: Request) -> None:
        """``r``, past its prompt, decodes from the next step."""
        context = r.prompt + r.generated
        self.need += self.blocks(context + self.step_tokens)
        self.context += context
        self.residues[(context - self.tick) % self.block] += 1
        self._track(r)

    def _track(self, r: Request) -> None:
        """``r`` decodes from now on, its ``generated`` written at this tick."""
        self.decoding[id(r)] = r
        self.since[id(r)] = self.tick
        self.serial += 1
        self.entry[id(r)] = self.serial
        heapq.heappush(self.ends, (self.tick + r.output - r.generated, self.serial, r))

    def generated(self, r: Request) -> int:
        """Decoding request ``r``'s generated tokens now."""
        return r.generated + self.tick - self.since[id(r)]

    def leave(self, r: Request) -> None:
        """Decoding request ``r`` leaves the batch (finished or preempted)."""
        del self.decoding[id(r)]
        self._forget(r)

    def pop_latest(self) -> Request:
        """The most recently started decoding request, out of the batch (preemption)."""
        _, r = self.decoding.popitem()
        self._forget(r)
        return r

    def _forget(self, r: Request) -> None:
        """Write ``r``'s generated tokens and take it out of the sums (its heap entry
        stays, skipped once ``entry`` no longer names it; requests live for the whole
        run, so their ids are not reused)."""
        r.generated += self.tick - self.since.pop(id(r))
        del self.entry[id(r)]
        context = r.prompt + r.generated
        self.context -= context
        self.need -= self.blocks(context + self.step_tokens)
        self.residues[(context - self.tick) % self.block] -= 1

    def _live_end(self) -> tuple[int, int, Request] | None:
        """The heap's first entry of a request still decoding (stale ones dropped)."""
        while self.ends:
            end, serial, r = self.ends[0]
            if self.entry.get(id(r)) == serial:
                assert end >= self.tick, "a request went past its output length"
                return self.ends[0]
            heapq.heappop(self.ends)
        return None

    def steps_left(self) -> int:
        """The fewest tokens any decoding request still has to generate."""
        first = self._live_end()
        assert first is not None, "no decoding request"
        return first[0] - self.tick

    def advance(self, steps: int) -> list[Request]:
        """Every decoding request gains ``steps`` tokens (at most the fewest any still
        needs); returns those that reached their output length (their ``generated``
        written)."""
        self.context += steps * len(self.decoding)
        self.need += self._crossings(steps)
        self.tick += steps
        done = []
        while (first := self._live_end()) is not None and first[0] == self.tick:
            heapq.heappop(self.ends)
            done.append(first[2])
        for r in done:
            r.generated += self.tick - self.since[id(r)]
            self.since[id(r)] = self.tick
        return done

    def _crossings(self, steps: int) -> int:
        """Blocks the decoding requests add over the next ``steps`` one-token steps: at
        step j a request crosses when (residue + tick + j + step_tokens) % block == 0.
        Each ``block`` steps every request crosses exactly once."""
        b = self.block
        periods, rest = divmod(steps, b)
        added = periods * len(self.decoding)
        for j in range(rest):
            added += self.residues[(-self.step_tokens - self.tick - j) % b]
        return added

    def kv_steps(self, blocks_total: int) -> int:
        """``Server._kv_steps`` from the histogram: the consecutive one-token decode
        steps, from this one, whose preemption check passes (all requests decoding)."""
        spare = blocks_total - self.need
        if spare < 0:
            return 1
        b = self.block
        periods, rest = divmod(spare, len(self.decoding))
        # Each request's first crossing step f = (-(context + step_tokens)) % b + 1; the
        # (rest + 1)-th smallest f is the first step of the next period that fails.
        firsts = sorted(((-(key + self.tick + self.step_tokens)) % b, count)
                        for key, count in enumerate(self.residues) if count)
        for first, count in firsts:
            if rest < count:
                return periods * b + first + 1
            rest -= count
        raise AssertionError("rest is below the number of decoding requests")

    def need_at(self, extra: int) -> int:
        """The sum of blocks(prompt + generated + extra) over the batch, rescanned (the
        admission of a speculative-decoding run, whose step needs other tokens)."""
        b = self.block
        return -sum([(-(r.prompt + self.generated(r) + extra)) // b
                     for r in self.decoding.values()]) - sum(
            [(-(r.prompt + r.generated + extra)) // b for r in self.pending])

    def rescanned(self) -> tuple[int, int, list[int]]:
        """(context, need, residues) recomputed from the requests."""
        contexts = [r.prompt + self.generated(r) for r in self.decoding.values()]
        residues = [0] * self.block
        for c in contexts:
            residues[(c - self.tick) % self.block] += 1
        return sum(contexts), self.need_at(self.step_tokens), residues

    def resync(self) -> None:
        """Recompute the sums after the requests gained unequal tokens (a speculative
        decoding round, whose caller wrote each request's ``generated``)."""
        self.ends = []
        for r in list(self.decoding.values()):
            self._track(r)
        self.context, self.need, self.residues = self.rescanned()
