"""Per-block terms of the older fused attention kernels that FA2-style pricing lacks.

``attention_impl.block_terms`` prices one (Br x Bc) block as MMA + softmax (+ reductions).
The kernels below run the same GEMMs but do more per block, each read from their source:

* FlashAttention-1 (``flash1``) splits the key block across its warps ("split-K"): each warp
  holds a partial product over its share of the keys, and the partials are summed through
  shared memory after every step (FA2 paper, arXiv 2307.08691, s3.3 "Work Partitioning
  Between Warps": "all warps need to write their intermediate results out to shared memory,
  synchronize, then add up the intermediate results. These shared memory reads/writes slow
  down the forward pass in FlashAttention"; the backward has the same scheme for dQ).
  Warp layouts from flash-attention 1.x ``csrc/flash_attn/src/fmha_fwd_hdim*.cu`` /
  ``fmha_bwd_hdim*.cu``: ``FMHA_kernel_traits<S, D, STEP=16, WARPS_M=1, WARPS_N, ...>`` —
  forward 1 x 4 warps with S = 256 keys per block for d <= 64 (seqlen_k >= 256) and 128 for
  d = 128; backward 1 x 8 warps. Each 16-row step sums WARPS_N partials of 16 x D fp32
  (forward: the PV output; backward: dQ = dS K) through shared memory.
* Triton 2.0's ``triton.ops.flash_attention`` (``triton2``, python/triton/ops/flash_attention.py
  of Triton 2.0, the FA2 paper's "Triton" baseline) writes the online softmax FA1-style and
  masks every block. Forward, per score, beyond the FA2 count (``ALU_PER_SCORE``): the scale
  is its own multiply (``qk *= sm_scale`` before the row max, where FA2 folds scale, log2(e)
  and the max subtraction into one FFMA), ``tl.exp`` multiplies by log2(e) before ``ex2``
  (the later tutorial switched to ``exp2`` with a pre-scaled q for this reason), ``p *=
  l_rcp`` normalises P every block (FA1's rescale, removed in FA2 s3.1.1), and
  ``tl.where(offs_m >= start_n + offs_n, ...)`` selects on every block, not only on the
  diagonal. Backward: ``p = tl.exp(qk * sm_scale - m)`` (the log2(e) multiply) and the same
  ``tl.where`` on every block; ``ds = p * dp * sm_scale`` and the two converts match FA2's.

xFormers' CUTLASS memory-efficient kernels (``xformers``; the FA2 paper's "xformers" baseline,
``op=(cutlass.FwOp, cutlass.BwOp)``) stage the softmax output through shared memory where FA2
keeps it in registers (FA2's forward feeds P to the PV GEMM from registers). Forward
(xformers csrc/attention/cuda/fmha/kernel_forward.h, ``MM0``: "store this value into a
shared-memory (AccumulatorSharedStorage) that is used later as operand A for the second
matmul", ``MM1`` = ``DefaultMmaFromSharedMemory``): P is written to and read from shared
memory, 2 x elt bytes per score. Backward (kernel_backward.h ``processBlockIJ``): P goes to
shared memory for the dV GEMM as in FA2, and is read back element by element to form dS
(``fragment_attn[idx] = attn_T.at(...)``), 1 x elt more per score than FA2's dataflow. Its
sm80 16-bit backward for d <= 64 is ``AttentionBackwardKernel<Sm80, half, aligned, no
dropout, kPreloadMmas, 64, 64, 64>`` (autogen/impl/cutlassB_f16_aligned_k64.cu, 2023): 64 x 64
blocks of 4 warps (``attention_impl.tiles``).

Triton 2.0's backward also runs three memory-bound kernels around ``_bwd_kernel``
(``_attention.backward``): ``dq = torch.zeros_like(q, dtype=torch.float32)`` (a fill of an fp32
copy of q), ``_bwd_preprocess`` (reads O, dO and the row sums L; writes the rescaled dO,
``do_scaled``, and ``delta``), and, because ``backward`` returns that fp32 ``dq`` for a 16-bit
q, autograd's cast of the gradient to the input's dtype (torch/csrc/autograd/engine.cpp
``validate_outputs``: ``grad = grad.to(metadata dtype)``). ``triton2_bwd_side_ops`` lists
them; each is priced by the roofline like the eager baseline's kernels.

FlashAttention-2 and -3 run the same kind of kernels around their main backward kernel
(flash-attention csrc/flash_attn/src/flash_bwd_launch_template.h ``run_flash_bwd_seqk_parallel``:
``flash_bwd_dot_do_o_kernel<Clear_dQaccum=true>`` reads O and dO, writes the row sums dot(dO, O)
and zeroes the fp32 ``dq_accum``; after the main kernel ``flash_bwd_convert_dq_kernel`` reads
``dq_accum`` and writes dQ in the input dtype. hopper/flash_bwd_launch_template.h ``run_flash_bwd``:
``FlashAttnBwdPreprocess<..., Clear_dQaccum=true>`` (also writes LSE in log2 units) and
``FlashAttnBwdPostprocessConvertdQ``). ``bwd_side_ops`` lists them per implementation. Their
bytes scale with b*s*h*d, which the papers' sweeps hold fixed (batch x seqlen = 16k), while the
attention work grows with s: they weigh most at 512.

Shared memory moves 32 banks x 4 bytes per clock per SM (CUDA C Programming Guide,
"Shared Memory" for compute capability 5.x and later: 32 banks, each 32 bits per clock).
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import MappingProxyType

from xpusim.hwprofiles.spec import Device
from xpusim.sim import ops
from xpusim.sim.cost.base import OpCost
from xpusim.sim.cost.roofline import RooflineModel
from xpusim.sim.ir import MAIN_MEMORY, Op, dtype_bytes

SMEM_BYTES_PER_CLK_PER_SM = 128.0  # 32 banks x 4 B per clock (CUDA C Programming Guide)
FA1_WARPS_N = {"fwd": 4, "bwd": 8}  # FMHA_kernel_traits<..., WARPS_M=1, WARPS_N, ...>
# Triton 2.0 FP32 instructions per score beyond ALU_PER_SCORE (module docstring): forward the
# separate scale multiply, the log2(e) multiply and the per-block P normalisation; backward
# the log2(e) multiply. A causal kernel adds its mask select on every block.
TRITON2_EXTRA_ALU = {"fwd": 3.0, "bwd": 1.0}


def fa1_key_block(head_dim: float, kv_len: float) -> int:
    """Keys per FA1 block (``S`` of ``FMHA_kernel_traits``): 256 for d <= 64 when seqlen_k >=
    256, else 128 (fmha_fwd_hdim64.cu / fmha_fwd_hdim128.cu)."""
    return 256 if head_dim <= 64 and kv_len >= 256 else 128


def fa1_o_roundtrip_bytes_per_score(v_head_dim: float, head_dim: float, kv_len: float) -> float:
    """HBM bytes per score of FA1's O accumulator round trip (FA2 paper s3.1.2: FA1 loops over
    key blocks outside the query blocks). With more than one key block (``loop``) the kernel
    reads and writes its O rows as fp32 ``o_tmp`` once per key block (flash-attention 1.x
    fmha_api.cpp ``mha_fwd``: ``o_tmp`` is allocated as kFloat when seqlen_k > the block;
    the backward reuses it as the fp32 ``dq_tmp``): 2 x 4 x d_v bytes per row per S keys."""
    block = fa1_key_block(head_dim, kv_len)
    return 0.0 if kv_len <= block else 2.0 * 4.0 * v_head_dim / block


def fa1_splitk_bytes_per_score(head_dim: float, v_head_dim: float, kv_len: float,
                               pass_: str) -> float:
    """Shared-memory bytes per score of FA1's split-K reduction (module docstring).

    A 16-row step over S keys has 16 x S scores; its WARPS_N partials of 16 x D fp32 are
    written and read back once: 2 x 4 x WARPS_N x 16 x D bytes, i.e. 8 x WARPS_N x D / S per
    score (D = d_v forward for O, d backward for dQ)."""
    warps = FA1_WARPS_N["fwd" if pass_ == "fwd" else "bwd"]
    dim = v_head_dim if pass_ == "fwd" else head_dim
    return 8.0 * warps * dim / fa1_key_block(head_dim, kv_len)


def smem_bytes_per_score(impl: str, head_dim: float, v_head_dim: float, kv_len: float,
                         pass_: str, dtype: str) -> float:
    """Shared-memory bytes per score that ``impl`` moves beyond FA2's dataflow: FA1's split-K
    reduction, xFormers' P staging (module docstring); 0 for the others."""
    if impl == "flash1":
        return fa1_splitk_bytes_per_score(head_dim, v_head_dim, kv_len, pass_)
    if impl == "xformers":
        return (2.0 if pass_ == "fwd" else 1.0) * dtype_bytes(dtype)
    return 0.0


def extra_alu_per_score(impl: str, pass_: str, causal: bool, diagonal: bool) -> float:
    """FP32 instructions per score that ``impl`` runs beyond the FA2 count of
    ``attention_impl.ALU_PER_SCORE`` (which adds +1 for the mask on diagonal blocks only)."""
    if impl != "triton2":
        return 0.0
    mask_everywhere = 1.0 if causal and not diagonal else 0.0
    return TRITON2_EXTRA_ALU["fwd" if pass_ == "fwd" else "bwd"] + mask_everywhere


def bwd_side_ops(impl: str, batch: float, heads: float, q_len: float, head_dim: float,
                 v_head_dim: float, dtype: str) -> list[Op]:
    """The memory-bound kernels ``impl``'s backward runs around its fused kernel, in launch
    order (module docstring); [] where the source was not checked (cudnn, xformers, flash1,
    the Triton 3 tutorial)."""
    if impl == "triton2":
        return triton2_bwd_side_ops(batch, heads, q_len, head_dim, v_head_dim, dtype)
    if impl not in ("flash2", "flash3"):
        return []
    elt = dtype_bytes(dtype)
    rows = batch * heads * q_len
    q_elems = rows * head_dim
    o_elems = rows * v_head_dim
    # per-row fp32: FA2 writes dot(dO, O); FA3 also reads LSE and writes it in log2 units
    row_stats = 3.0 if impl == "flash3" else 1.0
    pre = with_bytes(ops.elementwise("bwd_preprocess", o_elems, dtype, 2.0, 2, 1),
                     2.0 * elt * o_elems + 4.0 * q_elems + row_stats * 4.0 * rows)
    convert = with_bytes(ops.elementwise("convert_dq", q_elems, dtype, 1.0, 1, 1),
                         (4.0 + elt) * q_elems)
    return [pre, convert]


def triton2_bwd_side_ops(batch: float, heads: float, q_len: float, head_dim: float,
                         v_head_dim: float, dtype: str) -> list[Op]:
    """The kernels Triton 2.0's backward runs besides ``_bwd_kernel`` (module docstring):
    ``dq_zero`` writes b*h*s*d fp32; ``bwd_preprocess`` reads O and dO (d_v each, the input
    dtype) and L (fp32 per row), writes ``do_scaled`` (d_v, input dtype) and ``delta`` (fp32
    per row); ``dq_cast`` reads the fp32 dQ and writes it in the input dtype."""
    elt = dtype_bytes(dtype)
    rows = batch * heads * q_len
    q_elems = rows * head_dim
    o_elems = rows * v_head_dim
    zero = with_bytes(ops.elementwise("dq_zero", q_elems, "fp32", 0.0, 0, 1), 4.0 * q_elems)
    pre = with_bytes(ops.elementwise("bwd_preprocess", o_elems, dtype, 2.0, 2, 1),
                     3.0 * elt * o_elems + 2.0 * 4.0 * rows)
    cast = with_bytes(ops.elementwise("dq_cast", q_elems, dtype, 1.0, 1, 1), (4.0 + elt) * q_elems)
    return [zero, pre, cast]


def with_bytes(op: Op, nbytes: float) -> Op:
    """``op`` with its main-memory traffic set to ``nbytes`` (mixed-dtype kernels)."""
    return replace(op, bytes=MappingProxyType({MAIN_MEMORY: float(nbytes)}))


def roofline_sum(device: Device, kernels: list[Op]) -> OpCost:
    """``kernels`` run one after another, each priced by the roofline (with its launch)."""
    model = RooflineModel(device)
    total = compute = memory = overhead = 0.0
    by_bound: dict[str, float] = {}
    nbytes = 0.0
    for op in kernels:
        c = model.time(op)
        total += c.time_s
        compute += c.compute_s
        memory += c.memory_s
        overhead += c.overhead_s
        nbytes += op.main_bytes
        by_bound[c.bound] = by_bound.get(c.bound, 0.0) + c.time_s
    details = {"kernels": float(len(kernels)), "hbm_bytes": nbytes}
    return OpCost(total, compute, memory, overhead, max(by_bound, key=lambda bound: by_bound[bound]), details)


def plus_side_kernels(device: Device, cost: OpCost, side: list[Op]) -> OpCost:
    """A fused kernel's cost plus the memory-bound kernels around it, in series. The fused
    backward's price already holds two launches (preprocess + main kernel), so one launch of
    ``side`` (its preprocess) is not counted twice."""
    extra = roofline_sum(device, side)
    launch = device.efficiency.launch_overhead_s
    details = {**cost.details, "side_kernels_s": extra.time_s - launch,
               "side_hbm_bytes": extra.details["hbm_bytes"]}
    return OpCost(cost.time_s + extra.time_s - launch, cost.compute_s,
                  cost.memory_s + extra.memory_s, cost.overhead_s + extra.overhead_s - launch,
                  cost.bound, details)


__all__ = [
    "FA1_WARPS_N",
    "bwd_side_ops",
    "SMEM_BYTES_PER_CLK_PER_SM",
    "TRITON2_EXTRA_ALU",
    "extra_alu_per_score",
    "fa1_key_block",
    "fa1_o_roundtrip_bytes_per_score",
    "fa1_splitk_bytes_per_score",
    "plus_side_kernels",
    "roofline_sum",
    "smem_bytes_per_score",
    "triton2_bwd_side_ops",
    "with_bytes",
]


def key_blocks(q_len: float, causal: bool, window: float, i: int, br: int, bc: int,
               kv_blocks: int, offset: float) -> tuple[int, int]:
    """(key blocks visited, of which partly masked) by query block ``i`` (``br`` rows;
    the queries are the last ``q_len`` positions, ``offset`` = kv_len - q_len).

    Causal: blocks up to the diagonal; those crossing it are masked. A sliding
    ``window`` also skips the blocks wholly left of the window, as flash-attn's local
    path does (flash_fwd_kernel.h: n_block_min = max(0, (m_block * kBlockM + seqlen_k -
    seqlen_q - window_size_left) / kBlockN)); the blocks crossing its left edge are
    masked too.
    """
    if not causal:
        return kv_blocks, 0
    last_q = offset + min((i + 1) * br, q_len) - 1
    first_q = offset + i * br
    hi = min(kv_blocks, math.floor(last_q / bc) + 1)  # blocks [lo, hi) are visited
    below_diag = math.floor((first_q + 1) / bc)  # blocks no row of this block masks causally
    lo = full_lo = 0
    if window:
        lo = math.floor(max(0.0, first_q - window + 1) / bc)  # first key any row needs
        full_lo = math.ceil(max(0.0, last_q - window + 1) / bc)  # inside every row's window
    visited = hi - lo
    unmasked = min(visited, max(0, below_diag - full_lo))
    return visited, visited - unmasked
