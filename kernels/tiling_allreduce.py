"""Tiling-AllReduce: tensor-parallel attention + output projection with overlapped all-reduce.

Megatron-style tensor parallelism: rank r of P holds heads [r*H/P, (r+1)*H/P) and the
matching rows of W_o (hidden x hidden, rows indexed by head*head_dim). Its partial
output ``attn_r @ W_o[rows_r]`` must be summed over ranks — an all-reduce of a
(batch, seq, hidden) tensor.

FastAttention's tiling-AllReduce (arXiv 2410.16663, docs/attention.md) splits the
work along the sequence into ``blocks`` query blocks: the all-reduce of block i is
issued asynchronously (``dist.all_reduce(async_op=True)``) and runs while block i+1
is being computed, so only the last block's communication is exposed.

``tp_attention_tiling_allreduce`` is the per-rank function; ``run_tp_attention``
launches it on gloo processes (``kernels.distributed.run_distributed``) and
``reference_attention_projection`` is the single-process result to compare with.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from xpusim.kernels.attention import fast_attention
from xpusim.kernels.distributed import run_distributed


def make_inputs(
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic q, k, v (batch, heads, seq, head_dim) and W_o (heads*head_dim, hidden)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, heads, seq, head_dim)
    q, k, v = (torch.randn(shape, generator=gen, dtype=dtype) for _ in range(3))
    hidden = heads * head_dim
    w_o = torch.randn(hidden, hidden, generator=gen, dtype=dtype) / hidden**0.5
    return q, k, v, w_o


def _project(attn: torch.Tensor, w_rows: torch.Tensor) -> torch.Tensor:
    """(batch, heads, s, d) attention output @ W_o rows -> (batch, s, hidden)."""
    batch, heads, s, d = attn.shape
    return attn.transpose(1, 2).reshape(batch, s, heads * d) @ w_rows


def reference_attention_projection(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w_o: torch.Tensor, causal: bool = False
) -> torch.Tensor:
    """Single process: full attention over all heads, then the whole output projection."""
    return _project(fast_attention(q, k, v, causal=causal), w_o)


def tp_attention_tiling_allreduce(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w_o: torch.Tensor,
    causal: bool = False,
    blocks: int = 4,
    overlap: bool = True,
) -> torch.Tensor:
    """This rank's share of TP attention + W_o, all-reduced block by block along the sequence.

    Call inside an initialised process group. ``q, k, v, w_o`` are the *full* tensors
    (every rank slices its heads, as if loaded from a checkpoint). With
    ``overlap=False`` each block's all-reduce is waited for before the next block
    starts (the non-overlapped baseline); the result is the same.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    batch, heads, seq, head_dim = q.shape
    if heads % world:
        raise ValueError(f"heads ({heads}) must be divisible by the TP size ({world})")
    local = heads // world
    h0 = rank * local
    ql, kl, vl = (t[:, h0 : h0 + local] for t in (q, k, v))
    w_rows = w_o[h0 * head_dim : (h0 + local) * head_dim]
    step = -(-seq // max(1, blocks))
    pending: list[tuple[torch.Tensor, dist.Work]] = []
    outputs: list[torch.Tensor] = []
    for start in range(0, seq, step):
        # Query block [start, start+step) against all keys; causal masks keys past each
        # query's absolute position (q_offset = start).
        attn = fast_attention(ql[:, :, start : start + step], kl, vl, causal=causal, q_offset=start)
        partial = _project(attn, w_rows).contiguous()
        work = dist.all_reduce(partial, async_op=True)
        if overlap:
            pending.append((partial, work))
        else:
            work.wait()
        outputs.append(partial)
    for _, work in pending:
        work.wait()
    return torch.cat(outputs, dim=1)


def _rank_main(
    rank: int,
    world: int,
    shape: tuple[int, int, int, int],
    causal: bool,
    blocks: int,
    overlap: bool,
    seed: int,
) -> np.ndarray:
    q, k, v, w_o = make_inputs(*shape, seed=seed)
    # Returned as numpy: a torch tensor would travel through a shared-memory file
    # descriptor that disappears when this child process exits.
    return tp_attention_tiling_allreduce(q, k, v, w_o, causal, blocks, overlap).numpy()


def run_tp_attention(
    world: int,
    batch: int = 1,
    heads: int = 4,
    seq: int = 64,
    head_dim: int = 16,
    causal: bool = False,
    blocks: int = 4,
    overlap: bool = True,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Launch ``world`` gloo processes; return every rank's (batch, seq, hidden) output."""
    outs = run_distributed(
        _rank_main, world, (batch, heads, seq, head_dim), causal, blocks, overlap, seed
    )
    return [torch.from_numpy(o) for o in outs]
