"""Step times of a serving run: the step simulator's, interpolated over context.

Decode time is linear in context for a fixed batch (only the KV read grows), so each
batch size is simulated at the CONTEXT_GRID points and interpolated; prefill likewise
over the prompt length. ``StepCosts`` also prices speculative-decoding rounds and the
mixed (in-flight batching) iterations of ``xpusim.sim.inference.serving.Server``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from xpusim.sim.inference.decode_runs import DecodeStepper, Interp, Segment
from xpusim.sim.inference.graph_padding import padded_step, padding_dummies
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inference.speculative import (
    draft_rows,
    draft_steps_time,
    scoring_batch,
    scoring_graphs,
)

CONTEXT_GRID = (0, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
# Token counts of a mixed step's token-proportional work (GEMMs, MoE, norms, all-reduce),
# interpolated linearly between: powers of two with midpoints from 128 up.
TOKEN_GRID = (0, 1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048,
              3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 65536, 131072)


def _step_time(sim: StepSimulator, batch: StepBatch, host: bool, exact: bool) -> float:
    """A step's time: ``StepSimulator.time_s`` (the same sum without building the graph),
    or the full engine run when ``exact``."""
    return sim.run(batch, host).time_s if exact else sim.time_s(batch, host)


@dataclass
class CostTables:
    """What a ``StepCosts`` keeps of its pricing across runs, as plain floats: each entry
    a pure function of the target simulator's inputs, the ``exact`` flag and its key, so
    the runs of one deployment (``xpusim validate``'s rows at several request counts and
    rates) share them (``_tables``) and read the same floats as pricing afresh. No
    function or simulator: a table kept in a simulator's memo then forms no reference
    cycle with it (a dropped memo is freed by reference counting, as before; with the
    pricing closures kept instead, every evicted memo was left to the cyclic collector).

    ``grid``: the segment and point tables of each interpolation by (what, batch,
    dummies) (``Interp.ends``, ``Interp.points``); ``prefix_corners``: the attention of a
    prompt chunk over its cached prefix at (chunk, prefix) grid corners. The run's other
    tables (chunk costs, ``chunk_attention``'s cells and results, the host terms) stay
    per run: cheap to rebuild from these, and kept across runs they raised the cyclic
    collector's time over the serving rows (2.4 s against 1.9 s, 2026-12-07)."""

    grid: dict[tuple[str, int, int], tuple[dict[int, Segment], dict[int, float]]] = field(
        default_factory=dict)
    prefix_corners: dict[tuple[int, int], float] = field(default_factory=dict)


def _tables(target: StepSimulator | None, draft: StepSimulator | None,
            exact: bool) -> CostTables:
    """The tables of a ``StepCosts`` on ``target``: shared with every earlier one on a
    simulator of equal inputs (``StepMemo.costs``: each run priced its ~840 grid points
    afresh before, 2026-12-07), fresh with a draft model (its tables would need the
    draft's inputs in the key; the speculative rows are few)."""
    if target is None or draft is not None:
        return CostTables()
    tables = target.costs_tables.get(exact)
    if tables is None:
        tables = target.costs_tables[exact] = CostTables()
    return tables


class StepCosts:
    """Step times from the simulator, interpolated over context on CONTEXT_GRID."""

    def __init__(
        self,
        target: StepSimulator,
        draft: StepSimulator | None = None,
        gamma: int = 0,
        exact: bool = False,
        graph_sizes: tuple[int, ...] = (),
        bonus_share: float = 0.0,
    ) -> None:
        self.target, self.draft, self.gamma = target, draft, gamma
        self.exact = exact  # price every step shape by a full engine run (the reference)
        # Captured CUDA-graph batch sizes a generation-only step is padded to
        # (graph_padding.capture_sizes); empty: steps run at their own batch.
        self.graph_sizes = graph_sizes
        # P(a round accepts every draft): the draft steps' extra rows (draft_rows).
        self.bonus_share = bonus_share
        self._steppers: dict[tuple[int, bool], DecodeStepper] = {}
        # Interpolating functions per (what, batch, dummies), kept for the run over the
        # shared tables' points: a serving run prices the same shapes hundreds of
        # thousands of times, and each is a pure function of its arguments.
        self._grid: dict[tuple[str, int, int], Interp] = {}
        # ``mixed_device``'s interpolating functions: ``tokens`` (two cursors: at the
        # step's tokens and at its decode tokens) and ``chunk_attention``.
        self._mixed_fns: tuple[Callable[[float], float], ...] | None = None
        self._decode_at: dict[int, tuple[float, Callable[[float], float] | None]] = {}
        # The grid points and prefix corners: shared with earlier runs (``CostTables``).
        tables = self._tables = _tables(target, draft, exact)
        self._prefix_corners = tables.prefix_corners
        # Prompt-chunk costs, for the run.
        self._chunks: dict[float, float] = {}
        # ``chunk_attention``'s corners by grid cell (i, j) of (chunk, prefix), and its
        # results by (chunk, prefix).
        self._prefix_cells: dict[tuple[int, int], tuple[float, float, float, float]] = {}
        self._chunk_attention: dict[tuple[float, float], float] = {}
        # ``mixed``'s host terms (before, after the forward) by (sequences, admitted, sampled).
        self._mixed_host: dict[tuple[int, int, int], tuple[float, float]] = {}

    def _time(self, sim: StepSimulator, batch: StepBatch, host: bool = True) -> float:
        return _step_time(sim, batch, host, self.exact)

    def _interp_fn(self, fn, grid: tuple[int, ...] = CONTEXT_GRID) -> Callable[[float], float]:
        """``fn`` interpolated linearly over ``grid`` (clamped to the first and last
        segments), each grid segment's end points priced once (``decode_runs.Interp``:
        y0 + (y1 - y0) * (x - x0) / (x1 - x0), the segment of the call before checked
        first)."""
        return Interp(fn, grid).at

    def decode_stepper(self, batch: int, mixed: bool) -> DecodeStepper:
        """The time of a plain decode step of ``batch`` requests as a function of their
        mean context: ``decode(batch, c)``, or with ``mixed`` the in-flight-batching
        iteration with no prompt chunk, ``mixed(batch, c, [], batch, 0)``. Kept per
        batch: a run of identical decode steps prices its steps through it
        (``DecodeStepper.advance``: a long run in one numpy pass, the same floats)."""
        key = (batch, mixed)
        stepper = self._steppers.get(key)
        if stepper is not None:
            return stepper
        if not mixed:
            stepper = DecodeStepper(Interp(self._grid_point("decode", batch), CONTEXT_GRID),
                                    None, None)
        else:
            assert self.draft is None  # an SD round is priced by sd_round, step by step
            engine = self.target.engine
            padded, _ = padded_step(batch, 0.0, self.graph_sizes)
            device = self._grid_interp("decode_device", padded, self._dummies(batch, padded))
            before = engine.step_host_time(batch) + engine.request_time(0)
            after = engine.sampling_time(batch)
            # The dummies hold no context (padded_step).
            share = batch / padded if padded != batch else None
            stepper = DecodeStepper(device, share,
                                    (engine.step_time, engine.host_overlap, before, after))
        self._steppers[key] = stepper
        return stepper

    def _grid_fn(self, what: str, batch: int, dummies: int = 0) -> Callable[[float], float]:
        """``_interp_fn`` of the step kind ``what`` at ``batch`` (of which ``dummies`` are
        identical CUDA-graph padding rows: ``_dummies``), built once per run."""
        fn = self._grid.get((what, batch, dummies))  # most calls: one lookup
        return (fn if fn is not None else self._grid_interp(what, batch, dummies)).at

    def _grid_interp(self, what: str, batch: int, dummies: int = 0) -> Interp:
        """The ``Interp`` behind ``_grid_fn``."""
        key = (what, batch, dummies)
        fn = self._grid.get(key)
        if fn is None:
            grid = TOKEN_GRID if what == "tokens" else CONTEXT_GRID
            shared = self._tables.grid.get(key)
            if shared is None:
                shared = self._tables.grid[key] = ({}, {})
            fn = self._grid[key] = Interp(self._grid_point(what, batch, dummies), grid, *shared)
        return fn

    def _grid_point(self, what: str, batch: int, dummies: int = 0) -> Callable[[float], float]:
        """The priced function ``_grid_fn`` interpolates, by step kind.

        The functions hold the simulators and flags they need, not this object: a run's
        pricing closures, kept in its tables, then form no reference cycle with it and
        are freed by reference counting when the run ends (before, the cyclic garbage
        collector found ~3M such objects over ``validate --published``'s serving rows)."""
        target, draft, exact = self.target, self.draft, self.exact
        if what == "decode":
            return lambda c: _step_time(target, StepBatch(batch, 1, c, "decode"), True, exact)
        if what == "decode_device":
            return lambda c: _step_time(target, StepBatch(batch, 1, c, "decode", dummies),
                                        False, exact)
        if what == "prefill":  # over the prompt length, at grid lengths >= 1 token
            return lambda q: _step_time(target, StepBatch(batch, max(q, 1), 0, "prefill"),
                                        True, exact)
        if what == "prefill_device":  # a pipeline stage's share (serving_pp.py): no host
            return lambda q: _step_time(target, StepBatch(batch, max(q, 1), 0, "prefill"),
                                        False, exact)
        if what == "chunk_device":
            return lambda q: _step_time(target, StepBatch(1, max(q, 1), 0, "prefill"), False,
                                        exact)
        if what in ("tokens", "chunk_attention"):
            # One sequence of q tokens: its attention ops, or everything else (the
            # token-proportional work, one logit row); nothing at 0 tokens.
            attention = what == "chunk_attention"
            return lambda q: target.part_time(StepBatch(1, q, 0, "prefill"), attention) if q else 0.0
        if what == "draft":  # device time; sd_round adds the real batch's host work
            assert draft is not None
            return lambda c: _step_time(draft, StepBatch(batch, 1, c, "decode", dummies),
                                        False, exact)
        assert what == "verify"  # ``batch``: the scoring forward's sequences
        q_len = 1 if target.engine.spec_scorer == "batch_expansion" else self.gamma + 1
        return lambda c: _step_time(target, StepBatch(batch, q_len, c, "verify", dummies),
                                    False, exact)

    def _dummies(self, batch: int, padded: int) -> int:
        """Padding rows of a step of ``batch`` run at ``padded`` that the MoE layers see as
        one token (``EngineProfile.cuda_graph_pad_rows`` "identical"); 0: routed like
        real tokens (``routing.padded_moe_load``)."""
        return padding_dummies(self.target.engine.cuda_graph_pad_rows, batch, padded)

    def decode(self, batch: int, context: float) -> float:
        return self._grid_fn("decode", batch)(context)

    def prefill(self, sequences: int, prompt: float) -> float:
        return self._grid_fn("prefill", sequences)(prompt)

    def _device(self, batch: StepBatch) -> float:
        return self._time(self.target, batch, host=False)

    def decode_device(self, batch: int, context: float) -> float:
        return self._grid_fn("decode_device", batch)(context)

    def prefill_device(self, sequences: int, prompt: float) -> float:
        """``prefill``'s device time alone (a pipeline stage's part: serving_pp.py)."""
        return self._grid_fn("prefill_device", sequences)(prompt)

    def generation_device(self, batch: int, context: float) -> float:
        """Device time of a generation-only in-flight-batching step, padded to the captured
        CUDA-graph sizes as ``mixed`` pads it (a pipeline stage's part: serving_pp.py)."""
        padded, mean = padded_step(batch, context, self.graph_sizes)
        return self._grid_fn("decode_device", padded, self._dummies(batch, padded))(mean)

    def prefill_token_device(self, chunk: float) -> float:
        """Device time one prompt chunk of ``chunk`` tokens adds to a forward (the
        speculative-decoding rounds' chunks; plain mixed steps use ``mixed_device``).

        A one-sequence prefill of the chunk less a one-token forward: the weight
        stream and the kernel launches are paid once per forward, whatever it holds.
        Exact for the weight GEMMs; a chunk's attention to earlier chunks of its
        prompt is left out (it is small for prompts within one token budget).
        """
        cost = self._chunks.get(chunk)
        if cost is None:
            base = self._device(StepBatch(1, 1, 0, "prefill"))
            full = self._grid_fn("chunk_device", 1)(max(chunk, 1))
            cost = self._chunks[chunk] = max(0.0, full - base)
        return cost

    def mixed(
        self, decode_batch: int, context: float, chunks: list[int], sampled: int, admitted: int,
        prefixes: list[int] | None = None,
    ) -> float:
        """One in-flight-batching iteration: ``decode_batch`` decode tokens (or SD rounds)
        at mean ``context`` plus prompt ``chunks`` (``prefixes``: the tokens each chunk's
        prompt already has in the KV cache; None: all 0; a speculative-decoding round's
        chunks are priced without them, ``prefill_token_device``); host work by the
        engine's overlap rule."""
        engine = self.target.engine
        if decode_batch and self.draft is not None:
            device = self.sd_round(decode_batch, context)  # includes its own host terms
            device += sum(self.prefill_token_device(c) for c in chunks)
        elif chunks:
            device = self.mixed_device(decode_batch, context, chunks, prefixes)
        elif decode_batch:
            if not admitted and sampled == decode_batch:
                # The plain decode iteration ``decode_stepper`` prices (the same floats:
                # its padding, interpolation and host terms are these), kept per batch.
                return self.decode_stepper(decode_batch, True)(context)
            padded, mean = padded_step(decode_batch, context, self.graph_sizes)
            device = self._grid_fn("decode_device", padded, self._dummies(decode_batch, padded))(mean)
        else:
            device = self._device(StepBatch(1, 1, 0, "prefill"))
        # The host terms depend only on the three counts: kept per run (~10^6 steps over
        # ``validate --published``'s serving rows, a few thousand distinct counts).
        key = (decode_batch + len(chunks), admitted, sampled)
        host = self._mixed_host.get(key)
        if host is None:
            host = self._mixed_host[key] = (
                engine.step_host_time(key[0]) + engine.request_time(admitted),
                engine.sampling_time(sampled))
        return engine.step_time(device, host[0], host[1])

    def mixed_device(
        self, decode_batch: int, context: float, chunks: list[int],
        prefixes: list[int] | None = None,
    ) -> float:
        """Device time of one forward over ``decode_batch`` decode tokens and the prompt
        ``chunks``: the context and generation tokens are packed into one input
        (TensorRT-LLM gpt-attention.md, "In-flight Batching"; vLLM/SGLang chunked
        prefill likewise), so every weight (each expert's included) is read once and the
        GEMMs run over all the step's tokens. Priced as the decode step, plus the
        token-proportional work of the chunk tokens on top of the decode tokens
        (``tokens`` at decode + chunk tokens less at the decode tokens), plus each
        chunk's attention: causal over itself, and over the ``prefixes`` tokens its
        prompt's earlier chunks left in the KV cache (``chunk_attention``). Left out: the
        chunks' logit rows."""
        fns = self._mixed_fns
        if fns is None:  # kept: a serving run makes ~10^5 such steps
            tokens = self._grid_interp("tokens", 0)
            # Two cursors over one table: the two token counts lie in different
            # segments in most steps (``Interp.cursor``).
            fns = self._mixed_fns = (tokens.at, tokens.cursor(),
                                     self._grid_fn("chunk_attention", 1))
        step_tokens, decode_tokens, attention = fns
        device = step_tokens(decode_batch + sum(chunks))
        # Per batch size, one lookup: the token work at the decode tokens (a float of the
        # batch size alone) and ``decode_device``'s interpolation.
        per_batch = self._decode_at.get(decode_batch)
        if per_batch is None:
            per_batch = self._decode_at[decode_batch] = (
                decode_tokens(decode_batch),
                self._grid_fn("decode_device", decode_batch) if decode_batch else None)
        decode_work, at = per_batch
        device = device - decode_work
        if at is not None:
            device += at(context)
        if not prefixes or not any(prefixes):
            return device + sum([attention(c) for c in chunks])
        # ``chunk_attention``'s kept results read here first: a prompt's later chunks
        # (~10^6 over ``validate --published``'s serving rows) mostly recur.
        kept = self._chunk_attention
        return device + sum([(kept.get((c, p)) or self.chunk_attention(c, p)) if p
                             else attention(c)
                             for c, p in zip(chunks, prefixes, strict=True)])

    def chunk_attention(self, chunk: float, prefix: float) -> float:
        """Device time of the attention ops of one prompt chunk of ``chunk`` tokens whose
        prompt already holds ``prefix`` tokens in the KV cache: its queries attend to
        those and, causally, to themselves (``StepBatch(1, chunk, prefix, "prefill")``:
        kv_len = prefix + chunk). TensorRT-LLM's chunked context needs the paged-KV
        context FMHA for this reason: a later chunk reads the earlier chunks' keys and
        values from the cache (docs/source/advanced/gpt-attention.md, "Chunked Context");
        vLLM's and SGLang's chunked prefill likewise attend over the cached prefix.

        Bilinear over (chunk, prefix) on CONTEXT_GRID, each corner priced once per run:
        the work is ~chunk x prefix plus the chunk's own causal square, so the cross term
        is exact between grid points and the square is piecewise linear in the chunk, as
        the prefix-free ``chunk_attention`` grid prices it."""
        # Kept per (chunk, prefix): a prompt's later chunks recur across a run's steps
        # (the same float: the cell's corners are fixed once priced).
        hit = self._chunk_attention.get((chunk, prefix))
        if hit is not None:
            return hit
        grid = CONTEXT_GRID
        i = min(max(bisect.bisect_right(grid, chunk) - 1, 0), len(grid) - 2)
        j = min(max(bisect.bisect_right(grid, prefix) - 1, 0), len(grid) - 2)
        c0, c1, p0, p1 = grid[i], grid[i + 1], grid[j], grid[j + 1]
        u, v = (chunk - c0) / (c1 - c0), (prefix - p0) / (p1 - p0)
        # The cell's four corners, read once per cell (a run reads a few cells ~10^5 times).
        # Checking the cell of the call before first did not pay (tried, 2026-12-07): the
        # chunks of a step, and a prompt's chunks over its steps, change cells too often.
        corners = self._prefix_cells.get((i, j))
        if corners is None:
            f = self._prefix_attention
            corners = self._prefix_cells[(i, j)] = (f(c0, p0), f(c0, p1), f(c1, p0), f(c1, p1))
        f00, f01, f10, f11 = corners
        t = self._chunk_attention[(chunk, prefix)] = (
            (1 - u) * ((1 - v) * f00 + v * f01) + u * ((1 - v) * f10 + v * f11))
        return t

    def _prefix_attention(self, chunk: int, prefix: int) -> float:
        """``chunk_attention`` at a grid corner, priced once per run."""
        key = (chunk, prefix)
        t = self._prefix_corners.get(key)
        if t is None:
            t = self._prefix_corners[key] = self.target.part_time(
                StepBatch(1, chunk, prefix, "prefill"), True) if chunk else 0.0
        return t

    def sd_round(self, batch: int, context: float) -> float:
        """One SD round: gamma draft steps, the scoring forward (``scoring_batch``) and the
        rejection host work; the decode-shaped forwards padded to the captured CUDA-graph
        sizes as ``speculative.SpeculativeModel.row`` pads them."""
        assert self.draft is not None
        g = self.gamma
        engine = self.target.engine
        rows = draft_rows(engine, batch, self.bonus_share)
        draft = self._round_step(
            "draft", StepBatch(rows, 1, context + (g - 1) / 2, "decode"), self.graph_sizes)
        verify = self._round_step("verify", scoring_batch(engine, batch, g, context),
                                  scoring_graphs(engine, self.graph_sizes))
        return (draft_steps_time(self.draft.engine, draft, rows, g) + verify
                + engine.reject_time(batch * (g + 1)))

    def _round_step(self, what: str, real: StepBatch, graphs: tuple[int, ...]) -> float:
        """A forward of an SD round: the device time of its padded batch (on the context
        grid) and the host work of its real sequences, by the engine's overlap rule."""
        sim = self.draft if what == "draft" else self.target
        assert sim is not None
        sequences, context, dummies = int(real.sequences), real.context, 0
        if real.q_len == 1:
            sequences, context = padded_step(sequences, context, graphs)
            dummies = self._dummies(int(real.sequences), sequences)
        device = self._grid_fn(what, sequences, dummies)(context)
        before, after = sim.host_terms(real, True)
        return sim.engine.step_time(device, before, after)
