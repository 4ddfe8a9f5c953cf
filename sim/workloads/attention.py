"""Torch-free IR of the attention kernels in ``kernels/attention.py``.

Each builder returns a ``RankGraph`` holding, in order, the ops the matching kernel
really runs for the given sizes — the same GEMMs, elementwise ops and copies, with
skipped blocks absent — so the simulator can cost exactly the kernel that a
calibration run measures. FLOPs of the GEMMs match PyTorch's ``FlopCounterMode``
on the real kernel (tests/test_attention_kernels.py checks it).

Block classification (``block_kind``) and the key range (``kv_block_limit``) live
here and the kernel imports them, so kernel and description cannot disagree on
which blocks run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType

from sim import ops
from sim.errors import InputError
from sim.ir import (
    MAIN_MEMORY,
    Collective,
    CollectiveKind,
    OpKind,
    RankGraph,
    Stream,
    dtype_bytes,
)

# Vector work of the online softmax per score element of a block (kernels/attention.py):
# row max (1), subtract the max (1), exp (1), row sum (1). Per output element
# (row x head_dim): rescale o by alpha (1), add the PV tile product (1 per inner tile).
SOFTMAX_FLOPS_PER_SCORE = 4.0


def block_kind(
    q_start: int, rows: int, k_start: int, cols: int, causal: bool, q_offset: int = 0
) -> str:
    """Classify the (rows x cols) block at (q_start, k_start): "visible", "masked", "partial".

    Key j is visible to query i iff j <= i + q_offset. In block coordinates that is
    c - r <= delta with delta = q_start + q_offset - k_start, so the block is fully
    visible iff cols - 1 <= delta and fully masked iff -(rows - 1) > delta.
    """
    if not causal:
        return "visible"
    delta = q_start + q_offset - k_start
    if cols - 1 <= delta:
        return "visible"
    if -(rows - 1) > delta:
        return "masked"
    return "partial"


def kv_block_limit(kv_len: int, kv_lens: Sequence[int] | None) -> int:
    """Keys the blockwise kernel visits: beyond the longest valid length every block is padding."""
    return int(max(kv_lens)) if kv_lens is not None else kv_len


def padding_applies(k_start: int, cols: int, kv_lens: Sequence[int] | None) -> bool:
    """True when some batch element's valid length ends inside (or before) this key block."""
    return kv_lens is not None and any(n - k_start < cols for n in kv_lens)


def _check(
    batch: int, heads: int, seq: int, head_dim: int, kv_heads: int | None, kv_len: int | None
) -> tuple[int, int]:
    for name, value in (("batch", batch), ("heads", heads), ("seq", seq), ("head_dim", head_dim)):
        if value < 1:
            raise InputError(f"attention: {name} must be >= 1, got {value}")
    kvh = kv_heads or heads
    if heads % kvh:
        raise InputError(f"attention: heads ({heads}) must be a multiple of kv_heads ({kvh})")
    length = kv_len if kv_len is not None else seq
    if length < 1:
        raise InputError(f"attention: kv_len must be >= 1, got {length}")
    return kvh, length


def describe_standard_attention(
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    causal: bool = False,
    kv_heads: int | None = None,
    kv_len: int | None = None,
    dtype: str = "fp32",
    padded: bool = False,
) -> RankGraph:
    """Ops of ``standard_attention``: [repeat K/V], [build mask], QK^T, scale, mask add, softmax, PV.

    ``seq`` is the query length, ``kv_len`` the key length (default ``seq``); ``padded``
    means a per-batch padding mask is part of the mask tensor.
    """
    kvh, length = _check(batch, heads, seq, head_dim, kv_heads, kv_len)
    graph = RankGraph(rank=0)
    bh = batch * heads
    scores = bh * seq * length
    elt = dtype_bytes(dtype)
    if kvh != heads:  # repeat_interleave copies K and V once per query head
        for name in ("repeat_k", "repeat_v"):
            graph.add(ops.memcpy(name, batch * heads * length * head_dim * elt))
    has_mask = causal or padded
    if has_mask:
        mask_rows = batch if padded else 1
        graph.add(ops.elementwise("build_mask", mask_rows * seq * length, dtype, 1.0, 0, 1))
    graph.add(ops.gemm("qk", seq, length, head_dim, dtype, bh))
    graph.add(ops.elementwise("scale", scores, dtype, 1.0, 1, 1))
    if has_mask:
        graph.add(ops.elementwise("mask_add", scores, dtype, 1.0, 2, 1))
    softmax = ops.softmax("softmax", bh * seq, length, dtype)
    if dtype != "fp32":
        # torch.softmax(..., dtype=float32) reads S in the input dtype and writes fp32 P,
        # which is then cast back (read fp32, write the input dtype).
        acc = dtype_bytes("fp32")
        graph.add(replace(softmax, bytes=MappingProxyType({MAIN_MEMORY: scores * (elt + acc)})))
        cast = ops.elementwise("cast_p", scores, dtype, 1.0, 1, 1)
        graph.add(replace(cast, bytes=MappingProxyType({MAIN_MEMORY: scores * (acc + elt)})))
    else:
        graph.add(softmax)
    graph.add(ops.gemm("pv", seq, head_dim, length, dtype, bh))
    return graph


def describe_fast_attention(
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    causal: bool = False,
    kv_heads: int | None = None,
    kv_len: int | None = None,
    dtype: str = "fp32",
    outer_block: int = 128,
    inner_block: int = 64,
    q_offset: int = 0,
    kv_lens: Sequence[int] | None = None,
) -> RankGraph:
    """Ops of ``fast_attention``: per unmasked (query block, key block) pair, the inner-tile
    GEMMs, the mask add when the block needs one, the online-softmax vector ops, and a
    final normalisation per query block. Fully masked blocks contribute nothing.

    The kernel computes in fp32 whatever the input dtype, so every op is fp32.
    """
    kvh, length = _check(batch, heads, seq, head_dim, kv_heads, kv_len)
    if outer_block < 1 or inner_block < 1:
        raise InputError("attention: outer_block and inner_block must be >= 1")
    del kvh  # GQA is a broadcast: the GEMMs run over all batch*heads query heads
    inner = min(inner_block, outer_block)
    acc = "fp32"
    bh = batch * heads
    graph = RankGraph(rank=0)
    limit = kv_block_limit(length, kv_lens)
    for q_start in range(0, seq, outer_block):
        rows = min(outer_block, seq - q_start)
        graph.add(ops.elementwise(f"q{q_start}.load_scale", bh * rows * head_dim, acc, 1.0, 1, 1))
        for k_start in range(0, limit, outer_block):
            cols = min(outer_block, limit - k_start)
            kind = block_kind(q_start, rows, k_start, cols, causal, q_offset)
            if kind == "masked":
                continue
            tag = f"q{q_start}.k{k_start}"
            for t in range(0, cols, inner):
                graph.add(ops.gemm(f"{tag}.qk{t}", rows, min(inner, cols - t), head_dim, acc, bh))
            if kind == "partial" or padding_applies(k_start, cols, kv_lens):
                graph.add(ops.elementwise(f"{tag}.mask_add", bh * rows * cols, acc, 1.0, 2, 1))
            n = bh * rows * cols
            graph.add(ops.elementwise(f"{tag}.rowmax", n, acc, 1.0, 1, 0, OpKind.REDUCTION))
            graph.add(ops.elementwise(f"{tag}.exp", n, acc, 2.0, 1, 1))
            graph.add(ops.elementwise(f"{tag}.rowsum", n, acc, 1.0, 1, 0, OpKind.REDUCTION))
            graph.add(ops.elementwise(f"{tag}.rescale", bh * rows * head_dim, acc, 1.0, 1, 1))
            for t in range(0, cols, inner):
                graph.add(ops.gemm(f"{tag}.pv{t}", rows, head_dim, min(inner, cols - t), acc, bh))
                graph.add(ops.elementwise(f"{tag}.acc{t}", bh * rows * head_dim, acc, 1.0, 2, 1))
        graph.add(ops.elementwise(f"q{q_start}.normalise", bh * rows * head_dim, acc, 1.0, 2, 1))
    return graph


def attention_matmul_flops(graph: RankGraph) -> float:
    """FLOPs of the GEMMs only — what ``FlopCounterMode`` counts on the real kernel."""
    return sum(op.flops for op in graph.ops() if op.kind == OpKind.GEMM)


def describe_tp_attention_tiling_allreduce(
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    tp: int,
    blocks: int,
    causal: bool = False,
    dtype: str = "fp16",
    overlap: bool = True,
    rank: int = 0,
) -> RankGraph:
    """One TP rank of ``kernels.tiling_allreduce.tp_attention_tiling_allreduce``.

    Per sequence block (compute stream): fused attention of the rank's ``heads/tp``
    heads for the block's queries (causal: against the keys up to the block's end,
    the only ones not masked), then its rows of W_o; the block's all-reduce runs on
    the comm stream once that projection is done. ``overlap=False`` makes the next
    block wait for the all-reduce (the non-overlapped schedule); ``blocks=1`` is
    attention, projection, then one all-reduce.
    """
    _check(batch, heads, seq, head_dim, None, None)
    if tp < 1 or heads % tp:
        raise InputError(f"attention: heads ({heads}) must be divisible by the TP size ({tp})")
    if not 1 <= blocks <= seq:
        raise InputError(f"attention: blocks must be in [1, seq={seq}], got {blocks}")
    hidden = heads * head_dim
    local = heads // tp
    step = -(-seq // blocks)
    group = tuple(range(tp))
    graph = RankGraph(rank=rank)
    last_comm: int | None = None
    for i, start in enumerate(range(0, seq, step)):
        rows = min(step, seq - start)
        kv = start + rows if causal else seq
        deps = [last_comm] if (not overlap and last_comm is not None) else []
        attn = graph.add(
            ops.fused_attention(f"b{i}.attn", batch, local, rows, kv, head_dim, dtype, causal),
            deps=deps,
            label=f"block{i}",
        )
        proj = graph.add(
            ops.gemm(f"b{i}.wo", batch * rows, hidden, local * head_dim, dtype),
            deps=[attn],
            label=f"block{i}",
        )
        nbytes = batch * rows * hidden * dtype_bytes(dtype)
        last_comm = graph.add(
            Collective(f"b{i}.allreduce", CollectiveKind.ALL_REDUCE, group, nbytes, tag=i),
            stream=Stream.COMM,
            deps=[proj],
            label=f"block{i}",
        )
    return graph
