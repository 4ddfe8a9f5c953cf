"""The extra kernels of the FlashAttention benchmarks' eager baseline (``attention_pytorch``).

flash-attention ``benchmarks/benchmark_flash_attention.py`` (FA2 paper, 2023) and
``hopper/benchmark_flash_attention.py`` (FA3 paper, 2024) time the "PyTorch" baseline as

    q, k, v = qkv.unbind(dim=2)                       # qkv: (b, s, 3, h, d), contiguous
    q = rearrange(q, 'b t h d -> (b h) t d')
    k = rearrange(k, 'b s h d -> (b h) d s')
    scores = rearrange(torch.baddbmm(empty, q, k, beta=0, alpha=scale), '(b h) t s -> b h t s')
    [causal: scores = scores + torch.triu(torch.full((s, s), -1e4), 1).to(dtype)]
    attention = torch.softmax(scores, dim=-1)
    output = torch.einsum('bhts,bshd->bthd', F.dropout(attention, 0.0), v)

Beyond the score kernels ``attention_impl.standard_ops`` prices, this runs:

* forward, three layout copies. ``unbind`` leaves q, k, v as strided views of the packed
  tensor (row stride 3·h·d), where b and h are not adjacent, so einops' ``reshape`` to
  ``(b h) …`` cannot be a view and copies each (``torch.reshape``: "a view when possible,
  otherwise a copy"): q to (b h, t, d), k to (b h, d, s) (a transposing copy), and inside
  ``einsum`` (aten/src/ATen/native/Linear.cpp ``sumproduct_pair``: permute + reshape of each
  operand to (batch, rows, sum) before ``bmm``) v to (b h, s, d). The einsum result is
  returned as a permuted view (no copy) and ``.to(dtype)`` of the same dtype is a no-op;
  ``F.dropout`` with p = 0 returns its input (ATen ``_dropout_impl``: ``if (p == 0 || !train
  …) return input``).
* backward, one ``stack``: ``unbind``'s backward stacks the q, k and v gradients into the
  packed (b, s, 3, h, d) gradient (``unbind_backward`` -> ``at::stack``), reading and
  writing 3·b·s·h·d elements. dO needs no copy: the benchmark's ``grad = torch.randn_like(y)``
  keeps the output's permuted strides, so its (b h, t, d) reshape is a view; the q/k/v
  gradients of the copies are views back (``reshape``/``permute`` backward).

Each copy is an ``OpKind.MEMCPY`` priced by the roofline (read + write at the HBM rate, plus
the launch overhead), like every other kernel of the baseline.
"""

from __future__ import annotations

from xpusim.sim import ops
from xpusim.sim.ir import Op, dtype_bytes


def bench_layout_ops(batch: float, heads: float, q_len: float, kv_len: float, head_dim: float,
                     v_head_dim: float, dtype: str, pass_: str) -> list[Op]:
    """The layout copies ``attention_pytorch`` runs besides the score kernels (module doc):
    forward ``copy_q``, ``copy_k``, ``copy_v``; backward ``stack_dqkv``."""
    elt = dtype_bytes(dtype)
    bh = batch * heads
    q_bytes = bh * q_len * head_dim * elt
    k_bytes = bh * kv_len * head_dim * elt
    v_bytes = bh * kv_len * v_head_dim * elt
    if pass_ == "fwd":
        return [ops.memcpy("copy_q", q_bytes), ops.memcpy("copy_k", k_bytes),
                ops.memcpy("copy_v", v_bytes)]
    return [ops.memcpy("stack_dqkv", q_bytes + k_bytes + v_bytes)]


__all__ = ["bench_layout_ops"]
