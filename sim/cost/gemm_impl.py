"""GEMMs priced by the implementation that runs them (docs/cost_model.md, "GEMM by
implementation").

A GEMM op whose shape names no implementation (``GemmShape.impl == ""``, every GEMM that
training and serving lower) is priced by the generic path of ``sim/cost/roofline.py``: the
cheapest of the device's CUTLASS tile shapes, waves over the cores, the operand-feed bound.
A GEMM that names one is cut into blocks the way that library's host code cuts it; the
roofline then prices the blocks with the same device terms (matrix peak x ``matrix_max``,
matrix "half", L2 and HBM bandwidths, the epilogue store), so only the kernel's structure
differs.

Implementations:

* ``vllm-cutlass-nvfp4`` — vLLM's SM100 CUTLASS NVFP4 GEMM with its untuned config (one
  256 x 256 x 256 tile, 4 x 4 cluster for every M; sim/cost/gemm_cutlass.py).
* ``deepgemm`` — DeepGEMM's FP8 dense kernel ``gemm_fp8_fp8_bf16_nt`` (deepseek-ai/DeepGEMM,
  initial release, Feb 2025; the README figures of the validation rows G15-G17 are its
  output). ``deepgemm-contiguous`` / ``deepgemm-masked``: its two M-grouped kernels,
  ``m_grouped_gemm_fp8_fp8_bf16_nt_contiguous`` (groups concatenated along M, each group's
  rows padded to the 128-row M alignment) and ``..._masked`` (``batch`` groups of ``m``
  valid rows; ``expected_m`` = ``m``, as DeepGEMM's tests/test_core.py times them).

DeepGEMM's structure, as priced here (sources in ``deepgemm_config`` and ``deepgemm_work``):

1. Block choice (``best_config``, the JIT host heuristic ``get_best_configs``): BLOCK_M = 64
   when M <= 64, else 128 (contiguous: always 128); BLOCK_N in 16, 24, ..., 128, picked for
   the fewest waves over the SMs, then the fullest last wave, then (ties) the smaller
   BLOCK_N; the pipeline depth is the most stages (8..4, or 6..4 when 128 % BLOCK_N != 0)
   whose shared memory fits 232,448 bytes; TMA multicast of A over a 2-CTA cluster when
   M >= 1024, N % (2 BLOCK_N) == 0 and there is one group.
2. Persistent scheduling (``scheduler.cuh``): ``num_sms`` CTAs walk the blocks round-robin
   (block ``iter * gridDim.x + blockIdx.x``), so the kernel runs ``ceil(blocks / SMs)`` waves
   of whole blocks; a masked group contributes only ``ceil(masked_m / BLOCK_M)`` M-blocks.
   Every block computes its full BLOCK_M x BLOCK_N tile (the N tail and the rows past M
   are executed work).
3. Per 128-deep K block a math warpgroup issues its WGMMAs, waits for them
   (``warpgroup_wait<0>``) and promotes the FP32 accumulators on the CUDA cores with the
   scale product (``final_accum += scale_a * scale_b * accum``; fp8_gemm.cuh). BLOCK_M = 128
   has two math warpgroups, so one's promotion overlaps the other's WGMMAs; BLOCK_M = 64
   has one, and its promotion (64 x BLOCK_N FFMAs on the SM's FP32 lanes) adds to the K
   block's tensor time.
4. Operand feed: a CTA loads (BLOCK_M + BLOCK_N) x 128 FP8 bytes per K block through L2
   (A halved with multicast); the K block lasts at least as long as the SM's share of L2
   bandwidth takes to deliver them (the generic path's bound, with DeepGEMM's tiles).

HBM traffic (A once, B once per group, the BF16 output) and the epilogue's output store
after the main loop are the generic roofline's terms.

* ``xla-sm90`` — an XLA GPU ``dot`` as XLA's sm_90 matmul perf table times it: the generic
  path plus the measured per-dot floor of that table's tool (sim/cost/gemm_xla.py).
* ``torch-grouped-sm90`` — PyTorch's CUTLASS sm90 grouped GEMM (``torch._grouped_mm`` BF16,
  ``torch._scaled_grouped_mm`` FP8): its tile and cluster per dtype and shape, each group's
  M-blocks rounded up to the cluster, a persistent grid (sim/cost/gemm_torch.py); it and
  the TensorRT-LLM kernels below read ``GemmShape.group_rows``.
* ``trtllm-moe-fc1`` / ``trtllm-moe-fc2`` — TensorRT-LLM's MoE plugin GEMMs (sm80: the fused
  gated FC1 kernel and CUTLASS 2.x grouped FC2; sm90: the ptr-array TMA warp-specialised
  kernel with the tokens on its N tile): the candidate tiles and stage counts of the plugin's
  host code, the cheapest taken (sim/cost/gemm_trtllm.py). Named only by the serving lowering
  of an engine whose profile sets ``[kernels] moe_gemm = "trtllm"``; not an ``op gemm
  --impl`` choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xpusim.hwprofiles.spec import Device
from xpusim.sim.cost.gemm_cutlass import CUTLASS_IMPLS, cutlass_config, cutlass_work
from xpusim.sim.cost.gemm_pipeline import pipeline_stages
from xpusim.sim.cost.gemm_torch import TORCH_GROUPED_IMPLS, grouped_launch, grouped_work
from xpusim.sim.cost.gemm_trtllm import TRTLLM_MOE_IMPLS, tactic_work, trtllm_tactic
from xpusim.sim.cost.gemm_xla import XLA_IMPLS
from xpusim.sim.ir import GemmShape

DEEPGEMM_IMPLS = ("deepgemm", "deepgemm-contiguous", "deepgemm-masked")
# vLLM's SM100 CUTLASS kernels by their compiled tile/cluster configs: sim/cost/gemm_cutlass.py;
# xla-sm90 (the generic blocks plus XLA's measured per-dot floor): sim/cost/gemm_xla.py;
# PyTorch's sm90 grouped GEMM (per-group tiles, cluster rounding): sim/cost/gemm_torch.py;
# TensorRT-LLM's MoE plugin GEMMs (sm80 fused gated / grouped, sm90 TMA warp-specialised):
# sim/cost/gemm_trtllm.py, named by the serving lowering only (sim/inference/moe_gemm.py)
# Kernels that cut the output blocks their own way:
BLOCK_IMPLS = DEEPGEMM_IMPLS + CUTLASS_IMPLS + TORCH_GROUPED_IMPLS + TRTLLM_MOE_IMPLS
# What ``op gemm --impl`` accepts (the TensorRT-LLM plugin kernels are not offered there).
GEMM_IMPLS = DEEPGEMM_IMPLS + CUTLASS_IMPLS + TORCH_GROUPED_IMPLS + XLA_IMPLS
DEEPGEMM_DTYPES = ("fp8",)  # gemm_fp8_fp8_bf16_nt: FP8 e4m3 inputs, BF16 output
BLOCK_K = 128  # DeepGEMM's fixed K block (and the 1x128 / 128x128 scaling granularity)
BLOCK_NS = tuple(range(16, 129, 8))  # get_best_configs: block_ns = range(16, 129, 8)
CONTIGUOUS_BLOCK_M = 128  # get_m_alignment_for_contiguous_layout()
SM90_SMEM_CAPACITY = 232448  # get_best_configs: sm90_capacity (227 KiB of dynamic smem)


@dataclass(frozen=True)
class DeepGemmConfig:
    """What DeepGEMM's host code launches for one GEMM (``deepgemm_config``)."""

    block_m: int
    block_n: int
    num_stages: int
    multicast: int  # TMA multicast of A over a cluster of this many CTAs (1: none)
    blocks: int  # output blocks the persistent CTAs walk
    sms: int  # persistent CTAs (one per SM)

    @property
    def waves(self) -> int:
        return math.ceil(self.blocks / self.sms)

    @property
    def math_warpgroups(self) -> int:
        """Math warpgroups per CTA: one per 64 rows of BLOCK_M (WGMMA::M = 64)."""
        return self.block_m // 64


def smem_bytes(num_stages: int, k: int, block_m: int, block_n: int) -> int:
    """Shared memory of one CTA (DeepGEMM ``get_smem_size``): the BF16 output tile, per
    stage the A and B tiles and A's scales, B's scales for the whole K (twice when a block
    straddles two 128-column scale blocks), two barriers per stage."""
    scales_b = math.ceil(k / BLOCK_K) * 4 * (1 if BLOCK_K % block_n == 0 else 2)
    return (block_m * block_n * 2
            + num_stages * (block_m * BLOCK_K + block_m * 4 + block_n * BLOCK_K)
            + math.ceil(scales_b / 8) * 8 + num_stages * 16)


def best_config(
    m: int, n: int, k: int, num_groups: int, num_sms: int, contiguous: bool = False,
) -> tuple[int, int, int, int]:
    """(block_m, block_n, num_stages, multicast) as DeepGEMM's ``get_best_configs`` picks them
    (deepseek-ai/DeepGEMM deep_gemm/jit_kernels/gemm.py, initial release; the same code is
    ported verbatim in PaddlePaddle/Paddle python/paddle/incubate/fp8/deep_gemm/jit_kernels/
    gemm.py @ 5a226bdf0f384b649b7ad0252ed86dc95a4b7804)."""
    block_m = CONTIGUOUS_BLOCK_M if contiguous else (64 if m <= 64 else 128)

    def blocks(bn: int) -> int:
        return math.ceil(m / block_m) * math.ceil(n / bn) * num_groups

    def rank(bn: int) -> tuple[int, int, int]:
        # Fewest waves, then the fullest last wave (a full wave counts num_sms), then the
        # smaller block_n (a one-block_m search: the block_m tie-break never applies).
        last = blocks(bn) % num_sms or num_sms
        return (math.ceil(blocks(bn) / num_sms), -last, bn)

    block_n = min(BLOCK_NS, key=rank)
    stages = (8, 7, 6, 5, 4) if 128 % block_n == 0 else (6, 5, 4)
    num_stages = next((s for s in stages if smem_bytes(s, k, block_m, block_n)
                       <= SM90_SMEM_CAPACITY), stages[-1])
    legal = n % (block_n * 2) == 0 and num_sms % 2 == 0  # is_tma_multicast_legal
    multicast = 2 if m >= 1024 and legal and num_groups == 1 else 1
    return block_m, block_n, num_stages, multicast


def deepgemm_config(shape: GemmShape, num_sms: int) -> DeepGemmConfig:
    """The launch of ``shape`` by its DeepGEMM kernel (``shape.impl``) on ``num_sms`` SMs.

    ``deepgemm``: ``get_best_configs(m, n, k, 1, num_sms)``; ``batch`` > 1 is run as that many
    launches' worth of blocks (the rows' grouped kernels name their layout instead).
    ``deepgemm-contiguous``: ``get_best_configs(m_sum, n, k, 1, num_sms, contiguous)`` over the
    concatenated groups, each group's ``m`` rows padded to 128 (m_grouped_gemm.py; the
    PaddlePaddle port m_grouped_gemm.py @ 01fbd77c319d09de4211282672149f2d8e0b18ac).
    ``deepgemm-masked``: ``get_best_configs(expected_m, n, k, num_groups, num_sms)`` with
    expected_m = ``m``; the scheduler visits ``ceil(m / block_m)`` M-blocks of each group
    (deep_gemm/include/deep_gemm/scheduler.cuh @ 261fff9c48d6904d1f98ee3e864dcb857265de83,
    ``GemmType::GroupedMasked``)."""
    m, n, k, groups = (max(1, math.ceil(v)) for v in (shape.m, shape.n, shape.k, shape.batch))
    if shape.impl == "deepgemm-contiguous":
        m_sum = groups * math.ceil(m / CONTIGUOUS_BLOCK_M) * CONTIGUOUS_BLOCK_M
        bm, bn, stages, multicast = best_config(m_sum, n, k, 1, num_sms, contiguous=True)
        blocks = (m_sum // bm) * math.ceil(n / bn)
    else:
        config_groups = groups if shape.impl == "deepgemm-masked" else 1
        bm, bn, stages, multicast = best_config(m, n, k, config_groups, num_sms)
        blocks = groups * math.ceil(m / bm) * math.ceil(n / bn)
    return DeepGemmConfig(bm, bn, stages, multicast, blocks, num_sms)


def promotion_flops_per_element(device: Device, dtype: str) -> float:
    """Tensor-core FLOPs (at peak x ``matrix_max``) that one accumulator's promotion FFMA costs
    when it cannot overlap the WGMMAs (one math warpgroup): the SM's FP32 lanes run
    ``fp32 peak / 2`` FMAs per second (the profile's ``[vector] fp32``)."""
    fma_rate = device.peak_for("vector", "fp32") / 2.0
    return device.peak_for("matrix", dtype) * device.efficiency.matrix_max_for(dtype) / fma_rate


def deepgemm_work(
    shape: GemmShape, device: Device, dtype: str, flops_per_element: float,
) -> tuple[float, float]:
    """(cost in tensor FLOPs, executed FLOPs) of ``shape`` under its DeepGEMM kernel.

    Per 128-deep K block each CTA costs the larger of its WGMMA work ``2 bm bn 128`` (plus,
    with one math warpgroup, the serialised promotion of its ``bm x bn`` accumulators) and
    its operand feed, ``flops_per_element`` x the elements it loads through L2 (A halved
    under multicast); every SM of every wave counts a whole block, as the generic
    ``block_work`` counts them."""
    cfg = deepgemm_config(shape, device.matrix_cores)
    k_blocks = math.ceil(max(shape.k, 1) / BLOCK_K)
    mma = 2.0 * cfg.block_m * cfg.block_n * BLOCK_K
    serial = mma
    if cfg.math_warpgroups == 1:
        serial += promotion_flops_per_element(device, dtype) * cfg.block_m * cfg.block_n
    loads = (cfg.block_m / cfg.multicast + cfg.block_n) * BLOCK_K
    per_block = max(serial, flops_per_element * loads)
    slots = cfg.waves * cfg.sms * k_blocks
    return slots * per_block, slots * mma


def impl_work(
    shape: GemmShape, device: Device, dtype: str, flops_per_element: float,
) -> tuple[float, float]:
    """(cost in tensor FLOPs, executed FLOPs) of ``shape`` under the kernel ``shape.impl``
    names: DeepGEMM's (``deepgemm_work``), a vLLM CUTLASS config (``cutlass_work``),
    PyTorch's sm90 grouped kernel (``grouped_work``) or a TensorRT-LLM MoE plugin config
    (``gemm_trtllm.tactic_work``)."""
    if shape.impl in CUTLASS_IMPLS:
        return cutlass_work(shape, device, flops_per_element)
    if shape.impl in TORCH_GROUPED_IMPLS:
        return grouped_work(shape, device, dtype, flops_per_element)
    if shape.impl in TRTLLM_MOE_IMPLS:
        tactic = trtllm_tactic(shape, device, dtype)
        return tactic_work(shape, tactic, device.matrix_cores, flops_per_element)
    return deepgemm_work(shape, device, dtype, flops_per_element)


def impl_stages(shape: GemmShape, device: Device, dtype: str, smem: float) -> int:
    """Shared-memory stages of the main loop of the kernel ``shape.impl`` names (the depth
    ``gemm_pipeline`` prices; ``smem``: the SM's shared memory in bytes). DeepGEMM states its
    own (``best_config``'s ``num_stages``); the CUTLASS kernels keep as many
    ``(rows + columns) x 128``-byte stages of their tile as ``smem`` holds
    (``StageCountAutoCarveout``), a 2-SM MMA holding its half of B's columns on each SM
    (CUTLASS SM100 2-SM UMMA: each SM of the pair loads half of the N tile)."""
    if shape.impl in CUTLASS_IMPLS:
        cfg = cutlass_config(shape.impl)
        rows, cols = cfg.sm_tile
        return pipeline_stages(rows, cols // 2 if cfg.two_sm else cols, smem)
    if shape.impl in TORCH_GROUPED_IMPLS:
        tile = grouped_launch(shape, dtype, device.matrix_cores).config
        return pipeline_stages(tile.tile_m, tile.tile_n, smem)
    if shape.impl in TRTLLM_MOE_IMPLS:  # the plugin config's own stage count
        return trtllm_tactic(shape, device, dtype).stages
    return deepgemm_config(shape, device.matrix_cores).num_stages


__all__ = [
    "BLOCK_NS",
    "DEEPGEMM_DTYPES",
    "BLOCK_IMPLS",
    "DEEPGEMM_IMPLS",
    "DeepGemmConfig",
    "GEMM_IMPLS",
    "best_config",
    "deepgemm_config",
    "deepgemm_work",
    "impl_stages",
    "impl_work",
    "promotion_flops_per_element",
    "smem_bytes",
]
