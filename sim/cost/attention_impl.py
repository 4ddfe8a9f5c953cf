"""Attention priced by the implementation that runs it (docs/attention.md, "Implementations").

One entry point, ``attention_cost(device, shape, impl, pass_)``, used by ``xpusim op
attention``, ``train``, ``infer`` (through ``KernelCostModel``) and agreeing with
``xpusim attention`` on Ascend (FastAttention delegates to ``sim.attention_model``).

Implementations and how each is priced:

* ``standard`` — PyTorch eager (the FlashAttention benchmarks' ``attention_pytorch``):
  [build the causal mask], QK^T as one batched GEMM (scale fused as the GEMM's alpha),
  [mask add], softmax, PV — each a separate kernel whose S x S tensors cross HBM,
  priced op by op with the roofline model and summed. Backward is what autograd runs:
  dP = dO V^T, dV = P^T dO, the softmax backward (reads P and dP, writes dS),
  dQ = dS K, dK = dS^T Q.
* ``fused_softmax`` — Megatron-LM's unfused attention: ``standard``'s GEMMs, the softmax
  one fused kernel or Megatron's fp32 fallback (``sim.cost.attention_megatron``).
* ``attention_pytorch`` — the FlashAttention benchmarks' ``attention_pytorch`` (the FA2/FA3
  papers' "PyTorch" baseline): the ``standard`` kernels plus the layout copies its einops
  rearranges and einsum make of the packed ``qkv`` (``q``, ``k`` transposed to (b h) d s, ``v``)
  and, backward, the ``stack`` that writes the packed ``qkv`` gradient (``bench_layout_ops``);
  on NVIDIA the transposing k copy costs at least its L2 sector traffic (``strided_l2_extra_s``).
* GPU fused kernels (``flash1``, ``flash2``, ``flash3``, ``flash4`` (SM100 forward:
  attention_blackwell), ``cudnn``, ``xformers``, ``triton``, ``triton2``, ``triton-fa``,
  ``colfax``) — one tiled kernel: a CTA owns ``Br`` query rows of one (batch, head) and
  walks the key blocks of ``Bc`` keys. Per block, on one SM:

  - MMA: ``4 Br Bc d`` FLOPs forward (QK^T, PV), ``10 Br Bc d`` backward (five GEMMs:
    S recomputed, dP, dV, dK, dQ; the FA papers' 2.5x), at the SM's share of the matrix
    peak x the device's ``matrix_max`` x the share its MMA path reaches: warp-level
    ``mma.sync`` reaches ``kernels.warp_mma_fraction`` of peak (1 on Ampere, 0.5 on
    Hopper, whose full rate needs warpgroup ``wgmma``: FA3 paper s1); ``flash3``,
    ``cudnn``, ``triton``, ``colfax`` use ``wgmma`` where the device has it (attention_hopper).
  - softmax: one ``exp2`` per score on the special-function units
    (``kernels.exp_per_clk_per_core`` per clock per SM: 16, i.e. 3.9 T/s on H100 against
    989 TFLOP/s of matmul, FA3 paper s3.1) and ``ALU_PER_SCORE`` FP32 instructions per
    score (scale-subtract, row max, row sum, convert; +1 mask select on diagonal blocks
    of a causal kernel) on the FP32 lanes; the two pipes run concurrently, so the
    softmax takes the longer of the two.
  - overlap: a warp's softmax sits between its two GEMMs (S -> P -> PV), so FA2-style
    kernels run them one after the other: ``block = mma + softmax``. FA3's ping-pong
    scheduling of two warpgroups and its intra-warpgroup pipelining hide a fraction
    ``OVERLAP["flash3"]`` of the shorter phase: ``block = mma + softmax - h * min(...)``.

  - older kernels' extra per-block work (FA1's split-K shared-memory reduction and fp32
    O round trip, Triton 2.0's FA1-style softmax) and the memory-bound kernels around a
    fused backward (FA2/FA3 preprocess and dQ convert, Triton 2.0's): ``attention_blocks``.
  - the latency a block's CTA waits on (a dependent chain of L2 and shared-memory round trips,
    read from each kernel's source) beyond what other resident CTAs overlap: ``attention_latency``.

  Items (one per query block of each batch x head, the causal ones visiting only the
  key blocks up to the diagonal) are placed on the SMs in launch order, each on the
  least-loaded SM (``flash3``/``cudnn``: heaviest first, as their persistent schedulers
  do): for short sequences the last wave runs with idle SMs. The backward of ``flash2``,
  ``flash3`` and ``xformers`` runs one item per key block instead (``KEY_BLOCK_BWD``), each
  walking the query blocks that see it. The kernel takes the
  longer of that and its HBM traffic (Q, K, V read, O written), plus the launch overhead.
* Ascend (``npu_fusion_attention``, ``fastattention``) — the Cube/Vector pipeline with
  its GM hand-off and synchronisation of ``sim.attention_model.fast_attention_cost``,
  the same function ``xpusim attention`` prints, so the study and a training step agree.
  Backward: 2.5x the forward pipeline (five matmuls per block instead of two, the same
  softmax recomputation); an assumption, not a measured Ascend figure. Decode work units
  (IncreFlashAttention) and MLA's absorbed decode (FusedInferAttentionScore's MLA
  template): ``sim.cost.attention_ascend``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from xpusim.hwprofiles.spec import Device
from xpusim.sim.cost import attention_blackwell, attention_hopper
from xpusim.sim.cost.attention_blocks import (
    bwd_prologue_bytes_per_item,
    bwd_side_ops,
    extra_alu_per_score,
    fa1_o_roundtrip_bytes_per_score,
    l2_bytes_per_s,
    plus_side_kernels,
    roofline_sum,
    smem_extra_s,
)
from xpusim.sim.cost.attention_bwd_grid import (  # SEQ_PARALLEL_AUTOTUNED_BWD re-exported
    PER_HEAD_BWD,
    SEQ_PARALLEL_AUTOTUNED_BWD,
    bwd_grid_items,
)
from xpusim.sim.cost.attention_eager import bench_layout_ops, standard_ops, strided_l2_extra_s
from xpusim.sim.cost.attention_hopper import first_block_extra_s, hopper_fwd_tile, out_bytes
from xpusim.sim.cost.attention_items import (
    fused_hbm_bytes,
    place_items,
    work_items,
)
from xpusim.sim.cost.attention_latency import BlockTerms, block_latency_s
from xpusim.sim.cost.attention_megatron import fused_softmax_cost
from xpusim.sim.cost.base import OpCost
from xpusim.sim.cost.flash_kernels import FLASH_LIMITS, kernel_head_dim
from xpusim.sim.cost.roofline import RooflineModel
from xpusim.sim.errors import InputError
from xpusim.sim.ir import AttentionShape, Op, OpKind, attention_pairs, dtype_bytes

IMPLS = (
    "standard", "attention_pytorch", "fused_softmax",  # scores in HBM
    "flash1", "flash2", "flash3", "flash4", "cudnn", "xformers", "triton", "triton2",  # CUDA
    "triton-fa",
    "colfax", "npu_fusion_attention", "fastattention",  # Ascend
)
PASSES = ("fwd", "bwd", "fwd_bwd")
GPU_FUSED = ("flash1", "flash2", "flash3", "flash4", "cudnn", "xformers", "triton", "triton2",
             "triton-fa", "colfax")
ASCEND = ("npu_fusion_attention", "fastattention")
# FP32 instructions per score of the online softmax (FA2 paper Alg. 1): scale-and-subtract
# the row max (1 FFMA), the row max (1 FMNMX), the row sum (1 FADD), the convert of P to
# 16 bits (1). Backward: P recomputed (1 FFMA), dS = P * (dP - D) (2), two converts.
ALU_PER_SCORE = {"fwd": 4.0, "bwd": 5.0}
# Fraction of the shorter of (MMA, softmax) a kernel hides behind the other per block.
# FA2-style kernels (and cuDNN, whose pipelining is unpublished) run them in series.
# flash3: 0.63, fit to the FA3 paper's ablation (Table 2, H100, d=128, seq 8k: 570 TFLOP/s
# without and 661 with ping-pong + intra-warpgroup overlap; with this model's terms the
# 661 needs 63% of the softmax hidden). Not a corpus row. FP8: attention_hopper.
OVERLAP = {"flash3": 0.63}
# Kernels on Hopper's wgmma + TMA where the device has it; ``colfax`` (FA2 on wgmma) only there.
ASYNC_MMA = ("flash3", "flash4", "cudnn", "triton", "colfax")  # flash4: tcgen05 (attention_blackwell)
# Persistent kernels with a tile scheduler that launches the heaviest (causal) items first
# (flash4: SingleTileLPTScheduler when causal, attention_blackwell).
HEAVY_FIRST = ("flash3", "flash4", "cudnn")
# triton.ops.flash_attention: BLOCK = 128 for both passes; flash4 (forward only): 2 Q tiles of
# 128 rows per CTA x 128 keys (attention_blackwell).
FIXED_TILES = {"triton2": (128, 128), "flash4": attention_blackwell.FLASH4_TILE}


@dataclass(frozen=True)
class AttnShape:
    """One attention call: ``q_len`` queries of ``batch x heads`` against ``kv_len`` keys."""

    batch: float
    heads: float
    q_len: float
    kv_len: float
    head_dim: float
    v_head_dim: float | None = None
    kv_heads: float | None = None
    causal: bool = False
    dtype: str = "bf16"
    window: float = 0  # sliding-window (local) attention: keys per query, 0 = all (sim.ir)

    @property
    def vd(self) -> float:
        return self.v_head_dim or self.head_dim

    @property
    def kvh(self) -> float:
        return self.kv_heads or self.heads

    def pairs(self) -> float:
        """(query, key) pairs computed: all, or up to the diagonal (queries are the last
        ``q_len`` positions of ``kv_len``; back at most ``window`` keys when set)."""
        return attention_pairs(self.q_len, self.kv_len, self.causal, self.window)

    @property
    def kv_span(self) -> float:
        """Keys any query reads: all, or the last q_len + window - 1 under a window."""
        return min(self.kv_len, self.q_len + self.window - 1) if self.window else self.kv_len

    def paper_flops(self, pass_: str = "fwd") -> float:
        """The FlashAttention papers' FLOP count (FA2/FA3 s4.1): 4 b h s_q s_k d forward
        (2 (d + d_v) in general), halved when causal; backward 2.5x, both 3.5x. A
        sliding window (no paper convention) counts the pairs it scores."""
        pairs = self.pairs() if self.window else self.q_len * self.kv_len
        flops = 2.0 * self.batch * self.heads * pairs * (self.head_dim + self.vd)
        flops /= 2 if self.causal and not self.window else 1
        return flops * {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}[pass_]


def shape_of(op: Op) -> AttnShape:
    """The attention call an ``OpKind.ATTENTION`` op (``sim.ops.fused_attention``) describes.
    A context-parallel op (``cp`` > 1) keeps its own ``q_len``; ``KernelCostModel`` prices
    it as 1/cp of the call over ``cp x q_len`` queries."""
    s = op.shape
    if not isinstance(s, AttentionShape):
        raise InputError(f"op '{op.name}': an attention op needs an AttentionShape, got {s!r}")
    return AttnShape(s.batch, s.heads, s.q_len, s.kv_len, s.head_dim, s.v_head_dim,
                     s.kv_heads, s.causal, op.dtype, s.window)


def default_impl(device: Device) -> str:
    """What a user's stack runs on ``device`` today (docs/attention.md, "Defaults"):
    the profile's ``kernels.default_attention``; otherwise FlashAttention-2 on NVIDIA,
    ``npu_fusion_attention`` on Ascend, eager PyTorch on a CPU."""
    if device.kernels.default_attention:
        return device.kernels.default_attention
    return {"nvidia": "flash2", "davinci": "npu_fusion_attention"}.get(device.arch, "standard")


def check_impl(device: Device, impl: str, flag: str = "--impl") -> str:
    """``impl`` if it can run on ``device``, else a clear InputError naming ``flag``."""
    if impl not in IMPLS:
        raise InputError(f"{flag}: unknown attention implementation '{impl}'; expected one of "
                         f"{', '.join(IMPLS)}")
    usable = "standard" if device.arch == "cpu" else f"{default_impl(device)} or standard"
    if (impl in GPU_FUSED or impl == "fused_softmax") and device.arch != "nvidia":
        raise InputError(f"{flag} {impl}: a CUDA kernel, not available on {device.name} "
                         f"({device.arch}); use {usable}")
    if impl == "npu_fusion_attention" and device.arch != "davinci":
        raise InputError(f"{flag} npu_fusion_attention: an Ascend (torch_npu) kernel, not "
                         f"available on {device.name}; use {usable}")
    cc = device.kernels.compute_capability
    if impl in FLASH_LIMITS and cc and float(cc) < FLASH_LIMITS[impl][0]:
        raise InputError(f"{flag} {impl}: FlashAttention-{impl[-1]} needs compute capability "
                         f"{FLASH_LIMITS[impl][0]:g}+ (flash-attn README), {device.name} is {cc}; "
                         f"use {usable}")
    if impl == "flash4":
        attention_blackwell.check_flash4_device(device, flag)
    if impl in ("flash3", "colfax") and not device.kernels.async_mma:
        raise InputError(f"{flag} {impl}: a Hopper kernel that needs wgmma/TMA, which "
                         f"{device.name} lacks; use flash2 or cudnn")
    return impl


def attention_cost(device: Device, shape: AttnShape, impl: str | None = None,
                   pass_: str = "fwd") -> OpCost:
    """Predicted time of one attention call by ``impl`` (default: ``default_impl``)."""
    cost = _attention_body(device, shape, impl, pass_)
    details = {**cost.details, "achieved_flops": shape.paper_flops(pass_) / cost.time_s}
    return OpCost(cost.time_s, cost.compute_s, cost.memory_s, cost.overhead_s, cost.bound, details)


def attention_time_s(device: Device, shape: AttnShape, impl: str | None = None,
                     pass_: str = "fwd") -> float:
    """``attention_cost(...).time_s``, the same float, without the report's details."""
    return _attention_body(device, shape, impl, pass_, detailed=False).time_s


def _attention_body(device: Device, shape: AttnShape, impl: str | None, pass_: str,
                    detailed: bool = True) -> OpCost:
    """The cost of one call; ``detailed=False``: a fused GPU kernel's without its
    ``details`` (the time alone is asked for ~450,000 times by ``validate --published``'s
    serving rows)."""
    impl = check_impl(device, impl or default_impl(device))
    if pass_ not in PASSES:
        raise InputError(f"--pass: expected one of {', '.join(PASSES)}, got '{pass_}'")
    _check_shape(shape)
    if impl == "flash4":
        attention_blackwell.check_flash4_call(shape.dtype, pass_)
    if pass_ == "fwd_bwd":
        fwd = attention_cost(device, shape, impl, "fwd")
        bwd = attention_cost(device, shape, impl, "bwd")
        cost = _combine(fwd, bwd)
    elif impl in ("standard", "attention_pytorch"):
        cost = _standard(device, shape, pass_, impl)
    elif impl == "fused_softmax":
        cost = fused_softmax_cost(device, shape, pass_)
    elif impl in ASCEND:
        from xpusim.sim.cost.attention_ascend import ascend_cost  # it imports this module

        cost = ascend_cost(device, shape, pass_)
    else:
        blocks_of = SEQ_PARALLEL_AUTOTUNED_BWD.get(impl, impl)
        cost = _fused_gpu(device, shape, blocks_of, pass_, detailed=detailed)
        if pass_ == "bwd" and impl in SEQ_PARALLEL_AUTOTUNED_BWD:
            # the autotuner keeps the faster grid (SEQ_PARALLEL_AUTOTUNED_BWD)
            seq_parallel = _fused_gpu(device, shape, blocks_of, pass_, per_head_bwd=False,
                                      detailed=detailed)
            cost = min(cost, seq_parallel, key=lambda c: c.time_s)
        side = bwd_side_ops(blocks_of, shape.batch, shape.heads, shape.q_len, shape.head_dim,
                            shape.vd, shape.dtype, shape.kv_len) if pass_ == "bwd" else []
        if side:  # preprocess / dQ convert kernels around the fused backward (attention_blocks)
            cost = plus_side_kernels(device, cost, side)
    return cost


def priced_hbm_bytes(details: dict[str, float]) -> float:
    """HBM bytes the kernels of a priced attention call move, from its ``OpCost.details``:
    the main kernel's (``hbm_bytes``: a fused kernel's Q, K, V, O once; standard attention's
    every kernel, the score matrix written and read included) plus the backward's side
    kernels (``side_hbm_bytes``); ``fwd_bwd`` (``_combine``): both passes."""
    return sum(details.get(prefix + key, 0.0) for prefix in ("", "fwd_", "bwd_")
               for key in ("hbm_bytes", "side_hbm_bytes"))


def _check_shape(shape: AttnShape) -> None:
    for key in ("batch", "heads", "q_len", "kv_len", "head_dim"):
        if getattr(shape, key) <= 0:
            raise InputError(f"attention: {key} must be >= 1, got {getattr(shape, key)}")
    if shape.causal and shape.kv_len < shape.q_len:
        raise InputError(f"attention: causal attention needs kv_len >= q_len, got kv_len="
                         f"{shape.kv_len:g} < q_len={shape.q_len:g}; raise --kv-len")
    if shape.window < 0 or (shape.window and not shape.causal):
        raise InputError(f"attention: a sliding window needs causal attention and window "
                         f">= 1, got window={shape.window:g}")


def _combine(a: OpCost, b: OpCost) -> OpCost:
    bound = a.bound if a.time_s >= b.time_s else b.bound
    details = {f"fwd_{k}": v for k, v in a.details.items() if k != "achieved_flops"}
    details.update({f"bwd_{k}": v for k, v in b.details.items() if k != "achieved_flops"})
    return OpCost(a.time_s + b.time_s, a.compute_s + b.compute_s, a.memory_s + b.memory_s,
                  a.overhead_s + b.overhead_s, bound, details)


# ------------------------------------------------------------------ standard (eager)


def _standard(device: Device, shape: AttnShape, pass_: str, impl: str = "standard") -> OpCost:
    args = (shape.batch, shape.heads, shape.q_len, shape.kv_len, shape.head_dim, shape.vd,
            shape.dtype, pass_)
    bench = impl == "attention_pytorch"  # + the benchmark's q/k/v layout copies (attention_eager)
    cost = roofline_sum(device, (bench_layout_ops(*args) if bench else []) + standard_ops(shape, pass_))
    extra_s = strided_l2_extra_s(device, *args) if bench else 0.0  # k's transposing copy
    details = {**cost.details, "score_bytes": shape.batch * shape.heads * shape.q_len
               * shape.kv_len * dtype_bytes(shape.dtype), "strided_l2_extra_s": extra_s}
    return OpCost(cost.time_s + extra_s, cost.compute_s, cost.memory_s + extra_s,
                  cost.overhead_s, cost.bound, details)


# ------------------------------------------------------------------ GPU fused kernels


def tiles(impl: str, device: Device, head_dim: float, pass_: str, dtype: str = "bf16",
          causal: bool = False) -> tuple[int, int]:
    """(Br, Bc) of the kernel: query rows per CTA x keys per block.

    flash2 forward: flash-attention csrc/flash_attn/src/flash_fwd_launch_template.h
    (sm80/sm90: d<=64 128x128; d<=128 128x64; d=256 64x64 on H100 for 2 CTAs/SM, 128x64
    on A100). flash3 forward: hopper/ tile sizes of the FA3 release (d<=64 192x128,
    d<=128 128x128, d=256 128x80; ``_fa3_fwd_tile`` for the release's dtype/causal split). Backward (both): d<=64 128x128, d<=128 64x128, else
    64x64. cudnn: 128x128 forward (estimate); triton/colfax on Hopper: attention_hopper; xformers
    (CUTLASS memory-efficient kernel): 64x64 forward, and backward at d<=64 (the 2023 sm80
    kernels); flash1: FA2's (estimate; its key-block terms are in attention_blocks)."""
    if impl in FIXED_TILES:
        return FIXED_TILES[impl]
    if impl == "xformers" and pass_ == "bwd" and head_dim <= 64:
        return (64, 64)  # cutlassB_f16_aligned_k64.cu, sm80 (attention_blocks)
    if pass_ == "bwd":
        return (128, 128) if head_dim <= 64 else (64, 128) if head_dim <= 128 else (64, 64)
    if impl == "flash3":
        return _fa3_fwd_tile(head_dim, dtype, causal)
    hopper = hopper_fwd_tile(impl, device.kernels.async_mma, head_dim, dtype, causal)
    if hopper:
        return hopper
    if impl in ("cudnn", "triton"):
        return (128, 128) if head_dim <= 128 else (128, 64)
    if impl == "xformers":
        return (64, 64)
    if head_dim <= 64:
        return (128, 128)
    if head_dim <= 128:
        return (128, 64)
    return (64, 64) if device.kernels.async_mma else (128, 64)


def _fa3_fwd_tile(head_dim: float, dtype: str, causal: bool) -> tuple[int, int]:
    """FA3 forward tile as the release the FA3 paper measured picks it
    (flash-attention hopper/flash_fwd_launch_template.h, 2024: ``run_mha_fwd_hdim*`` and
    ``run_mha_fwd_hdim*_fp8``): 16-bit d<=64 192x128, d<=128 128x176 (128x128 when causal),
    d=256 128x80; FP8 d<=64 192x128, d<=128 128x256, d=256 128x128. Wider key blocks halve
    the per-block overheads but leave short sequences fewer blocks to pipeline."""
    if dtype_bytes(dtype) == 1:
        return (192, 128) if head_dim <= 64 else (128, 256) if head_dim <= 128 else (128, 128)
    if head_dim <= 64:
        return (192, 128)
    if head_dim <= 128:
        return (128, 128) if causal else (128, 176)
    return (128, 80)


def block_terms(device: Device, impl: str, shape: AttnShape, pass_: str, br: int, bc: int,
                diagonal: bool = False) -> BlockTerms:
    """Time of one (Br x Bc) block on one SM, and its parts (module docstring)."""
    k = device.kernels
    sms = device.matrix_cores
    clock = device.clock_hz
    use_async = impl in ASYNC_MMA and k.async_mma
    fraction = 1.0 if use_async else k.warp_mma_fraction
    mma_rate = (
        device.peak_for("matrix", shape.dtype) / sms * fraction
        * device.efficiency.matrix_max_for(shape.dtype)
    )
    tm, tn, tk = device.matrix_tile
    d = kernel_head_dim(impl, shape.head_dim, tk)
    vd = kernel_head_dim(impl, shape.vd, tk)
    gemms = 2.0 if pass_ == "fwd" else 5.0  # QK^T, PV | S, dP, dV, dK, dQ
    mma_flops = gemms * br * bc * (d + vd)
    mma_s = mma_flops / mma_rate
    scores = br * bc
    # share of the exponentials on the MUFU: FA4 emulates the rest (attention_blackwell)
    mufu = attention_blackwell.flash4_mufu_share(device, shape) if impl == "flash4" else 1.0
    exp_s = mufu * scores / (k.exp_per_clk_per_core * clock)
    fp32_lanes = device.peak_for("vector", "fp32") / (2.0 * sms)  # FP32 instr/s per SM
    alu = ALU_PER_SCORE[pass_] + (1.0 if diagonal else 0.0)
    alu += extra_alu_per_score(impl, pass_, shape.causal, diagonal)  # Triton 2.0 (attention_blocks)
    if impl == "flash4":  # emulated exp2, lazy O rescaling (attention_blackwell)
        alu += attention_blackwell.flash4_extra_alu(mufu, shape.vd, bc)
    if impl == "flash1":
        # FA1 rescales the output block by both softmax statistics every key block (FA2
        # paper s3.1.1 removes this): 2 d_v extra FP32 ops per query row per block.
        alu += 2.0 * shape.vd / bc
    alu_s = alu * scores / fp32_lanes
    softmax_s = max(exp_s, alu_s)
    hide = attention_blackwell.steady_overlap(
        device, impl, pass_, attention_hopper.steady_overlap(impl, shape.dtype, OVERLAP.get(impl, 0.0)))
    block_s = mma_s + softmax_s - hide * min(mma_s, softmax_s)
    reduce_s = 0.0
    if pass_ == "bwd":
        # dQ is accumulated over key blocks in fp32 through L2 (FA2: atomicAdd, FA3: TMA
        # reduce-add): each block reads and writes its Br x d partial, 8 B per element, at
        # the SM's share of L2 bandwidth, after the block's dQ GEMM.
        l2 = k.l2_bandwidth or device.hbm_bandwidth * device.efficiency.memory_max
        reduce_s = 2.0 * 4.0 * br * shape.head_dim / (l2 / sms)
        if impl in PER_HEAD_BWD:
            # num_stages=1: the inner loop's Q and dO tiles (Br x d each) are loaded with
            # nothing prefetched, so their L2 transfer sits in series with the block.
            reduce_s += 2.0 * br * shape.head_dim * dtype_bytes(shape.dtype) / (l2 / sms)
    if impl == "flash1":
        # FA1's loop order: key blocks outer, query blocks inner, so each key block reads and
        # writes its O rows in HBM (FA2 paper s3.1.2), in fp32 (attention_blocks).
        sm_bw = device.hbm_bandwidth * device.efficiency.memory_max / sms
        reduce_s += fa1_o_roundtrip_bytes_per_score(shape.vd, shape.head_dim, shape.kv_len) \
            * scores / sm_bw
    # Shared-memory traffic: FA1's split-K partials (FA2 paper s3.3); xFormers' operand, staging
    # and fill bytes, the Triton tutorial's wgmma operands, beyond MMA time (attention_blocks).
    reduce_s += smem_extra_s(impl, shape.head_dim, shape.vd, shape.kv_len, pass_, shape.dtype,
                             (br, bc), mma_s, clock, use_async)
    lat_s = block_latency_s(device, impl, pass_, block_s + reduce_s)  # attention_latency
    return BlockTerms(mma_s, exp_s, alu_s, softmax_s, block_s + reduce_s + lat_s, reduce_s, lat_s)


# ``block_terms`` of a full and a diagonal block, kept per device object (identity-keyed,
# the object held in the entry so its id is not reused; the last BLOCK_DEVICES devices,
# at most BLOCK_ENTRIES blocks each). They are a pure function of the device and the
# key below: block_terms reads of the shape only its dtype, head sizes, causality and
# key length, not its batch, heads or queries (tests/test_attention_impl.py varies
# those). A serving run prices the decode attention of every batch size at a few
# context grid points, so the same two blocks again and again (docs/performance.md).
BLOCK_DEVICES = 8
BLOCK_ENTRIES = 4096
_BLOCKS: dict[int, tuple[Device, dict[tuple, tuple[BlockTerms, BlockTerms]]]] = {}


def _block_pair(device: Device, impl: str, shape: AttnShape, pass_: str, br: int,
                bc: int) -> tuple[BlockTerms, BlockTerms]:
    """(``block_terms`` of a full block, of a diagonal block), each computed once."""
    entry = _BLOCKS.get(id(device))
    if entry is None or entry[0] is not device:
        if len(_BLOCKS) >= BLOCK_DEVICES:
            del _BLOCKS[next(iter(_BLOCKS))]
        entry = _BLOCKS[id(device)] = (device, {})
    table = entry[1]
    key = (impl, pass_, br, bc, shape.dtype, shape.head_dim, shape.vd, shape.causal,
           shape.kv_len, impl == "flash4" and attention_blackwell.two_cta(shape))
    pair = table.get(key)
    if pair is None:
        if len(table) >= BLOCK_ENTRIES:
            table.clear()
        pair = table[key] = (block_terms(device, impl, shape, pass_, br, bc),
                             block_terms(device, impl, shape, pass_, br, bc, diagonal=True))
    return pair


def _fused_gpu(device: Device, shape: AttnShape, impl: str, pass_: str,
               per_head_bwd: bool | None = None, detailed: bool = True) -> OpCost:
    """``per_head_bwd`` None: as ``impl`` runs its backward (``PER_HEAD_BWD``); False: the
    sequence-parallel grid, one program per key block (``SEQ_PARALLEL_AUTOTUNED_BWD``).
    ``detailed=False``: no ``details`` (the same times)."""
    if per_head_bwd is None:
        per_head_bwd = impl in PER_HEAD_BWD
    br, bc = tiles(impl, device, shape.head_dim, pass_, shape.dtype, shape.causal)
    group = shape.heads / shape.kvh
    split_kv = pass_ == "fwd" and shape.q_len * group < br
    if split_kv:
        # Decode / short queries: the kernels pack the query heads sharing a K/V head as
        # rows of one tile (padded to the 16-row MMA tile) and split the key range over
        # the SMs (FlashDecoding; flash-attn's split-KV path), so every SM works.
        br = max(16, math.ceil(shape.q_len * group / 16) * 16)
    full, diag = _block_pair(device, impl, shape, pass_, br, bc)
    eff = device.efficiency
    elt = dtype_bytes(shape.dtype)
    sms = device.matrix_cores
    sm_bw = device.hbm_bandwidth * eff.memory_max / sms
    q_blocks = math.ceil(shape.q_len / br)
    kv_blocks = math.ceil(shape.kv_len / bc)
    # Per item: its key blocks + its Q rows in, O rows out at the SM's HBM share (pipeline fill).
    o_elt = out_bytes(impl, shape.dtype)  # FA3 FP8 writes O in BF16 (attention_hopper)
    io_rows = br * (shape.head_dim * elt + shape.vd * o_elt) * (3.0 if pass_ == "bwd" else 1.0)
    io_s = io_rows / sm_bw + bwd_prologue_bytes_per_item(  # xFormers' delta (attention_blocks)
        impl, pass_, shape.batch, shape.heads, shape.q_len, shape.kv_len, shape.head_dim,
        shape.vd, shape.dtype, br) / (l2_bytes_per_s(device) / sms)
    if pass_ == "fwd" and not split_kv:  # FA3: first key block lacks intra-warpgroup overlap
        io_s += first_block_extra_s(impl, OVERLAP.get(impl, 0.0), full.mma_s, full.softmax_s,
                                    shape.dtype)  # 0 for FP8 (attention_hopper)
    items, blocks = (([], 0.0) if split_kv else  # the split-KV grid reads neither
                     work_items(shape, q_blocks, kv_blocks, br, bc, full.block_s,
                                diag.block_s, io_s))
    if pass_ == "bwd":  # the backward's own grid (attention_bwd_grid)
        items, blocks = bwd_grid_items(device, shape, impl, per_head_bwd, items, blocks,
                                       (q_blocks, kv_blocks, br, bc), full.block_s, diag.block_s)
    bh = shape.batch * shape.heads
    reps = max(1, round(bh))
    if split_kv:
        groups = shape.batch * shape.kvh
        kv_blocks = math.ceil(shape.kv_span / bc)  # a window reads only its last keys
        blocks = kv_blocks / bh * groups  # per (batch x head) below: one item per K/V head
        total = groups * kv_blocks * full.block_s
        pipeline_s = total / sms + full.block_s + io_s  # the last split adds one block
    else:
        pipeline_s = place_items(items, reps, sms, impl in HEAVY_FIRST) * (bh / reps)
    hbm_bytes = fused_hbm_bytes(shape, pass_, elt, o_elt)
    hbm_s = hbm_bytes / (device.hbm_bandwidth * eff.memory_max)
    kernels = 1 if pass_ == "fwd" else 2  # backward: a preprocess (dO . O) and the main kernel
    overhead_s = kernels * eff.launch_overhead_s
    body = max(pipeline_s, hbm_s)
    bound = "memory" if hbm_s > pipeline_s else (
        "softmax" if full.softmax_s > full.mma_s else "compute")
    if not detailed:
        return OpCost(body + overhead_s, pipeline_s, hbm_s, overhead_s, bound, {})
    n_items = len(items) if items else q_blocks  # split-KV: its query blocks
    waves = math.ceil(n_items * bh / sms)
    details = {
        "block_rows": float(br),
        "block_cols": float(bc),
        "block_mma_s": full.mma_s,
        "block_exp_s": full.exp_s,
        "block_alu_s": full.alu_s,
        "block_reduce_s": full.reduce_s,
        "block_latency_s": full.latency_s,
        "block_s": full.block_s,
        "blocks": blocks * bh,
        "items": n_items * bh,
        "split_kv": float(split_kv),
        "waves": float(waves),
        "pipeline_s": pipeline_s,
        "hbm_s": hbm_s,
        "hbm_bytes": hbm_bytes,
    }
    return OpCost(body + overhead_s, pipeline_s, hbm_s, overhead_s, bound, details)


# ------------------------------------------------------------------ the cost model


class KernelCostModel:
    """The roofline model, with attention ops priced by their implementation.

    ``attention_impl`` None = the device's default (``default_impl``). An attention op's
    pass comes from its shape (``backward``); a context-parallel op (``cp`` in its shape:
    1/cp of a causal score matrix, Megatron's zig-zag split) is priced as 1/cp of the
    full-sequence kernel.
    """

    def __init__(self, device: Device, attention_impl: str | None = None,
                 name: str = "kernel") -> None:
        self.device = device
        self.attention_impl = check_impl(device, attention_impl or default_impl(device),
                                         "--attention-impl")
        self.roofline = RooflineModel(device)
        self.name = name

    def time_s(self, op: Op) -> float:
        """``time(op).time_s``: the roofline's time alone for every op but attention."""
        if op.kind != OpKind.ATTENTION:
            return self.roofline.time_s(op)
        ir_shape = op.shape
        if isinstance(ir_shape, AttentionShape) and ir_shape.cp == 1:
            return attention_time_s(self.device, shape_of(op), self.attention_impl,
                                    "bwd" if ir_shape.backward else "fwd")
        return self.time(op).time_s

    def time(self, op: Op) -> OpCost:
        if op.kind != OpKind.ATTENTION:
            return self.roofline.time(op)
        shape = shape_of(op)
        ir_shape = op.shape
        assert isinstance(ir_shape, AttentionShape)  # shape_of checked it
        pass_ = "bwd" if ir_shape.backward else "fwd"
        cp = ir_shape.cp
        if cp > 1:
            full = attention_cost(self.device, replace(shape, q_len=shape.q_len * cp),
                                  self.attention_impl, pass_)
            return OpCost(full.time_s / cp, full.compute_s / cp, full.memory_s / cp,
                          full.overhead_s, full.bound, full.details)
        return attention_cost(self.device, shape, self.attention_impl, pass_)


__all__ = [
    "IMPLS",
    "PASSES",
    "AttnShape",
    "KernelCostModel",
    "attention_cost",
    "block_terms",
    "check_impl",
    "default_impl",
    "shape_of",
    "standard_ops",
    "tiles",
]
