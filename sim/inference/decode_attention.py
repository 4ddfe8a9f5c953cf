"""The generation-phase (decode) attention kernel a serving engine picks, and its cost.

TensorRT-LLM's GPT attention plugin runs one of two kernels for a one-token
generation step (docs/source/advanced/gpt-attention.md, "Generation Phase" and "XQA
Optimization"; cpp/tensorrt_llm/kernels/decoderMaskedMultiheadAttention/):

* **XQA** (MQA/GQA): one CTA per (sequence, KV head) holds all the query heads of the
  group as rows of a tensor-core tile, so each K/V element is read and converted once
  per group. Up to v0.10 the kernels are precompiled cubins (cubin/xqa_kernel_cubin.h,
  ``sXqaKernelMetaInfo``): single-query kernels exist only for ``num_q_heads_per_kv``
  = 8 (``nqpkv_8_m_8``) and head sizes 128 / 256, and
  ``XQAKernelList::supportConfig`` looks the exact group size up, so other groups
  fall back. ``mayHavePerfGain`` then asks for enough CTAs:
  ``num_kv_heads x batch x multi_block_count x kEnableMinBlockFactor (4) >= SM count``.
  The cost model's fused split-KV kernel already prices this (K/V once per KV head).
* **masked MHA** (everything else: MHA, GQA groups without a cubin, small batches):
  "a single CUDA thread-block per head" (gpt-attention.md), i.e. one CTA per (sequence,
  query head). Its dot products run on the CUDA cores in FP32
  (decoderMaskedMultiheadAttentionTemplate.h: ``MMHA_USE_FP32_ACUM_FOR_FMA`` and
  ``MMHA_USE_FP32_ACUM_FOR_OUT``; ``qk_dot_`` converts each K element to FP32 and FMAs
  it into an FP32 accumulator, the V loop likewise). Every query head of a group
  converts and multiplies the shared K/V again: the work grows with the query heads,
  not the KV heads, while the HBM traffic stays once per KV head (the group's CTAs are
  adjacent in the grid, ``grid(num_heads, batch)``, and meet in L2).

``masked_mha_cost`` prices the second kernel as a roofline of that CUDA-core work and
the K/V read. The CUDA-core work counts, besides the per-element conversion and FMA, what
the source issues per key and per value row (the lane reduction of each q.k product over
THREADS_PER_KEY threads with warp shuffles, the loads, the logit's load and conversion, the
KV cache addressing (the paged cache's block table, or the contiguous cache's row) and the
per-key mask checks),
against the FP32 pipe and against the SM's instruction issue rate; ``EngineAttentionModel`` routes a decode attention op to it when the
engine profile's rule (``[kernels] generation_attention``) picks masked MHA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from xpusim.hwprofiles.spec import Device
from xpusim.sim.cost.attention_impl import AttnShape, shape_of
from xpusim.sim.cost.base import CostModel, OpCost
from xpusim.sim.errors import InputError
from xpusim.sim.ir import AttentionShape, Op, OpKind, dtype_bytes

# Per K or V element and per query head, masked MHA issues one conversion to FP32 and
# one FP32 FMA (qk_dot_ / the V accumulation with the FP32-accumulation knobs above):
# 2 lane operations, each one FP32-pipe slot (the FP32 peak counts an FMA as 2 FLOP).
MMHA_LANE_OPS_PER_ELEMENT = 2
# An 8-bit (FP8 / INT8) cache is dequantised first, in the same loop
# (convert_from_8bit_kv_cache: convert_from_fp8 to the 16-bit type, then ``mul`` by
# kv_scale_quant_orig; gpt-attention.md: "dequantized on-the-fly in the MHA/MQA
# kernel"). Both steps are packed 16-bit instructions (cvt.rn.f16x2.e4m3x2 and a half2
# multiply: two elements each), so +0.5 + 0.5 lane operations per element.
MMHA_DEQUANT_LANE_OPS_PER_ELEMENT = 1
# Beyond the per-element work, the source shows per-key and per-timestep work
# (masked_multihead_attention_kernel, decoderMaskedMultiheadAttentionTemplate.h; the same
# structure from the FasterTransformer-derived template of v0.5 to the 1.x tree). A key
# is split over THREADS_PER_KEY = min(32, Dh_max x sizeof(T) / 16) threads
# (threads_per_key<T, Dh_MAX>, T the 16-bit compute type: 16 threads at head size 128),
# each holding one 16-byte vector of K_VEC_SIZE = 16 / sizeof(T) = 8 elements (8 bytes of
# an 8-bit cache). Per key each of those threads issues the vector load, the sum of its
# FP32 partial products (qk_dot_: ``sum(qk_vec)``, K_VEC_SIZE - 1 adds), log2(THREADS_PER_KEY)
# ``__shfl_xor_sync`` + add (the HMMA reduction, MMHA_USE_HMMA, is commented out) and the
# multiply by inv_sqrt_dh. The V loop gives a timestep THREADS_PER_VALUE =
# Dh_max x sizeof(T) / 16 threads (threads_per_value), each issuing the vector load and,
# in Logit_value_fma, the logit's shared-memory load and its conversion to FP32.
# The paged KV cache (KVBlockArray, cpp/tensorrt_llm/kernels/kvCacheUtils.h) adds, per key
# in the K loop and per value row in the V loop, what each of those threads issues from
# the source (the K loop's unrolled LDG batch, ``kvCacheBuffer.getKBlockPtr(seqIdx,
# valid_time_now)`` and ``getKVLocalIdx(valid_time_now, hi_kv, Dh, jj)`` inside
# ``for k_loop``; the V loop's ``getVBlockPtr(rowIdx, time_idx)`` / ``getKVLocalIdx``
# likewise; no per-block hoisting in any revision read):
# * the clamp ``min(time_now + k_loop * K_PER_ITER, context_length - 1)`` (V:
#   ``min(time_idx, tlength - 1)``);
# * ``getBlockPtr``: the block index ``tokenIdx >> mTokensPerBlockLog2`` and the global
#   load of the block pointer (v0.5-era ``pointer[...]``; later ``offsets[...]``, whose
#   pool select and byte-offset multiply are not counted);
# * ``getKVLocalIdx``: ``getLocalIdx`` = ``globalIdx & (tokensPerBlock - 1)`` and the
#   multiply-add ``local x dimsPerHead + (headIdx x tokensPerBlock x dimsPerHead +
#   channelIdx)`` (the bracket and the mask are loop-invariant);
# * the per-key mask check (K: ``local_time_now < context_length`` / ``is_active``; V:
#   ``is_mask = time_idx >= context_length``).
# The K loop's leader branch (``qk_max = fmaxf(qk_max, qk_); qk_smem[local_ti] = qk_``)
# runs on one lane per key but is issued once per warp for the warp's keys, so it costs
# every thread of a key a slot. The 64-bit address adds of the subscripts, loop control
# (per K_LOOP_UNROLL = 4 keys / V_LOOP_UNROLL = 8 rows) and the ALiBi term of some
# revisions are left out (their instruction count needs the SASS): a lower bound.
MMHA_VECTOR_BYTES = 16
MMHA_COMPUTE_BYTES = 2  # T: FP16/BF16 activations (an 8-bit cache is converted to T)
MMHA_MAX_THREADS_PER_KEY = 32
# Per thread, per key (K loop) and per value row (V loop): clamp, shift, block-pointer
# load, mask, multiply-add (the paged addressing above) and the mask check.
MMHA_PAGED_ROW_OPS = 6
# The contiguous KV cache (KVLinearBuffer, the same kvCacheUtils.h; the kernel is
# templated on the buffer type and makes the same calls): ``getKBlockPtr(seqIdx,
# tokenIdx)`` ignores the token and returns the sequence's row pointer (loop-invariant:
# no shift, no block-pointer load), and ``getKVLocalIdx`` is ``headIdx x mMaxSeqLen x
# dimsPerHead + tokenIdx x dimsPerHead + channelIdx`` (one multiply-add per key, no
# ``getLocalIdx`` mask): clamp, multiply-add and the mask check remain. v0.5-era
# TensorRT-LLM builds use it unless ``--paged_kv_cache`` (or ``--use_inflight_batching``)
# is given (examples/llama/build.py @ 027cd518: "By default we use contiguous KV cache").
MMHA_CONTIGUOUS_ROW_OPS = 3
KV_CACHE_LAYOUTS = ("paged", "contiguous")
# Per thread and key, the K loop's leader branch: fmaxf and the qk_smem store.
MMHA_KEY_LEADER_OPS = 2
# An SM issues one warp instruction per clock from each of its 4 schedulers ("Warp
# Scheduler (32 thread/clk)" x 4 per SM: NVIDIA A100 and H100 architecture whitepapers),
# 128 thread-instructions per clock. Hopper's FP32 pipe takes 128 lanes per clock, so
# every other instruction (loads, shuffles) takes an FP32 slot; Ampere's takes 64, so
# they can issue beside the FP32 work.
ISSUE_LANES_PER_CLK = 128
# XQA's CTA-count gate (decoderXQAImplPrecompiled.cpp / decoderXQARunner.cpp,
# ``kEnableMinBlockFactor = 4.0``).
XQA_MIN_BLOCK_FACTOR = 4.0
KERNELS = ("fused", "masked-mha", "xqa-or-masked-mha")


@dataclass(frozen=True)
class GenerationAttention:
    """An engine's rule for its decode-attention kernel.

    ``kernel``: "fused" (the cost model's FlashDecoding-style kernel: vLLM's and
    TRT-LLM 1.0's JIT XQA, which covers any group size), "masked-mha" (always: TRT-LLM
    before XQA) or "xqa-or-masked-mha" (XQA where a precompiled kernel exists for the
    group size and head size and the CTA gate passes, else masked MHA).
    """

    kernel: str = "fused"
    xqa_group_sizes: tuple[int, ...] = ()
    xqa_head_dims: tuple[int, ...] = ()
    # The KV cache masked MHA addresses: "paged" (KVBlockArray) or "contiguous"
    # (KVLinearBuffer); see MMHA_PAGED_ROW_OPS / MMHA_CONTIGUOUS_ROW_OPS.
    kv_cache: str = "paged"

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise InputError(
                f"generation_attention must be one of {', '.join(KERNELS)} (got {self.kernel!r})"
            )
        if self.kv_cache not in KV_CACHE_LAYOUTS:
            raise InputError(
                f"kv_cache_layout must be one of {', '.join(KV_CACHE_LAYOUTS)} "
                f"(got {self.kv_cache!r})"
            )

    def picks_masked_mha(self, shape: AttnShape, sms: int) -> bool:
        """Whether a one-token step of ``shape`` (one rank's heads) runs masked MHA."""
        if self.kernel == "fused":
            return False
        if self.kernel == "masked-mha":
            return True
        group = shape.heads / shape.kvh
        has_cubin = (
            group in self.xqa_group_sizes and shape.head_dim in self.xqa_head_dims
        )
        # mayHavePerfGain with multi-block mode off (multi_block_count = 1).
        enough_ctas = shape.kvh * shape.batch * XQA_MIN_BLOCK_FACTOR >= sms
        return not (has_cubin and enough_ctas)


def _threads_per_vector(head_dim: float) -> tuple[int, int]:
    """(threads per key or value row, elements per thread) of a head size: threads_per_key
    / threads_per_value over dh_max, the next power of two >= max(head size, 32)."""
    dh_max = 1 << (max(math.ceil(head_dim), 32) - 1).bit_length()
    threads = min(MMHA_MAX_THREADS_PER_KEY, dh_max * MMHA_COMPUTE_BYTES // MMHA_VECTOR_BYTES)
    return threads, dh_max // threads


def masked_mha_row_ops(shape: AttnShape, kv_cache: str = "paged") -> tuple[float, float]:
    """(FP32-pipe lane ops, other issued lane ops) of one key plus one value row of one
    query head, besides the per-element conversion and FMA (the constants above); the
    integer, load and store work (KV addressing, mask checks, the leader's update)
    counts against the issue rate only. ``kv_cache``: "paged" or "contiguous"."""
    k_threads, k_elems = _threads_per_vector(shape.head_dim)
    v_threads, _ = _threads_per_vector(shape.vd)
    rounds = (k_threads - 1).bit_length()  # log2(THREADS_PER_KEY) shuffle rounds
    row_ops = MMHA_CONTIGUOUS_ROW_OPS if kv_cache == "contiguous" else MMHA_PAGED_ROW_OPS
    # K: sum of the thread's partial products, one add per shuffle round, the scale.
    fp32 = k_threads * ((k_elems - 1) + rounds + 1)
    other = k_threads * (1 + rounds)  # the vector load and the shuffles
    other += k_threads * (row_ops + MMHA_KEY_LEADER_OPS)
    # V: the logit's conversion to FP32; the vector load and the logit's smem load.
    fp32 += v_threads * 1
    other += v_threads * (2 + row_ops)
    return float(fp32), float(other)


def masked_mha_ops(device: Device, shape: AttnShape, kv_cache: str,
                   batch: Any) -> tuple[Any, Any, float, float]:
    """(FP32 lane ops, issued lane ops, FP32 lanes/s, issue lanes/s) of masked MHA at ``batch``
    (a number, or a numpy array of batch sizes: the same operations in the same order, so the
    batched decode tables equal the per-step prices bit for bit)."""
    eff = device.efficiency
    keys = shape.kv_span  # a sliding window (gpt-oss) visits only its last keys
    elements = batch * shape.heads * keys * (shape.head_dim + shape.vd)
    rows = batch * shape.heads * keys
    elt = dtype_bytes(shape.dtype)
    per_element = MMHA_LANE_OPS_PER_ELEMENT + (MMHA_DEQUANT_LANE_OPS_PER_ELEMENT if elt == 1 else 0)
    row_fp32, row_other = masked_mha_row_ops(shape, kv_cache)
    fp32_ops = per_element * elements + row_fp32 * rows
    issued_ops = fp32_ops + row_other * rows
    fp32_per_s = device.vector_peak["fp32"] / 2 * eff.vector_max
    issue_per_s = max(fp32_per_s, ISSUE_LANES_PER_CLK * device.vector_cores * device.clock_hz
                      * eff.vector_max)
    return fp32_ops, issued_ops, fp32_per_s, issue_per_s


def masked_mha_bytes(shape: AttnShape, batch: Any) -> tuple[Any, Any]:
    """(K/V bytes read once per KV head, Q read + O written) of masked MHA at ``batch``."""
    elt = dtype_bytes(shape.dtype)
    kv_bytes = batch * shape.kvh * shape.kv_span * (shape.head_dim + shape.vd) * elt
    q_bytes = batch * shape.heads * shape.q_len * (shape.head_dim + shape.vd) * elt
    return kv_bytes, q_bytes


def masked_mha_cost(device: Device, shape: AttnShape, kv_cache: str = "paged") -> OpCost:
    """One masked-MHA generation step: CUDA-core work per query head (FP32 pipe and
    instruction issue), K/V read once per KV head, Q read and O written once; one launch.
    ``kv_cache``: the layout the kernel addresses ("paged" or "contiguous")."""
    eff = device.efficiency
    fp32_ops, issued_ops, fp32_per_s, issue_per_s = masked_mha_ops(device, shape, kv_cache,
                                                                   shape.batch)
    compute_s = max(fp32_ops / fp32_per_s, issued_ops / issue_per_s)
    kv_bytes, q_bytes = masked_mha_bytes(shape, shape.batch)
    memory_s = (kv_bytes + q_bytes) / device.main_memory_rate(eff.memory_max)
    overhead_s = eff.launch_overhead_s
    bound = "compute" if compute_s > memory_s else "memory"
    details = {"mmha_lane_ops": issued_ops, "mmha_fp32_lane_ops": fp32_ops,
               "hbm_bytes": kv_bytes + q_bytes}
    return OpCost(max(compute_s, memory_s) + overhead_s, compute_s, memory_s, overhead_s,
                  bound, details)


class EngineAttentionModel:
    """A cost model whose one-token attention ops follow the engine's kernel rule."""

    def __init__(self, inner: CostModel, device: Device, rule: GenerationAttention) -> None:
        self.inner, self.device, self.rule = inner, device, rule
        self.name = inner.name

    def time(self, op: Op) -> OpCost:
        if op.kind == OpKind.ATTENTION and self._is_generation(op):
            shape = shape_of(op)
            if self.rule.picks_masked_mha(shape, self.device.matrix_cores):
                return masked_mha_cost(self.device, shape, self.rule.kv_cache)
        return self.inner.time(op)

    def time_s(self, op: Op) -> float:
        """``time(op).time_s``, through the inner model's ``time_s`` where it has one
        (also for a generation attention the rule leaves to the fused kernel)."""
        if op.kind == OpKind.ATTENTION and self._is_generation(op):
            shape = shape_of(op)
            if self.rule.picks_masked_mha(shape, self.device.matrix_cores):
                return masked_mha_cost(self.device, shape, self.rule.kv_cache).time_s
        inner_s = getattr(self.inner, "time_s", None)
        return inner_s(op) if inner_s is not None else self.inner.time(op).time_s

    @staticmethod
    def _is_generation(op: Op) -> bool:
        s = op.shape
        return isinstance(s, AttentionShape) and s.q_len == 1 and not s.backward and s.cp == 1


def with_engine_attention(inner: CostModel, device: Device,
                          rule: GenerationAttention) -> CostModel:
    """``inner`` unchanged when the rule is "fused" or the device is not an NVIDIA GPU
    (the rule names CUDA kernels), else wrapped in ``EngineAttentionModel``."""
    if rule.kernel == "fused" or device.arch != "nvidia":
        return inner
    return EngineAttentionModel(inner, device, rule)
