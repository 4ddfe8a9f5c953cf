"""TensorRT-LLM's MoE plugin GEMMs priced by their kernels' structure (docs/inference_notes.md,
"TensorRT-LLM Mixtral rows"; docs/cost_model.md, "GEMM by implementation").

The MoE plugin (``CutlassMoeFCRunner``) runs the routed experts as two grouped GEMMs: FC1 (the
gate and up projections, ``trtllm-moe-fc1``) and FC2 (the down projection,
``trtllm-moe-fc2``). The serving lowering names these impls on the routed-expert GEMMs of an
engine whose profile sets ``[kernels] moe_gemm = "trtllm"`` (sim/inference/moe_gemm.py; no
shipped profile does, see there). Which kernel runs, from the host code (NVIDIA/TensorRT-LLM):

* **sm80 (A100), FP16/BF16.** Candidate tiles: ``get_candidate_tiles``'s default list
  32x128x64, 64x128x64, 128x128x64 (``cutlass_heuristic.cpp`` @
  0b53e94719f4bd566e9c75a7df32639a306dfec6, ``base_configs``: not weight-only, not FP8), each
  with 2..4 stages (``get_candidate_configs``: ``max_stages = sm >= 80 ? 4 : 2``); a config
  whose shared memory does not fit reports occupancy 0 and is skipped.
  FC1 with a gated activation runs the fused gated kernel (``isFusedGatedActivation``:
  gated, same input and weight type, not FP32/FP8, sm >= 80, K and N multiples of 64;
  ``moe_gemm_template_dispatch.h`` @ 000a01de66f0eab4ab05640711f0253f50f5209c):
  ``Fused_Moe_Kernel_traits_sm80`` (``fused_moe_kernel_traits.cuh`` @
  be9cd719f7d3149a5267c854284d83f717da0771) computes a TileM x TileN block of *both* halves,
  gate and up, so as the lowering counts FC1's columns (gate + up) its tile is
  TileM x 2 TileN; its shared memory is A (TileM x TileK x Stages), two B tiles
  (TileN x TileK x Stages each) and the output tile (TileM x TileN), all 16-bit
  (``SharedStorageGate``); 4 warps per CTA (``kWarpsCount``), at most 2 CTAs per SM
  (``fused_moe_gemm_launcher_sm80.inl`` @ 08f1ea313edf02e6a7c965e4e434bb072bfc024b,
  ``occupancy = min(2, ...)``), ``sm_count x occupancy`` persistent CTAs.
  FC2 (and a non-gated FC1) runs CUTLASS 2.x's grouped GEMM (``MoeFCGemm`` over
  ``DefaultGemmGrouped``, ``GroupScheduleMode::kDeviceOnly``): shared memory Stages x
  (TileM + TileN) x TileK 16-bit elements (the CUTLASS 2.x multistage main loop; its
  epilogue storage is a union with it).
  A config fits when its shared memory is below the per-block opt-in limit
  (``smem_size + attr.sharedSizeBytes >= max_smem_per_block`` gives occupancy 0):
  the SM's shared memory less the 1 KiB CUDA reserves per block (CUDA C++ Programming
  Guide, technical specifications per compute capability: 164 KB per SM, 163 KB per block
  on 8.0; 228 / 227 KB on 9.0).
* **sm90 (H100/H200).** The grouped GEMM is CUTLASS 3's ptr-array TMA warp-specialised
  cooperative kernel (``moe_gemm_launcher_sm90.inl`` @ 2a115dae84f13daaa54727534daa837c534eceb4:
  ``KernelPtrArrayTmaWarpSpecializedCooperative[FP8FastAccum]``, epilogue
  ``PtrArrayNoSmemWarpSpecialized``, ``StageCountAutoCarveout``), with A and B swapped
  ("A & B swapped here"): the problem is ``(gemm_n, tokens, gemm_k)`` per expert ("M and N
  transposed since we are using the #tokens as the N dimension", moe_kernels.cu
  ``computeStridesHopperKernel``), so the kernel's M tile runs over the weight's output
  features and its N tile over the expert's tokens. Candidates (``get_candidate_tiles_sm90``,
  GROUPED_GEMM branch, cutlass_heuristic.cpp @ 0b53e947): kernel tiles 128x16, 128x32,
  128x64, 128x128, 128x256, 256x128 (x 128 bytes of K), clusters 1x1, 2x1 (every tile:
  M >= 128), 1x2 and 2x2 (N >= 128 tiles only: ``sm90_supports_mcast_along_n``). No fused
  activation on this path (``HopperGroupedGemmInfo``: "Hopper Grouped GEMM specialisation
  doesn't support fused activation"): SwiGLU is a separate pass, as the lowering prices it.
  Depth: as many ``(rows + columns) x 128``-byte stages as shared memory holds
  (``gemm_pipeline.pipeline_stages``; the no-smem epilogue carves out nothing); the
  persistent group scheduler and its cluster rounding as PyTorch's sm90 grouped kernel
  (sim/cost/gemm_torch.py, the same CUTLASS scheduler).

Which candidate runs: the plugin's profiler times every candidate and keeps the fastest
(``MixtureOfExpertsGemmProfiler``). Here the candidate with the fewest cost FLOPs (waves x
tiles x K blocks, each K block the larger of its MMAs and its operand feed) is taken, ties
to the deeper pipeline: the main-loop depth is priced afterwards by the roofline
(``gemm_pipeline``) and does not enter the choice. ASSUMPTION: the choice of the profiler
and of this count agree; no source times the candidates.

Not expressed: the fused kernel's 4 warps per CTA and 1 CTA per SM at TileM 128 (its
shared memory, 128 KiB, leaves no room for a second), which bound how well the tensor cores
are fed (an efficiency, not a structure the roofline counts), and the fused FC1 writing
only the activated half (the lowering keeps the separate SwiGLU pass: a what-if that drops
that pass and half of FC1's output write moves the A100 Mixtral rows 1.5-2 points more
optimistic, docs/inference_notes.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xpusim.hwprofiles.spec import Device
from xpusim.sim.cost.gemm_pipeline import STAGE_ROW_BYTES, pipeline_stages
from xpusim.sim.cost.gemm_torch import group_rows_of, max_cta_occupancy
from xpusim.sim.cost.operand_feed import feed_flops_per_element
from xpusim.sim.ir import GemmShape

TRTLLM_FC1 = "trtllm-moe-fc1"  # gate + up projection of the routed experts (gated)
TRTLLM_FC2 = "trtllm-moe-fc2"  # down projection of the routed experts
TRTLLM_MOE_IMPLS = (TRTLLM_FC1, TRTLLM_FC2)
SM80_TILES = ((32, 128), (64, 128), (128, 128))  # get_candidate_tiles base_configs (sm >= 75)
SM80_TILE_K = 64  # every sm80 base config is ...x64
SM80_STAGES = (2, 3, 4)  # get_candidate_configs: min_stages 2, max_stages 4 (sm >= 80)
# get_candidate_tiles_sm90, GROUPED_GEMM: kernel (M over features, N over tokens) tiles.
SM90_TILES = ((128, 16), (128, 32), (128, 64), (128, 128), (128, 256), (256, 128))
SMEM_RESERVED_PER_BLOCK = 1024  # CUDA: 1 KB of shared memory reserved per block (cc >= 8.0)
HALF_BYTES = 2  # the sm80 kernels run FP16/BF16 operands


@dataclass(frozen=True)
class MoeTactic:
    """One config of the plugin's grouped GEMM, in the lowering's coordinates: ``tile_m``
    rows (tokens) by ``tile_n`` output columns (for the fused gated FC1: gate and up
    together, twice the kernel's TileN), ``stages`` shared-memory stages."""

    kernel: str  # "sm80-fused-gated" | "sm80-grouped" | "sm90-tma-ws"
    tile_m: int
    tile_n: int
    tile_k: int
    stages: int
    cluster_m: int = 1  # CTAs of a cluster along the tokens (sm90 only)
    cluster_n: int = 1  # CTAs of a cluster along the output columns (sm90 only)


def trtllm_moe_covers(device: Device, dtype: str) -> bool:
    """Whether the kernels sourced here run ``dtype`` experts on ``device``: FP16/BF16 on
    sm80 (compute capability 8.0), FP8/FP16/BF16 on sm90 (9.0). Other devices (sm89's FP8
    grouped configs, Blackwell) keep the generic GEMM path."""
    if device.arch != "nvidia":
        return False
    cc = device.kernels.compute_capability or ""
    if cc == "8.0":
        return dtype in ("fp16", "bf16")
    return cc == "9.0" and dtype in ("fp8", "fp16", "bf16")


def smem_limit(smem_bytes: float) -> float:
    """Bytes one CTA may use: the SM's shared memory less CUDA's per-block reserve."""
    return smem_bytes - SMEM_RESERVED_PER_BLOCK


def fused_gated_smem(tile_m: int, tile_n: int, stages: int) -> int:
    """``sizeof(SharedStorageGate)`` of the sm80 fused gated kernel, 16-bit: A and the gate
    and up B tiles per stage, plus the TileM x TileN output tile (kernel TileN: one half)."""
    k = SM80_TILE_K
    return HALF_BYTES * (stages * (tile_m * k + 2 * tile_n * k) + tile_m * tile_n)


def grouped_sm80_smem(tile_m: int, tile_n: int, stages: int) -> int:
    """Shared memory of CUTLASS 2.x's multistage grouped GEMM, 16-bit: A and B per stage."""
    return HALF_BYTES * stages * (tile_m + tile_n) * SM80_TILE_K


def fused_gated_ok(shape: GemmShape, dtype: str) -> bool:
    """``supportsFusedGatedActivation``: 16-bit, K and the kernel's N (one half of FC1's
    columns) multiples of 64."""
    half_n = math.ceil(shape.n) // 2
    return (dtype in ("fp16", "bf16") and math.ceil(shape.k) % 64 == 0
            and math.ceil(shape.n) % 2 == 0 and half_n % 64 == 0)


def sm80_candidates(shape: GemmShape, dtype: str, limit: float) -> list[MoeTactic]:
    """The sm80 configs that fit ``limit`` bytes of shared memory, each tile at its deepest
    fitting stage count (a shallower one of the same tile has the same blocks)."""
    fused = shape.impl == TRTLLM_FC1 and fused_gated_ok(shape, dtype)
    out = []
    for tm, tn in SM80_TILES:
        if fused:
            fits = [s for s in SM80_STAGES if fused_gated_smem(tm, tn, s) < limit]
            if fits:
                out.append(MoeTactic("sm80-fused-gated", tm, 2 * tn, SM80_TILE_K, max(fits)))
        else:
            fits = [s for s in SM80_STAGES if grouped_sm80_smem(tm, tn, s) < limit]
            if fits:
                out.append(MoeTactic("sm80-grouped", tm, tn, SM80_TILE_K, max(fits)))
    return out


def sm90_candidates(dtype: str, smem: float) -> list[MoeTactic]:
    """The sm90 TMA warp-specialised configs, swapped into the lowering's coordinates
    (kernel N over tokens -> ``tile_m``; kernel M over features -> ``tile_n``)."""
    tile_k = STAGE_ROW_BYTES // (1 if dtype == "fp8" else HALF_BYTES)
    out = []
    for kernel_m, kernel_n in SM90_TILES:
        stages = pipeline_stages(kernel_n, kernel_m, smem)
        clusters = [(1, 1), (2, 1)]  # (kernel cluster M, N): M mcast for every M >= 128 tile
        if kernel_n >= 128:  # sm90_supports_mcast_along_n
            clusters += [(1, 2), (2, 2)]
        for cm_kernel, cn_kernel in clusters:
            out.append(MoeTactic("sm90-tma-ws", kernel_n, kernel_m, tile_k, stages,
                                 cluster_m=cn_kernel, cluster_n=cm_kernel))
    return out


def tactic_work(
    shape: GemmShape, tactic: MoeTactic, num_sms: int, flops_per_element: float,
) -> tuple[float, float]:
    """(cost in tensor FLOPs, executed FLOPs) of ``shape`` under ``tactic``: per group
    ``round_up(ceil(M_g / tile_m), cluster_m)`` row blocks, ``round_up(ceil(N / tile_n),
    cluster_n)`` column blocks; the persistent CTAs (sm90: ``max_cta_occupancy``; sm80: one
    slot per SM) walk them in ``ceil(tiles / slots)`` rounds; a K block costs the larger of
    its MMAs and ``flops_per_element`` x its (multicast) operand loads."""
    rows = group_rows_of(shape)
    n, k = max(1, math.ceil(shape.n)), max(1, math.ceil(shape.k))
    cm, cn = tactic.cluster_m, tactic.cluster_n
    m_blocks = sum(-(-math.ceil(r / tactic.tile_m) // cm) * cm for r in rows)
    n_blocks = -(-math.ceil(n / tactic.tile_n) // cn) * cn
    slots = max(1, max_cta_occupancy(cm * cn, num_sms)) if tactic.kernel == "sm90-tma-ws" \
        else num_sms
    rounds = math.ceil(m_blocks * n_blocks / slots)
    k_blocks = math.ceil(k / tactic.tile_k)
    mma = 2.0 * tactic.tile_m * tactic.tile_n * tactic.tile_k
    loads = (tactic.tile_m / cn + tactic.tile_n / cm) * tactic.tile_k
    per_block = max(mma, flops_per_element * loads)
    count = rounds * num_sms * k_blocks
    return count * per_block, count * mma


def trtllm_tactic(shape: GemmShape, device: Device, dtype: str) -> MoeTactic:
    """The config the plugin runs ``shape`` with on ``device`` (module docstring): the
    candidate of fewest cost FLOPs, ties to the deeper pipeline. sm90 (compute capability
    9.x) takes the TMA warp-specialised list, any other NVIDIA device the sm80 list."""
    level = device.level("smem")
    smem = level.capacity_bytes if level is not None else 0.0
    flops_per_element = feed_flops_per_element(device, dtype)
    cc = device.kernels.compute_capability or ""
    if cc.startswith("9."):
        candidates = sm90_candidates(dtype, smem)
    else:
        candidates = sm80_candidates(shape, dtype, smem_limit(smem))
    if not candidates:  # nothing fits (a device with little shared memory): the smallest tile
        tm, tn = SM80_TILES[0]
        return MoeTactic("sm80-grouped", tm, tn, SM80_TILE_K, SM80_STAGES[0])
    sms = device.matrix_cores

    def rank(t: MoeTactic) -> tuple[float, int]:
        return (tactic_work(shape, t, sms, flops_per_element)[0], -t.stages)

    return min(candidates, key=rank)


__all__ = [
    "SM80_STAGES",
    "SM80_TILES",
    "SM90_TILES",
    "TRTLLM_FC1",
    "TRTLLM_FC2",
    "TRTLLM_MOE_IMPLS",
    "MoeTactic",
    "fused_gated_smem",
    "grouped_sm80_smem",
    "sm80_candidates",
    "sm90_candidates",
    "smem_limit",
    "tactic_work",
    "trtllm_moe_covers",
    "trtllm_tactic",
]
