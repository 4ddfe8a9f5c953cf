"""Megatron-Core's bucket-level data-parallel overlap (``overlap_grad_reduce``,
``overlap_param_gather``) in the training lowering.

Megatron-Core's ``DistributedDataParallel`` keeps the gradients in contiguous buffers cut
into buckets and launches a bucket group's reduce-scatter (all-reduce without the
distributed optimizer) "when _all_ params in the bucket group have grads ready" in the
last micro-batch's backward (``_ParamAndGradBucketGroup.register_grad_ready``); with
``overlap_param_gather`` the forward pre-hook of a module waits for its bucket's
parameter all-gather (``finish_param_sync``), which then dispatches the next bucket's.
The gathers go back to back on the DP stream (the wait is a stream wait, the host does
not block), and a bucket's forward waits for its own gather only.

The buckets (``megatron/core/distributed/param_and_grad_buffer.py`` and
``distributed_data_parallel.py`` @ 001199898c4badd01eaf0785c212d8ed7ce83042):

- parameters are taken in reverse order ("to roughly follow backprop order"), and a
  bucket closes once it holds ``bucket_size`` elements or more;
- ``bucket_size`` defaults to ``max(40_000_000, 1_000_000 x data-parallel size)`` (the
  data-parallel size without CP) when ``overlap_grad_reduce``, else one bucket;
- dense and expert parameters have separate buffers (the dense-DP and expert-DP
  groups), bucketed alike with the same size;
- bucketing is off on every pipeline stage but the first ("data-parallel communication
  on these stages is not on the critical path") and for every model chunk after the
  first (``disable_bucketing=(model_chunk_idx > 0)`` in Megatron-LM's
  ``training.py`` ``get_model``, "communication for these model chunks is overlapped
  with compute anyway"): those keep one bucket, the chunk-level reduction after the
  chunk's last backward (``sim.training.lowering``).

Simplification: a bucket here is a run of whole slots (layers, the embedding, the head),
closed after the slot that brings it to ``bucket_size``; Megatron closes it at the
parameter that does. The tied word embedding's own bucket (distributed optimizer,
``_does_param_require_new_bucket``) is not split off.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.chunks import Chunk
from xpusim.sim.training.units import MAIN_GRAD_FRAMEWORKS, Piece, unit_pieces

MIN_BUCKET_PARAMS = 40_000_000  # DistributedDataParallel's default floor
BUCKET_PARAMS_PER_DP_RANK = 1_000_000  # "make buckets larger" at large DP sizes
CLASSES = ("dense", "expert")  # the DP buffers: dense-DP and expert-DP groups

Bucket = tuple[str, int]  # (parameter class, index in backward order)


@dataclass
class BucketPart:
    """A run of consecutive slots of a chunk (``slots`` ascending): its forward and
    backward pieces, the buckets whose reduction is launched after its backward
    (``closes``, backward order), and the buckets its forward waits for (``needs``)."""

    slots: tuple[int, ...]
    closes: list[Bucket] = field(default_factory=list)
    needs: list[Bucket] = field(default_factory=list)
    fwd: list[Piece] = field(default_factory=list)
    bwd: list[Piece] = field(default_factory=list)


@dataclass
class ChunkBuckets:
    """A chunk cut into bucket parts (``parts`` in backward order) and each bucket's
    parameter count."""

    parts: list[BucketPart]
    params: dict[Bucket, float]

    def gather_order(self) -> list[Bucket]:
        """The buckets in the order the forward first needs them (the all-gathers')."""
        out: list[Bucket] = []
        for part in reversed(self.parts):
            out += [b for b in part.needs if b not in out]
        return out


def bucket_size(plan: ParallelPlan) -> float:
    """DistributedDataParallel's default ``bucket_size`` in parameters:
    ``max(40M, 1M x get_data_parallel_world_size())``, the DP size without CP (``plan.dp``:
    dense DP, EP included)."""
    return float(max(MIN_BUCKET_PARAMS, BUCKET_PARAMS_PER_DP_RANK * plan.dp))


def applies(plan: ParallelPlan, stage: int, chunk_index: int) -> bool:
    """Whether the chunk's DP traffic is bucketed: a Megatron-Core stack (the eager and
    CUDA-graph frameworks; DeepSpeed, torchtitan/FSDP, Composer keep their own paths)
    with ``overlap_dp`` and ZeRO 0-2, on the first pipeline stage's first model chunk."""
    return (plan.framework in MAIN_GRAD_FRAMEWORKS and plan.overlap_dp and plan.zero < 3
            and stage == 0 and chunk_index == 0)


def split_slots(slot_params: list[tuple[float, float]], size: float
                ) -> tuple[list[tuple[tuple[int, ...], list[Bucket]]], dict[Bucket, float]]:
    """Cut slots into parts at bucket boundaries, walking them in reverse (backward)
    order: per part (its slots ascending, the buckets that close after it) in backward
    order, and each bucket's parameters. A part ends where either class's bucket reaches
    ``size``; what is left at the first slot closes with the last part."""
    acc = dict.fromkeys(CLASSES, 0.0)
    index = dict.fromkeys(CLASSES, 0)
    params: dict[Bucket, float] = {}
    parts: list[tuple[tuple[int, ...], list[Bucket]]] = []
    run: list[int] = []
    for i in reversed(range(len(slot_params))):
        for cls, p in zip(CLASSES, slot_params[i], strict=True):
            acc[cls] += p
        run.append(i)
        full = [cls for cls in CLASSES if acc[cls] >= size]
        if full:
            parts.append((tuple(reversed(run)), _close(full, acc, index, params)))
            run = []
    rest = [cls for cls in CLASSES if acc[cls] > 0]
    if run:
        parts.append((tuple(reversed(run)), _close(rest, acc, index, params)))
    elif rest and parts:
        parts[-1][1].extend(_close(rest, acc, index, params))
    return parts, params


def _close(classes: list[str], acc: dict[str, float], index: dict[str, int],
           params: dict[Bucket, float]) -> list[Bucket]:
    out = []
    for cls in classes:
        bucket = (cls, index[cls])
        params[bucket] = acc[cls]
        out.append(bucket)
        acc[cls] = 0.0
        index[cls] += 1
    return out


def _needs(parts: list[tuple[tuple[int, ...], list[Bucket]]],
           slot_params: list[tuple[float, float]]) -> list[list[Bucket]]:
    """Per part, the buckets holding its parameters: a class's bucket index counts the
    buckets of that class closed by earlier parts (backward order)."""
    index = dict.fromkeys(CLASSES, 0)
    out = []
    for slots, closes in parts:
        need = []
        for k, cls in enumerate(CLASSES):
            if sum(slot_params[i][k] for i in slots) > 0:
                need.append((cls, index[cls]))
        out.append(need)
        for cls, _ in closes:
            index[cls] += 1
    return out


def chunk_buckets(ch: Chunk, plan: ParallelPlan) -> ChunkBuckets | None:
    """The chunk's bucket parts with their forward and backward pieces (each part's
    slots as a chunk of their own: ``units.unit_pieces``), or None with one bucket (the
    chunk-level path, unchanged)."""
    parts, params = split_slots(ch.slot_params, bucket_size(plan))
    if len(parts) < 2:
        return None
    out = []
    for (slots, closes), needs in zip(parts, _needs(parts, ch.slot_params), strict=True):
        sub = Chunk(
            ch.vstage, [ch.slots[i] for i in slots],
            sum(ch.slot_params[i][0] for i in slots), sum(ch.slot_params[i][1] for i in slots),
            ch.act_bytes, ch.input_bytes, [ch.slot_params[i] for i in slots],
        )
        out.append(BucketPart(slots, closes, needs, unit_pieces(sub, "F", plan),
                              unit_pieces(sub, "B", plan)))
    _host_runs_on([p.fwd for p in reversed(out)])
    _host_runs_on([p.bwd for p in out])
    return ChunkBuckets(out, params)


def _host_runs_on(units: list[list[Piece]]) -> None:
    """Link the parts' segments into one unit's run (``Segment.after``): the host keeps
    issuing ahead across a bucket boundary as it does inside a unit (``sim.cost.pricing``);
    each part built alone would start with no lead."""
    prev = None
    for pieces in units:
        for p in pieces:
            if p.segment is None:
                continue
            if p.comm is None and not p.list_copies:
                p.segment = replace(p.segment, after=prev)
            prev = p.segment
