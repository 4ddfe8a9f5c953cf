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

Every GEMM of those kernels reads both operands from shared memory through warp tiles of 32 x 32
(``WarpShape = cutlass::gemm::GemmShape<32, 32, GemmType::WarpK>`` in kernel_forward.h ``MM0``/
``MM1`` and in each backward ``Matmul*``; ``kNumWarpsPerBlock = kBlockSizeI * kBlockSizeJ / (32 *
32)``): an M x N x K GEMM moves M N K elt (1/32 + 1/32) bytes of ``ldmatrix`` traffic, 16 FLOP per
byte, which at 128 B/clk is exactly the A100 SM's 2048 FLOP/clk of 16-bit MMA. So the shared-memory
port, not the tensor pipe, sets the block's GEMM time once the staging and the ``cp.async`` tile
fills are added (``xformers_smem_bytes``): forward QK^T + PV operands, P written (read back as
MM1's operand), and the Q, K, V tiles (Q is re-loaded each key block); backward the five GEMMs'
operands, P written (``accumApplyLSEToSmem``) and read element-wise for dS (``attn_T.at``), dS
written (``accumToSmem``), and the tiles its prologues load per block (Q for QK^T and dK, dO for dV
and dP, K for dQ, V for dP; K for QK^T stays resident, ``kSmemContainsEntireMat``). The block pays
what that traffic takes beyond its MMA time (``smem_extra_s``). FA2 (warp tiles of 32 query rows x
the whole key block or head dim, P from registers) stays under its MMA time, as FA2 forward d64
does at 128 x 128 (~176 KB against 4.2 MFLOP), so it gets no such term.

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

xFormers' backward from 0.0.20 (2023-05-23; facebookresearch/xformers#774: "we have improved the
parallelization ... available starting in xFormers 0.0.20"; the same kernel PyTorch's
mem_eff_attention/kernel_backward.h carries) splits the keys over CTAs, FA2-style: the grid is
``(num_splits_key, heads, batch)`` and ``attention_backward_generic.cu`` sets ``num_splits_key =
ceil_div(num_keys, kBlockSizeJ)``, one CTA per key block, except when ``batch x heads >= 256`` and
``num_keys <= 2 kBlockSizeJ`` (then 1), and at most ``200 / (batch x heads)`` when dK/dV cannot stay
in registers (``kNeedsAccumGradK``: head_dim above the tile) (``xformers_key_splits``). Two costs come
with the split that FA2's dataflow lacks:

* every CTA recomputes delta = rowsum(dO * O) for *all* queries of its (batch, head) before its
  first block (``attention_kernel``: ``if (kKernelComputesDelta) for (query_start = 0; query_start
  < p.num_queries; ...) computeDelta(...)``, then ``__syncthreads()``; ``kKernelComputesDelta`` holds
  for 16-bit inputs), so each CTA reads O and dO of the whole head, 2 x q_len x d_v x elt bytes,
  from L2 (the head's other CTAs read the same rows), where FA2 runs one preprocess kernel over
  them once (``bwd_prologue_bytes_per_item``, priced at the SM's share of L2 bandwidth like the
  other per-CTA L2 transfers of ``attention_impl``);
* the fp32 dQ accumulators live in a global workspace of one ``GradQTempStorage`` per 64-row query
  tile (``int32_t lock; int32_t counter; int32_t pad[2];`` then the tile's fp32 partial sums,
  taken under ``AtomicLock`` by the CTAs of different key blocks), which is zero-filled before the
  kernel (``workspace.zero_()`` when ``should_zero_workspace()``): a memset of about b x h x s_q x d
  x 4 bytes (``xformers_bwd_side_ops``).

Shared memory moves 32 banks x 4 bytes per clock per SM (CUDA C Programming Guide,
"Shared Memory" for compute capability 5.x and later: 32 banks, each 32 bits per clock).
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import MappingProxyType

from xpusim.hwprofiles.spec import Device
from xpusim.sim import ops
from xpusim.sim.cost.attention_hopper import SS_QK_WGMMA, wgmma_port_s
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
    """Shared-memory bytes per score that ``impl`` moves beyond FA2's dataflow, in series with
    the block: FA1's split-K reduction (module docstring); 0 for the others (xFormers' whole
    shared-memory traffic is ``xformers_smem_bytes``)."""
    if impl == "flash1":
        return fa1_splitk_bytes_per_score(head_dim, v_head_dim, kv_len, pass_)
    return 0.0


XFORMERS_WARP_TILE = (32, 32)  # WarpShape of every xFormers CUTLASS GEMM (module docstring)


def xformers_smem_bytes(br: int, bc: int, head_dim: float, v_head_dim: float, pass_: str,
                        dtype: str) -> float:
    """Shared-memory bytes one (br x bc) block of xFormers' kernel moves (module docstring):
    ``ldmatrix`` operand reads of its GEMMs through 32 x 32 warp tiles, P / dS staging, and the
    ``cp.async`` tile fills."""
    elt = dtype_bytes(dtype)
    d, vd = head_dim, v_head_dim
    per_mnk = elt * (1.0 / XFORMERS_WARP_TILE[0] + 1.0 / XFORMERS_WARP_TILE[1])
    if pass_ == "fwd":  # QK^T (br x bc x d), PV (br x vd x bc); P written; Q, K, V filled
        mnk, staged, filled = br * bc * (d + vd), 1.0 * br * bc, br * d + bc * (d + vd)
    else:  # S, dV, dP, dQ, dK; P written, P read for dS, dS written; Q, dO twice, K, V
        mnk, staged = br * bc * (3.0 * d + 2.0 * vd), 3.0 * br * bc
        filled = 2.0 * br * (d + vd) + bc * (d + vd)
    return mnk * per_mnk + (staged + filled) * elt


def smem_extra_s(impl: str, head_dim: float, v_head_dim: float, kv_len: float, pass_: str,
                 dtype: str, tile: tuple[int, int], mma_s: float, clock_hz: float,
                 async_mma: bool = False) -> float:
    """Seconds a (br x bc) ``tile`` block of ``impl`` adds for shared-memory traffic: FA1's
    split-K bytes in series; for xFormers, what its whole traffic takes beyond the block's MMA
    time ``mma_s`` (the port feeds the MMAs; module docstring); for the forward of the Triton
    tutorial and Colfax's FMHA on a wgmma device, what their GEMMs' shared-memory operands take
    beyond their MMA time (``attention_hopper.wgmma_port_s``); 0 for the others."""
    rate = SMEM_BYTES_PER_CLK_PER_SM * clock_hz
    br, bc = tile
    if impl in SS_QK_WGMMA and async_mma and pass_ == "fwd":
        return wgmma_port_s(tile, head_dim, v_head_dim, dtype, mma_s, rate)
    if impl == "xformers":
        return max(0.0, xformers_smem_bytes(br, bc, head_dim, v_head_dim, pass_, dtype) / rate
                   - mma_s)
    return smem_bytes_per_score(impl, head_dim, v_head_dim, kv_len, pass_, dtype) * (br * bc) / rate


def extra_alu_per_score(impl: str, pass_: str, causal: bool, diagonal: bool) -> float:
    """FP32 instructions per score that ``impl`` runs beyond the FA2 count of
    ``attention_impl.ALU_PER_SCORE`` (which adds +1 for the mask on diagonal blocks only)."""
    if impl != "triton2":
        return 0.0
    mask_everywhere = 1.0 if causal and not diagonal else 0.0
    return TRITON2_EXTRA_ALU["fwd" if pass_ == "fwd" else "bwd"] + mask_everywhere


def bwd_side_ops(impl: str, batch: float, heads: float, q_len: float, head_dim: float,
                 v_head_dim: float, dtype: str, kv_len: float = 0.0) -> list[Op]:
    """The memory-bound kernels ``impl``'s backward runs around its fused kernel, in launch
    order (module docstring; ``kv_len`` 0 = ``q_len``); [] where the source was not checked
    (cudnn, flash1, the Triton 3 tutorial)."""
    if impl == "triton2":
        return triton2_bwd_side_ops(batch, heads, q_len, head_dim, v_head_dim, dtype)
    if impl == "xformers":
        return xformers_bwd_side_ops(batch, heads, q_len, kv_len or q_len, head_dim)
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


XFORMERS_BWD_BLOCK = 64  # kBlockSizeI = kBlockSizeJ of the sm80/sm70 16-bit d <= 64 backward
GRADQ_TILE_HEADER_BYTES = 16.0  # GradQTempStorage: lock, counter, pad[2] (int32 each)


def xformers_key_splits(batch: float, heads: float, kv_len: float, head_dim: float,
                        block: int = XFORMERS_BWD_BLOCK) -> int:
    """CTAs per (batch, head) of xFormers' split-key backward (module docstring): one per key
    block, 1 when ``batch x heads >= 256`` and ``kv_len <= 2 block``, at most ``200 / (batch x
    heads)`` (at least 1) when ``head_dim`` exceeds the tile (dK/dV accumulated in gmem)."""
    splits = math.ceil(kv_len / block)
    if batch * heads >= 256 and kv_len <= 2 * block:
        splits = 1
    if head_dim > block:
        splits = min(splits, int(200 // (batch * heads)))
    return max(1, splits)


def bwd_prologue_bytes_per_cta(impl: str, pass_: str, q_len: float, v_head_dim: float,
                               dtype: str) -> float:
    """L2 bytes each backward CTA of ``impl`` reads before its first block beyond FA2's
    dataflow: xFormers' delta recomputation over all queries of its (batch, head), 2 x q_len x
    d_v x elt (module docstring); 0 for the other kernels and for the forward."""
    if impl != "xformers" or pass_ != "bwd" or dtype_bytes(dtype) > 2:
        return 0.0  # kKernelComputesDelta: 16-bit kernels only
    return 2.0 * q_len * v_head_dim * dtype_bytes(dtype)


def bwd_prologue_bytes_per_item(impl: str, pass_: str, batch: float, heads: float,
                                q_len: float, kv_len: float, head_dim: float,
                                v_head_dim: float, dtype: str, rows: int) -> float:
    """L2 bytes a backward CTA of ``impl`` reads before its first block beyond FA2's dataflow,
    per item of ``attention_impl`` (one per ``rows``-row query block of a (batch, head)):
    xFormers' delta recomputation, 2 x q_len x d_v x elt per CTA, ``xformers_key_splits`` CTAs
    per (batch, head) (module docstring); 0 for the other kernels and for the forward."""
    per_cta = bwd_prologue_bytes_per_cta(impl, pass_, q_len, v_head_dim, dtype)
    if not per_cta:
        return 0.0
    ctas = xformers_key_splits(batch, heads, kv_len, head_dim)
    return per_cta * ctas / math.ceil(q_len / rows)


def xformers_bwd_side_ops(batch: float, heads: float, q_len: float, kv_len: float,
                          head_dim: float) -> list[Op]:
    """The zero-fill of xFormers' fp32 dQ workspace when the keys are split (module docstring):
    one ``GradQTempStorage`` (16-byte lock header + 64 x d fp32) per 64-row query tile."""
    if xformers_key_splits(batch, heads, kv_len, head_dim) <= 1:
        return []
    tiles = batch * heads * math.ceil(q_len / XFORMERS_BWD_BLOCK)
    nbytes = tiles * (XFORMERS_BWD_BLOCK * head_dim * 4.0 + GRADQ_TILE_HEADER_BYTES)
    zero = ops.elementwise("gq_workspace_zero", nbytes / 4.0, "fp32", 0.0, 0, 1)
    return [with_bytes(zero, nbytes)]


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


def l2_bytes_per_s(device: Device) -> float:
    """The device's L2 bandwidth (profile ``kernels.l2_bandwidth_gbps``), else its derated HBM
    bandwidth, as ``attention_impl.block_terms`` prices per-CTA L2 transfers."""
    return device.kernels.l2_bandwidth or device.hbm_bandwidth * device.efficiency.memory_max


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
    "GRADQ_TILE_HEADER_BYTES",
    "XFORMERS_BWD_BLOCK",
    "bwd_prologue_bytes_per_cta",
    "bwd_prologue_bytes_per_item",
    "bwd_side_ops",
    "SMEM_BYTES_PER_CLK_PER_SM",
    "TRITON2_EXTRA_ALU",
    "extra_alu_per_score",
    "fa1_key_block",
    "fa1_o_roundtrip_bytes_per_score",
    "fa1_splitk_bytes_per_score",
    "l2_bytes_per_s",
    "plus_side_kernels",
    "roofline_sum",
    "smem_bytes_per_score",
    "smem_extra_s",
    "triton2_bwd_side_ops",
    "with_bytes",
    "XFORMERS_WARP_TILE",
    "xformers_bwd_side_ops",
    "xformers_smem_bytes",
    "xformers_key_splits",
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
    lo, hi, full_lo, below_diag = key_block_span(q_len, causal, window, i, br, bc, kv_blocks,
                                                 offset)
    visited = hi - lo
    unmasked = min(visited, max(0, below_diag - full_lo))
    return visited, visited - unmasked


def key_block_span(q_len: float, causal: bool, window: float, i: int, br: int, bc: int,
                   kv_blocks: int, offset: float) -> tuple[int, int, int, int]:
    """(lo, hi, full_lo, below_diag) of query block ``i`` (``key_blocks``): it visits key
    blocks [lo, hi), of which [full_lo, below_diag) no row masks (empty when full_lo >=
    below_diag); full_lo >= lo and below_diag <= hi, so the masked blocks are [lo, full_lo)
    and [below_diag, hi)."""
    if not causal:
        return 0, kv_blocks, 0, kv_blocks
    last_q = offset + min((i + 1) * br, q_len) - 1
    first_q = offset + i * br
    hi = min(kv_blocks, math.floor(last_q / bc) + 1)  # blocks [lo, hi) are visited
    below_diag = math.floor((first_q + 1) / bc)  # blocks no row of this block masks causally
    lo = full_lo = 0
    if window:
        lo = math.floor(max(0.0, first_q - window + 1) / bc)  # first key any row needs
        full_lo = math.ceil(max(0.0, last_q - window + 1) / bc)  # inside every row's window
    return lo, hi, full_lo, below_diag
