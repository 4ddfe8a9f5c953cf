"""A fused attention kernel's work items, their HBM traffic, and where they land: a greedy
list schedule over the SMs.

A fused kernel launches one CTA per work item (a query block of one batch x head, or a key
block under a sequence-parallel backward grid); the hardware block scheduler hands each to
the next free SM in launch order, so the kernel's pipeline time is the makespan of that
greedy placement (docs/attention.md, section 7 "The models": items placed in launch order
on the least-loaded SM)."""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

from xpusim.sim.cost.attention_blocks import key_block_span, key_blocks

if TYPE_CHECKING:
    from xpusim.sim.cost.attention_impl import AttnShape

EXACT_SCHEDULE_ITEMS = 20000  # above this many items the placement is priced as a fluid


def place_items(items: list[float], reps: int, sms: int, heavy_first: bool) -> float:
    """Makespan of ``reps`` copies of ``items`` (one batch x head's work items, in launch
    order) placed one by one on the least-loaded of ``sms`` SMs; ``heavy_first``: the
    kernel's scheduler launches the longest items first."""
    n = len(items) * reps
    if n == 0:
        return 0.0
    if len(set(items)) == 1:  # equal items: whole waves
        return math.ceil(n / sms) * items[0]
    if n > EXACT_SCHEDULE_ITEMS:
        # Many items: the SMs drain together; the last placement adds at most one item.
        return sum(items) * reps / sms + max(items) / 2
    order = items * reps
    if heavy_first:
        order = sorted(order, reverse=True)
    loads = [0.0] * min(sms, n)
    for t in order:
        heapq.heappush(loads, heapq.heappop(loads) + t)
    return max(loads)


def work_items(shape: AttnShape, q_blocks: int, kv_blocks: int, br: int, bc: int,
                full_s: float, diag_s: float, io_s: float) -> tuple[list[float], float]:
    """(seconds of each query block's CTA of one batch x head, in launch order; key blocks
    visited): its full key blocks at ``full_s``, the partly masked ones on the diagonal at
    ``diag_s``, plus its own Q/O traffic ``io_s``."""
    offset = shape.kv_len - shape.q_len  # queries are the last q_len positions
    items: list[float] = []
    blocks: float = 0
    for i in range(q_blocks):
        visited, partial = key_blocks(shape.q_len, shape.causal, shape.window, i, br, bc,
                                      kv_blocks, offset)
        blocks += visited
        items.append((visited - partial) * full_s + partial * diag_s + io_s)
    return items, blocks


def key_block_items(shape: AttnShape, q_blocks: int, kv_blocks: int, br: int, bc: int,
                    full_s: float, diag_s: float, io_s: float) -> tuple[list[float], float]:
    """(seconds of each key block's CTA of one batch x head, in launch order; blocks visited):
    the key-block-parallel backward grid (FA2 ``run_flash_bwd_seqk_parallel``: grid
    (num_n_block, b, h); FA3 and xFormers likewise), where the CTA of key block j walks the
    query blocks that see it — causal: from its diagonal on — at ``full_s`` per unmasked and
    ``diag_s`` per partly masked block, plus its own K/V/dK/dV traffic ``io_s``. The
    (query block, key block) pairs are those of ``work_items``, counted per key block."""
    offset = shape.kv_len - shape.q_len  # queries are the last q_len positions
    # difference arrays over key blocks: +1 where a query block's span starts, -1 past its end
    seen = [0] * (kv_blocks + 1)
    masked = [0] * (kv_blocks + 1)
    for i in range(q_blocks):
        lo, hi, full_lo, below_diag = key_block_span(shape.q_len, shape.causal, shape.window,
                                                     i, br, bc, kv_blocks, offset)
        seen[lo] += 1
        seen[hi] -= 1
        if full_lo < below_diag:  # masked: [lo, full_lo) and [below_diag, hi)
            masked[lo] += 1
            masked[full_lo] -= 1
            masked[below_diag] += 1
            masked[hi] -= 1
        else:  # every visited block is masked
            masked[lo] += 1
            masked[hi] -= 1
    items: list[float] = []
    blocks = 0
    n_seen = n_masked = 0
    for j in range(kv_blocks):
        n_seen += seen[j]
        n_masked += masked[j]
        blocks += n_seen
        items.append((n_seen - n_masked) * full_s + n_masked * diag_s + io_s)
    return items, blocks


def fused_hbm_bytes(shape: AttnShape, pass_: str, elt: float, o_elt: float) -> float:
    """HBM bytes of a fused kernel: Q, K, V read and O written once (backward: + O, dO read,
    dQ, dK, dV written, dQ accumulated in fp32); K/V re-reads by other query blocks hit L2."""
    bh = shape.batch * shape.heads
    q_bytes = bh * shape.q_len * (shape.head_dim * elt + shape.vd * o_elt)
    kv_bytes = shape.batch * shape.kvh * shape.kv_span * (shape.head_dim + shape.vd) * elt
    if pass_ == "bwd":
        return 2.5 * q_bytes + 2.0 * kv_bytes + 2 * bh * shape.q_len * shape.head_dim * 4
    return q_bytes + kv_bytes
