"""PyTorch's CUTLASS sm90 grouped GEMMs priced as their kernels cut the work
(``--impl torch-grouped-sm90``; docs/cost_model.md, "MoE expert GEMMs: PyTorch's sm90 grouped
kernel").

``torch._grouped_mm`` (BF16) and ``torch._scaled_grouped_mm`` (FP8 e4m3, rowwise scales) run one
CUTLASS 3 ptr-array grouped GEMM over all groups on Hopper. Which one, from the host code:

* BF16: pytorch/pytorch aten/src/ATen/native/cuda/GroupMM.cu @
  06c0cf0112c2cf4759382fda2171e826207e139c, ``dispatch_bf16_grouped_kernel_on_tile_size``:
  ``M`` is the mean group (``M = M / group_count`` for a 2-D A with offsets), ``small = (M <= 128
  || N <= 128)``; on sm90 small runs tile 64 x 128 x 128 ping-pong, otherwise 128 x 256 x 64
  cooperative; ``ClusterShape = Shape<_2, _1, _1>`` for both.
* FP8: pytorch/pytorch aten/src/ATen/native/cuda/ScaledGroupMM.cu @
  017943b70f6920c395e3b6dac100e2cd7ecfa92a, ``dispatch_fp8_grouped_gemm_on_tile_size``:
  ``ClusterShape = Shape<_2, _2, _1>``; small (as above) 64 x 128 x 128 ping-pong; ``large``
  (two of M, N, K >= 2048, M counted only with N or K) 256 x 128 x 128 with fast accumulation,
  128 x 128 x 128 without ("use smaller tile for slow accum to avoid spilling"); else
  128 x 256 x 64. ``use_fast_accum`` defaults to False (the op's schema; PyTorch's
  ``meta_scaled_grouped_mm``), which is what is priced: callers that pass True are not modelled.

How the kernel walks the work (NVIDIA/cutlass @ 0046e366c97636a787225cfc4078f221c26bf8ae):

1. Tiles: ``PersistentTileSchedulerSm90Group`` (include/cutlass/gemm/kernel/
   sm90_tile_scheduler_group.hpp, ``get_work_idx_m_and_n``) gives each group
   ``round_up(ceil(M_g / tile_m), cluster_m) x round_up(ceil(N / tile_n), cluster_n)`` tiles and
   returns every one of them as valid work; the cooperative kernel
   (sm90_gemm_array_tma_warpspecialized_cooperative.hpp) runs the whole K loop
   (``get_work_k_tile_count``: ``ceil(K / tile_k)``) for each, so a cluster's padding tile costs
   as much as a real one.
2. Grid: PyTorch passes the problem sizes on the device only (``{group_count, problem_sizes,
   nullptr}``), so the scheduler sizes a persistent grid from ``hw_info.sm_count``
   (``PersistentTileSchedulerSm90GroupParams::get_grid_shape``, include/cutlass/gemm/kernel/
   tile_scheduler_params.h): ``get_max_cta_occupancy(18, cluster, sm_count)`` CTAs, i.e. per
   assumed 18-SM GPC the largest multiple of the cluster size (132 SMs: 132 CTAs for 2 x 1,
   116 for 2 x 2). Each CTA takes tiles ``linear_idx += grid``: ``ceil(tiles / CTAs)`` rounds.
3. Per K block each tile costs the larger of its MMA FLOPs and the operand feed: TMA multicast
   over the cluster loads A once per cluster row and B once per cluster column, so a CTA reads
   ``tile_m / cluster_n + tile_n / cluster_m`` operand elements per k (the generic path's
   bound with the kernel's tiles). Every SM of every round counts a whole tile (the generic
   ``block_work`` convention); memory and the epilogue store are the generic roofline's terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xpusim.hwprofiles.spec import Device
from xpusim.sim.ir import GemmShape

TORCH_GROUPED_IMPLS = ("torch-grouped-sm90",)
TORCH_GROUPED_DTYPES = ("bf16", "fp8")  # _grouped_mm: BF16; _scaled_grouped_mm: FP8 e4m3
TORCH_SM90_CAPABILITY = "9.0"  # the sm90 branch of both dispatches (sm100 runs other configs)
MAX_GROUPS = 1023  # GroupMM.cu / ScaledGroupMM.cu: TORCH_CHECK(group_count < 1024)
MAX_SM_PER_GPC = 18  # tile_scheduler_params.h get_grid_shape: GH100, 9 TPCs x 2 SMs per GPC


@dataclass(frozen=True)
class GroupedConfig:
    """One compiled config of PyTorch's sm90 grouped GEMM: CTA tile and cluster shape."""

    tile_m: int
    tile_n: int
    tile_k: int
    cluster_m: int
    cluster_n: int
    pingpong: bool  # KernelPtrArrayTmaWarpSpecializedPingpong (else Cooperative)


def grouped_config(dtype: str, m: int, n: int, k: int) -> GroupedConfig:
    """The config PyTorch's sm90 dispatch runs for ``dtype`` at mean group rows ``m`` (its
    ``M / group_count``), ``n`` and ``k`` (module docstring: GroupMM.cu, ScaledGroupMM.cu)."""
    small = m <= 128 or n <= 128
    if dtype != "fp8":  # _grouped_mm (BF16)
        return (GroupedConfig(64, 128, 128, 2, 1, True) if small
                else GroupedConfig(128, 256, 64, 2, 1, False))
    if small:
        return GroupedConfig(64, 128, 128, 2, 2, True)
    large = (m >= 2048 and k >= 2048) or (m >= 2048 and n >= 2048) or (k >= 2048 and n >= 2048)
    if large:  # use_fast_accum = False: the 128 x 128 x 128 tile
        return GroupedConfig(128, 128, 128, 2, 2, False)
    return GroupedConfig(128, 256, 64, 2, 2, False)


def max_cta_occupancy(cluster_size: int, sm_count: int) -> int:
    """CUTLASS ``get_max_cta_occupancy(18, cluster, sm_count)`` (tile_scheduler_params.h): the
    CTAs a persistent grid of ``cluster_size``-CTA clusters launches on ``sm_count`` SMs."""
    per_gpc = MAX_SM_PER_GPC - MAX_SM_PER_GPC % cluster_size
    if sm_count < MAX_SM_PER_GPC:
        ctas = per_gpc
    else:
        residual = sm_count % MAX_SM_PER_GPC
        ctas = (sm_count // MAX_SM_PER_GPC) * per_gpc + residual - residual % cluster_size
    return min(ctas, sm_count)


def group_rows_of(shape: GemmShape) -> tuple[int, ...]:
    """Rows of each group: ``shape.group_rows``, or ``batch`` equal groups of ``m``."""
    if shape.group_rows:
        return shape.group_rows
    return (max(0, math.ceil(shape.m)),) * max(1, math.ceil(shape.batch))


@dataclass(frozen=True)
class GroupedLaunch:
    """Tiles and persistent CTAs of one grouped GEMM (``grouped_launch``)."""

    config: GroupedConfig
    m_blocks: int  # sum over groups of the cluster-rounded M-blocks
    n_blocks: int  # cluster-rounded N-blocks of every group
    ctas: int  # persistent grid (max_cta_occupancy)

    @property
    def tiles(self) -> int:
        return self.m_blocks * self.n_blocks

    @property
    def waves(self) -> int:
        return math.ceil(self.tiles / self.ctas)


def grouped_launch(shape: GemmShape, dtype: str, num_sms: int) -> GroupedLaunch:
    """The tiles of ``shape`` under PyTorch's sm90 grouped kernel for ``dtype`` on ``num_sms``
    SMs: per group ``round_up(ceil(M_g / tile_m), cluster_m)`` M-blocks (the scheduler's
    ``problem_blocks_m``), ``round_up(ceil(N / tile_n), cluster_n)`` N-blocks."""
    rows = group_rows_of(shape)
    n, k = max(1, math.ceil(shape.n)), max(1, math.ceil(shape.k))
    cfg = grouped_config(dtype, sum(rows) // len(rows), n, k)
    cm, cn = cfg.cluster_m, cfg.cluster_n
    m_blocks = sum(-(-math.ceil(r / cfg.tile_m) // cm) * cm for r in rows)
    n_blocks = -(-math.ceil(n / cfg.tile_n) // cn) * cn
    return GroupedLaunch(cfg, m_blocks, n_blocks, max(1, max_cta_occupancy(cm * cn, num_sms)))


def grouped_work(
    shape: GemmShape, device: Device, dtype: str, flops_per_element: float,
) -> tuple[float, float]:
    """(cost in tensor FLOPs, executed FLOPs) of ``shape`` under PyTorch's sm90 grouped kernel:
    ``waves`` rounds in which every SM counts one tile over ``ceil(K / tile_k)`` K blocks, a K
    block costing the larger of ``2 tile_m tile_n tile_k`` and ``flops_per_element`` x the
    multicast operand loads ``(tile_m / cluster_n + tile_n / cluster_m) x tile_k``."""
    launch = grouped_launch(shape, dtype, device.matrix_cores)
    cfg = launch.config
    k_blocks = math.ceil(max(shape.k, 1) / cfg.tile_k)
    mma = 2.0 * cfg.tile_m * cfg.tile_n * cfg.tile_k
    loads = (cfg.tile_m / cfg.cluster_n + cfg.tile_n / cfg.cluster_m) * cfg.tile_k
    per_block = max(mma, flops_per_element * loads)
    slots = launch.waves * device.matrix_cores * k_blocks
    return slots * per_block, slots * mma


def torch_grouped_error(device: Device | None, dtype: str, groups: int) -> str | None:
    """Why ``--impl torch-grouped-sm90`` cannot price ``groups`` groups of ``dtype`` on
    ``device`` (None: it can; ``device`` None skips the device check)."""
    impl = TORCH_GROUPED_IMPLS[0]
    if dtype not in TORCH_GROUPED_DTYPES:
        return (f"op gemm --impl {impl}: torch._grouped_mm runs BF16 and "
                f"torch._scaled_grouped_mm FP8; give --dtype {' or '.join(TORCH_GROUPED_DTYPES)}")
    if groups > MAX_GROUPS:
        return (f"op gemm --impl {impl}: {groups} groups; PyTorch's grouped kernel takes at "
                f"most {MAX_GROUPS} (TORCH_CHECK(group_count < 1024))")
    if device is None:
        return None
    cc = device.kernels.compute_capability
    if device.arch != "nvidia" or cc != TORCH_SM90_CAPABILITY:
        return (f"op gemm --impl {impl}: the sm90 kernel runs on Hopper, and {device.name} has "
                f"compute capability {cc or 'not stated'}; give a Hopper profile (one whose "
                f'[kernels] compute_capability = "{TORCH_SM90_CAPABILITY}", e.g. h100-sxm5-80gb)')
    return None


__all__ = [
    "MAX_GROUPS",
    "TORCH_GROUPED_DTYPES",
    "TORCH_GROUPED_IMPLS",
    "GroupedConfig",
    "GroupedLaunch",
    "group_rows_of",
    "grouped_config",
    "grouped_launch",
    "grouped_work",
    "max_cta_occupancy",
    "torch_grouped_error",
]
