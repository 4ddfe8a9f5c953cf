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

Beyond the score kernels ``standard_ops`` (below: eager attention's own kernels,
``attention_impl``'s ``standard`` implementation) prices, this runs:

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

One of them transposes, and on an NVIDIA GPU it is priced by the L2 traffic its reads make
when that exceeds its HBM time (``strided_l2_extra_s``). ``copy_k`` writes (b h, d, s) with s
fastest, and ``TensorIteratorBase::reorder_dimensions`` (aten/src/ATen/TensorIterator.cpp)
orders the copy's loop by the strides of operand 0, the output; ATen's ``gpu_kernel`` runs a
non-contiguous copy as ``launch_legacy_kernel<128, 4>`` (aten/src/ATen/native/cuda/
CUDALoops.cuh), so the 32 lanes of a warp write 32 consecutive s and read k[b, s, h, d] for
those 32 s: one element from each of 32 packed rows 3·h·d elements apart. An SM's loads are
served in 32-byte sectors (CUDA C++ Best Practices Guide, "Coalesced Access to Global
Memory": a warp's accesses take as many 32-byte transactions as the sectors they touch), so
each 2-byte element moves a whole sector from L2 to the SM. The other 15 elements of that
sector are read by the warps that write d + 1 … d + 15: blocks on other SMs (L1 is per SM),
but resident at the same time (one (b h) slice of k is s·d elements), so HBM still moves each
byte once and the extra traffic stays between L2 and the SMs, at the profile's
``l2_bandwidth_gbps``. Backward, the ``stack`` reads the dk third from the (b h, d, s)
gradient of that copy with d fastest in its output, the same pattern transposed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xpusim.hwprofiles.spec import Device
from xpusim.sim import ops
from xpusim.sim.cost.attention_blocks import l2_bytes_per_s, with_bytes
from xpusim.sim.cost.roofline import RooflineModel
from xpusim.sim.ir import Op, OpKind, dtype_bytes

if TYPE_CHECKING:
    from xpusim.sim.cost.attention_impl import AttnShape

# The granularity in which an NVIDIA SM's global loads are served (CUDA C++ Best Practices
# Guide, "Coalesced Access to Global Memory").
SECTOR_BYTES = 32.0
# The layout copies whose reads are strided by a packed row (module doc): forward ``copy_k``,
# backward ``stack_dqkv`` (its dk third).
TRANSPOSING = ("copy_k", "stack_dqkv")


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


def strided_l2_bytes(op: Op, strided_elements: float, dtype: str) -> float:
    """Bytes ``op`` moves between L2 and the SMs when ``strided_elements`` of its reads each
    take a whole 32-byte sector (module doc): its own bytes (read + write) plus, per strided
    element, the rest of its sector."""
    return op.main_bytes + strided_elements * max(0.0, SECTOR_BYTES - dtype_bytes(dtype))


def strided_l2_extra_s(device: Device, batch: float, heads: float, q_len: float, kv_len: float,
                       head_dim: float, v_head_dim: float, dtype: str, pass_: str) -> float:
    """Time the transposing copies of ``bench_layout_ops`` take beyond their roofline price on
    an NVIDIA GPU: each takes the longer of its HBM time and its sector traffic
    (``strided_l2_bytes``) at the L2 bandwidth. 0 elsewhere (the sector model is NVIDIA's)."""
    if device.arch != "nvidia":
        return 0.0
    model = RooflineModel(device)
    strided = batch * heads * kv_len * head_dim  # k's elements, read one sector each
    extra = 0.0
    for op in bench_layout_ops(batch, heads, q_len, kv_len, head_dim, v_head_dim, dtype, pass_):
        if op.name in TRANSPOSING:
            c = model.time(op)
            l2_s = strided_l2_bytes(op, strided, dtype) / l2_bytes_per_s(device)
            extra += max(0.0, l2_s - (c.time_s - c.overhead_s))
    return extra


def standard_ops(shape: AttnShape, pass_: str = "fwd") -> list[Op]:
    """The kernels eager PyTorch runs for ``softmax(Q K^T * scale + mask) V`` (forward) or
    for its autograd backward, in order. Scores are in the input dtype (as the FA
    benchmarks' ``attention_pytorch``); the causal mask is built per call in fp32
    (``torch.full`` + ``torch.triu``) and cast to the dtype. A sliding window changes
    only the mask's band, not these kernels: eager attention scores all S x S pairs."""
    q, kv, dt = shape.q_len, shape.kv_len, shape.dtype
    scores = shape.batch * shape.heads * q * kv
    if pass_ != "fwd":
        # softmax_backward_cuda_out (aten/src/ATen/native/cuda/SoftMax.cu) first runs
        # ``tmp = grad * output`` as its own elementwise kernel (reads dP and P, writes tmp),
        # then the softmax-backward kernel reads tmp and P and writes dS: two score-sized
        # kernels, six score tensors crossing HBM, not one fused pass. (The mask add passes
        # the gradient through.)
        return score_gemm_ops(shape, pass_, [], [
            ops.elementwise("softmax_bwd_mul", scores, dt, 1.0, 2, 1),
            ops.elementwise("softmax_bwd", scores, dt, 2.0, 2, 1, OpKind.SOFTMAX)])
    mask: list[Op] = []
    softmax: list[Op] = []
    if shape.causal:
        mask.append(ops.elementwise("mask_full", q * kv, "fp32", 0.0, 0, 1))
        mask.append(ops.elementwise("mask_triu", q * kv, "fp32", 1.0, 1, 1))
        cast = ops.elementwise("mask_cast", q * kv, dt, 1.0, 1, 1)
        mask.append(with_bytes(cast, q * kv * (4 + dtype_bytes(dt))))
        # S + mask: the broadcast mask is re-read for every batch x head
        softmax.append(ops.elementwise("mask_add", scores, dt, 1.0, 2, 1))
    softmax.append(ops.softmax("softmax", shape.batch * shape.heads * q, kv, dt))
    return score_gemm_ops(shape, pass_, mask, softmax)


def score_gemm_ops(shape: AttnShape, pass_: str, before_qk: list[Op],
                   softmax: list[Op]) -> list[Op]:
    """Unfused attention with the scores in HBM around a given softmax stage, in order:
    forward [repeat_kv] + ``before_qk`` + QK^T (one ``baddbmm``, the scale as its alpha) +
    ``softmax`` + PV; backward dP, dV, ``softmax`` (its backward kernels), dQ, dK, each
    followed by baddbmm's alpha multiply, [the K/V gradients summed back to the K/V heads].
    Shared by eager PyTorch (``standard_ops``) and Megatron-LM's fused softmax
    (``sim.cost.attention_megatron``)."""
    b, h, q, kv, d, vd = shape.batch, shape.heads, shape.q_len, shape.kv_len, shape.head_dim, shape.vd
    dt = shape.dtype
    bh = b * h
    out: list[Op] = []
    if pass_ == "fwd":
        if shape.kvh != h:  # repeat_interleave of K and V to the query heads
            out.append(ops.memcpy("repeat_kv", b * h * kv * (d + vd) * dtype_bytes(dt)))
        out += before_qk
        out.append(ops.gemm("qk", q, kv, d, dt, bh))
        out += softmax
        out.append(ops.gemm("pv", q, vd, kv, dt, bh))
        return out
    out.append(ops.gemm("dp", q, kv, vd, dt, bh))
    out.append(ops.gemm("dv", kv, vd, q, dt, bh))
    out += softmax
    out.append(ops.gemm("dq", q, d, kv, dt, bh))
    out.append(ops.gemm("dk", kv, d, q, dt, bh))
    # baddbmm's backward applies alpha (the softmax scale) after each bmm as its own kernel:
    # tools/autograd/derivatives.yaml ``batch1: maybe_multiply(grad.bmm(batch2^T), alpha)``,
    # ``batch2: maybe_multiply(batch1^T.bmm(grad), alpha)``, and ``maybe_multiply`` is
    # ``t * s`` unless s == 1 (FunctionsManual.cpp).
    out.append(ops.elementwise("dq_scale", bh * q * d, dt, 1.0, 1, 1))
    out.append(ops.elementwise("dk_scale", bh * kv * d, dt, 1.0, 1, 1))
    if shape.kvh != h:  # sum the repeated K/V gradients back to the K/V heads
        out.append(ops.elementwise("reduce_dkv", b * h * kv * (d + vd), dt, 1.0, 1, 0))
    return out


__all__ = [
    "SECTOR_BYTES", "bench_layout_ops", "score_gemm_ops", "standard_ops", "strided_l2_bytes",
    "strided_l2_extra_s",
]
