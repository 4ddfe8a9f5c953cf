"""Pipeline schedules as orderings of per-stage work.

A schedule says, for each pipeline stage, in which order it runs the forward (F)
and backward (B) passes of each (micro-batch, model chunk). Nothing here knows
times: the engine runs the orderings with real op and communication costs, so the
pipeline bubble and any overlap *emerge*. ``closed_form_bubble`` is the textbook
value, used only as a check in tests and docs.

* 1F1B (PipeDream-Flush / Megatron non-interleaved): stage s runs p-s-1 warm-up
  forwards, then alternates one forward and one backward, then drains.
* Interleaved 1F1B (Megatron-LM virtual pipeline, Narayanan et al. 2021): each
  stage holds v model chunks; chunk c of stage s is virtual stage c*p + s.
  Forwards go in groups of p micro-batches per chunk; warm-up is
  (p-s-1)*2 + (v-1)*p units (``megatron/core/pipeline_parallel/schedules.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from xpusim.sim.errors import InputError


@dataclass(frozen=True, slots=True)
class Unit:
    """One pass of one micro-batch through one model chunk on one stage."""

    kind: str  # "F" | "B"
    microbatch: int
    chunk: int
    steady: bool = False  # generated as one half of a steady-state (F, B) step

    def __str__(self) -> str:
        return f"{self.kind}{self.microbatch}.{self.chunk}"


def one_f_one_b(stage: int, stages: int, microbatches: int, extra_warmup: int = 0) -> list[Unit]:
    warmup = min(stages - stage - 1 + extra_warmup, microbatches)
    order = [Unit("F", i, 0) for i in range(warmup)]
    for i in range(microbatches - warmup):
        order.append(Unit("F", warmup + i, 0, True))
        order.append(Unit("B", i, 0, True))
    order += [Unit("B", i, 0) for i in range(microbatches - warmup, microbatches)]
    return order


def _interleaved_unit(k: int, stages: int, chunks: int, forward: bool) -> tuple[int, int]:
    """(micro-batch, chunk) of the k-th forward (or backward) unit of a stage."""
    group, within = divmod(k, stages * chunks)
    chunk = within // stages
    if not forward:
        chunk = chunks - 1 - chunk
    return group * stages + within % stages, chunk


def interleaved_one_f_one_b(
    stage: int, stages: int, chunks: int, microbatches: int, extra_warmup: int = 0
) -> list[Unit]:
    if microbatches % stages:
        raise InputError(
            f"interleaved 1F1B needs micro-batches ({microbatches}) divisible by "
            f"pipeline stages ({stages})"
        )
    total = microbatches * chunks
    warmup = min((stages - stage - 1) * 2 + (chunks - 1) * stages + extra_warmup, total)
    order = []
    for k in range(warmup):
        order.append(Unit("F", *_interleaved_unit(k, stages, chunks, True)))
    for i in range(total - warmup):
        order.append(Unit("F", *_interleaved_unit(warmup + i, stages, chunks, True), True))
        order.append(Unit("B", *_interleaved_unit(i, stages, chunks, False), True))
    for k in range(total - warmup, total):
        order.append(Unit("B", *_interleaved_unit(k, stages, chunks, False)))
    return order


def stage_order(
    stage: int,
    stages: int,
    chunks: int,
    microbatches: int,
    interleaved: bool,
    extra_warmup: int = 0,
) -> list[Unit]:
    """The ordered work of ``stage``; chunks > 1 needs ``interleaved``.

    ``extra_warmup`` adds forwards before the steady state: merged forward-backward
    overlap finishes each forward later (it shares the compute stream with a
    backward), so MindSpeed's fb-overlap runs one more warm-up micro-batch to keep
    the pipeline fed.
    """
    if interleaved and stages > 1:
        return interleaved_one_f_one_b(stage, stages, chunks, microbatches, extra_warmup)
    if chunks > 1:
        # A single stage with several chunks simply runs them in model order.
        out: list[Unit] = []
        for mb in range(microbatches):
            out += [Unit("F", mb, c) for c in range(chunks)]
            out += [Unit("B", mb, c) for c in reversed(range(chunks))]
        return out
    return one_f_one_b(stage, stages, microbatches, extra_warmup)


def steady_pairs(order: list[Unit]) -> list[tuple[Unit, ...]]:
    """Group the order into steps: an F immediately followed by a B forms one pair.

    Only a steady-state F and B of different micro-batches pair: a backward never
    waits for the forward it is paired with (on the last stage F_i and B_i are back
    to back; the last warm-up F and first cool-down B are not a pair).

    Pairs are what adaptive pipe overlap merges (one micro-batch's forward hides
    another's backward communication and vice versa); the rest stay single.
    """
    steps: list[tuple[Unit, ...]] = []
    i = 0
    while i < len(order):
        if (
            i + 1 < len(order)
            and order[i].kind == "F"
            and order[i + 1].kind == "B"
            and order[i].steady
            and order[i + 1].steady
            and order[i].microbatch != order[i + 1].microbatch
        ):
            steps.append((order[i], order[i + 1]))
            i += 2
        else:
            steps.append((order[i],))
            i += 1
    return steps


def peak_in_flight(order: list[Unit]) -> dict[int, int]:
    """Most forward passes per chunk whose activations are alive at the same time.

    Returns {chunk: count at the moment the total live count peaks}; memory is
    the sum over chunks of count x that chunk's activation bytes.
    """
    live: dict[int, int] = {}
    best: dict[int, int] = {}
    best_total = -1
    total = 0  # sum(live.values()), kept as it moves (integers: the same count)
    for unit in order:
        step = 1 if unit.kind == "F" else -1
        live[unit.chunk] = live.get(unit.chunk, 0) + step
        total += step
        if total > best_total:
            best_total, best = total, dict(live)
    return best


def closed_form_bubble(stages: int, microbatches: int, chunks: int = 1) -> float:
    """Bubble time / ideal time = (p - 1) / (m * v) (Narayanan et al. 2021, Eq. for t_pb/t_id)."""
    return (stages - 1) / (microbatches * chunks)
