"""Attention kernels in PyTorch: the standard (materialised) path and FastAttention.

``standard_attention`` is what inference engines ran before fused kernels: the full
S = QK^T score matrix, a scale, an explicit additive mask tensor of size
q_len x kv_len, a softmax and PV — every intermediate lives in device memory.

``fast_attention`` is the FlashAttention-2 algorithm with FastAttention's two
Ascend-oriented ideas (arXiv 2410.16663; see docs/attention.md):

* two-level tiling — the *outer* block (``outer_block`` rows x ``outer_block`` keys)
  is the unit handed from the matrix unit (Cube) to the vector unit for the online
  softmax; inside it the two GEMMs run as *inner* tiles of ``inner_block`` keys,
  sized for the on-chip L0 buffers;
* tiling mask — one precomputed 2M x 2M additive template (M = ``outer_block``)
  from which every block's causal or padding mask is a slice; fully masked
  blocks are skipped and fully visible blocks get no mask at all. No
  q_len x kv_len mask tensor ever exists.

Shapes follow ``torch.nn.functional.scaled_dot_product_attention``:
q (batch, heads, q_len, head_dim), k and v (batch, kv_heads, kv_len, head_dim)
with ``heads % kv_heads == 0`` (GQA: each K/V head serves ``heads/kv_heads`` query
heads through a broadcast view, never a materialised repeat).

Causal semantics: key j is visible to query i iff ``j <= i + q_offset``.
``q_offset=0`` is SDPA's ``is_causal=True`` (top-left aligned, ``tril(ones(L, S))``);
``q_offset = kv_len - q_len`` is bottom-right alignment (a chunk of new queries at
the end of a KV cache, as flash-attn does). Decode (q_len = 1 against a cache of
length L) is ``causal=False`` — the one query sees the whole cache — or,
equivalently, ``causal=True, q_offset=L-1``.

Padding: ``kv_lens`` (one valid length per batch element) masks keys
``j >= kv_lens[b]``; every length must be >= 1 so no query row is fully masked.

fp32 and bf16/fp16 inputs: blocks are upcast and every product, the running
max/sum and the output accumulator are fp32; the result is cast back to q's dtype.

``describe_standard``/``describe_fast`` return the IR ops these kernels run (built
by the torch-free ``xpusim.sim.workloads.attention``), so the simulator costs exactly
this op graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from xpusim.sim.workloads.attention import (
    block_kind,
    describe_fast_attention,
    describe_standard_attention,
    kv_block_limit,
    padding_applies,
)

_NEG_INF = float("-inf")


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, ...]:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D (batch, heads, seq, head_dim)")
    batch, heads, q_len, head_dim = q.shape
    kb, kv_heads, kv_len, kd = k.shape
    if kb != batch or v.shape[:3] != k.shape[:3] or kd != head_dim:
        raise ValueError(
            f"incompatible shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}"
        )
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    return batch, heads, kv_heads, q_len, kv_len, head_dim


def build_mask(
    q_len: int,
    kv_len: int,
    causal: bool,
    q_offset: int = 0,
    kv_lens: Sequence[int] | None = None,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """The explicit additive mask of standard attention: (batch or 1, 1, q_len, kv_len).

    Causal: -inf strictly above diagonal ``q_offset`` (``triu(1 + q_offset)`` of a -inf
    fill: two ops). Padding: -inf at keys ``j >= kv_lens[b]``, added on top.
    """
    if not causal and kv_lens is None:
        return None
    mask = None
    if causal:
        mask = torch.full((q_len, kv_len), _NEG_INF, dtype=dtype, device=device).triu(1 + q_offset)
        mask = mask.view(1, 1, q_len, kv_len)
    if kv_lens is not None:
        cols = torch.arange(kv_len, device=device).view(1, 1, 1, -1)
        lens = torch.tensor(list(kv_lens), device=device).view(-1, 1, 1, 1)
        pad = torch.zeros(len(kv_lens), 1, 1, kv_len, dtype=dtype, device=device).masked_fill(
            cols >= lens, _NEG_INF
        )
        mask = pad if mask is None else mask + pad
    return mask


def standard_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    q_offset: int = 0,
    kv_lens: Sequence[int] | None = None,
) -> torch.Tensor:
    """Unfused attention: S = QK^T, S*scale, S + mask, softmax, PV (all materialised).

    ``mask`` is an additive tensor broadcastable to (batch, heads, q_len, kv_len); when
    absent and ``causal``/``kv_lens`` ask for one it is built as a full q_len x kv_len
    tensor, as pre-fused engines did. GQA repeats K/V per query head (a real copy).
    """
    batch, heads, kv_heads, q_len, kv_len, head_dim = _check_shapes(q, k, v)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    if kv_heads != heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    if mask is None:
        # On q's device: a mask built on the CPU cannot be added to CUDA scores.
        mask = build_mask(q_len, kv_len, causal, q_offset, kv_lens, batch, q.dtype, q.device)
    s = torch.matmul(q, k.transpose(-2, -1))
    s = s * scale
    if mask is not None:
        s = s + mask
    p = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
    del s
    return torch.matmul(p, v)


def mask_template(
    block: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """The 2M x 2M additive template T[r, c] = 0 if c <= r else -inf (M = ``block``).

    Every causal block mask and every padding mask of an M x M (or smaller) block is
    a slice of it; see ``_block_mask``.
    """
    size = 2 * block
    return torch.full((size, size), _NEG_INF, dtype=dtype, device=device).triu(1)


def _block_mask(
    template: torch.Tensor,
    q_start: int,
    rows: int,
    k_start: int,
    cols: int,
    causal: bool,
    q_offset: int,
    kv_lens: Sequence[int] | None,
) -> torch.Tensor | None:
    """The additive mask of one (rows x cols) block, sliced from ``template``.

    Causal: key k_start+c is visible to query q_start+r iff c - r <= delta with
    delta = q_start + q_offset - k_start; the template slice starting at
    (max(delta, 0), max(-delta, 0)) has exactly that pattern. Padding: keys with
    c < kv_lens[b] - k_start are visible, which is template row (kv_lens[b]-k_start-1).
    """
    mask = None
    if causal:
        delta = q_start + q_offset - k_start
        if delta < cols - 1:  # not fully visible (fully masked blocks never get here)
            a, b = max(delta, 0), max(-delta, 0)
            mask = template[a : a + rows, b : b + cols]
    if padding_applies(k_start, cols, kv_lens):
        pad = torch.stack([_padding_row(template, n - k_start, cols) for n in kv_lens]).view(
            len(kv_lens), 1, 1, 1, cols
        )
        mask = pad if mask is None else mask + pad
    return mask


def _padding_row(template: torch.Tensor, visible: int, cols: int) -> torch.Tensor:
    """Template slice that keeps the first ``visible`` of ``cols`` keys (any integer).

    T[r, s + c] is visible iff c <= r - s: r = visible - 1, s = 0 for 1 <= visible <= cols;
    all visible (r = cols - 1) beyond; all masked (r = 0, s = M) when visible <= 0.
    """
    block = template.shape[0] // 2
    if visible <= 0:
        return template[0, block : block + cols]
    return template[min(visible, cols) - 1, :cols]


def fast_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    outer_block: int = 128,
    inner_block: int = 64,
    q_offset: int = 0,
    kv_lens: Sequence[int] | None = None,
) -> torch.Tensor:
    """Blockwise attention with online softmax, two-level tiling and a tiling mask.

    Loops over query blocks of ``outer_block`` rows; for each, over key/value blocks
    of ``outer_block`` keys (the Cube->Vector hand-off unit). Within a key block the
    QK^T and PV GEMMs run as ``inner_block``-key tiles. Blocks wholly masked (causal
    future, padding) are skipped; see the module docstring for the semantics.
    """
    batch, heads, kv_heads, q_len, kv_len, head_dim = _check_shapes(q, k, v)
    if outer_block < 1 or inner_block < 1:
        raise ValueError("outer_block and inner_block must be >= 1")
    inner_block = min(inner_block, outer_block)
    if kv_lens is not None:
        kv_lens = [int(n) for n in kv_lens]
        if len(kv_lens) != batch or min(kv_lens) < 1 or max(kv_lens) > kv_len:
            raise ValueError(f"kv_lens must hold {batch} lengths in [1, {kv_len}]")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    group = heads // kv_heads
    acc = torch.float32
    # Every buffer on q's device (CPU by default, CUDA when timed there).
    dev = q.device
    template = mask_template(outer_block, acc, dev)
    # GQA: the ``group`` query heads that share one K/V head are stacked along the row
    # axis of the query block, (batch, kv_heads, group*rows, d), so each GEMM is a plain
    # batched matmul over (batch, kv_heads) against the un-repeated K/V tile. (A
    # broadcast over a size-1 group axis would make torch copy the tile per query head.)
    q5 = q.view(batch, kv_heads, group, q_len, head_dim)
    kv_limit = kv_block_limit(kv_len, kv_lens)
    out = torch.empty_like(q5)
    # The running max starts at the most negative finite value, not -inf: a row that has
    # seen only masked keys keeps it, and exp(-inf - m) = 0, exp(m - m) = 1 need no
    # special case (the -inf - -inf = nan guard costs three ops per block otherwise).
    lowest = torch.finfo(acc).min
    for q_start in range(0, q_len, outer_block):
        rows = min(outer_block, q_len - q_start)
        shape5 = (batch, kv_heads, group, rows)
        q_blk = (q5[:, :, :, q_start : q_start + rows].to(acc) * scale).view(
            batch, kv_heads, group * rows, head_dim
        )
        m = torch.full((batch, kv_heads, group * rows, 1), lowest, dtype=acc, device=dev)
        denom = torch.zeros((batch, kv_heads, group * rows, 1), dtype=acc, device=dev)
        o = torch.zeros((batch, kv_heads, group * rows, head_dim), dtype=acc, device=dev)
        for k_start in range(0, kv_limit, outer_block):
            cols = min(outer_block, kv_limit - k_start)
            kind = block_kind(q_start, rows, k_start, cols, causal, q_offset)
            if kind == "masked":
                continue
            k_blk = k[:, :, k_start : k_start + cols].to(acc)
            v_blk = v[:, :, k_start : k_start + cols].to(acc)
            # Cube, level 2: QK^T as inner tiles of keys sized for L0A/L0B/L0C.
            tiles = [
                torch.matmul(q_blk, k_blk[:, :, t : t + inner_block].transpose(-2, -1))
                for t in range(0, cols, inner_block)
            ]
            s = tiles[0] if len(tiles) == 1 else torch.cat(tiles, dim=-1)
            # Vector: mask slice (only for partial blocks), online softmax update.
            mask = _block_mask(
                template,
                q_start,
                rows,
                k_start,
                cols,
                causal and kind == "partial",
                q_offset,
                kv_lens,
            )
            if mask is not None:
                s = (s.view(*shape5, cols) + mask).view(batch, kv_heads, group * rows, cols)
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            p = torch.exp(s - m_new)
            alpha = torch.exp(m - m_new)
            denom = denom * alpha + p.sum(dim=-1, keepdim=True)
            o = o * alpha
            # Cube, level 2: PV accumulated over the same inner key tiles.
            for t in range(0, cols, inner_block):
                o = o + torch.matmul(p[..., t : t + inner_block], v_blk[:, :, t : t + inner_block])
            m = m_new
        out[:, :, :, q_start : q_start + rows] = (o / denom).view(*shape5, head_dim).to(q.dtype)
    return out.view(batch, heads, q_len, head_dim)


# The IR ops these kernels run for given sizes: the torch-free builders themselves
# (one definition, so kernel and description share their signature and defaults).
describe_standard = describe_standard_attention
describe_fast = describe_fast_attention
