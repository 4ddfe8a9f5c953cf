"""vLLM's SM100 CUTLASS GEMMs priced by the tile and cluster configs they compile
(docs/cost_model.md, "GEMM by implementation").

vLLM builds each SM100 CUTLASS GEMM from a config: an MMA tile shape (M x N x K), a cluster
shape (cluster_m x cluster_n CTAs) and a per-SM tile. When the MMA tile's M is 256 the MMA is
the 2-SM ``tcgen05`` form: two SMs of a pair each compute 128 rows (vLLM's own
``PerSmTileShape_MNK`` spells it: MmaTileShape 256 x 256 x 256 -> 128 x 256 x 256 per SM).
A cluster covers ``mma_m x cluster_m / 2`` rows (2-SM) or ``mma_m x cluster_m`` (1-SM) and
``mma_n x cluster_n`` columns (sgl-project/sglang pull request #10101 "Optimize nvfp4 block
scaled gemm kernel when M is small", description: "For 2SM strategy, ClusterMmaTileShape is
(MmaTileShapeM * (ClusterShapeM/2), MmaTileShapeN * ClusterShapeN, MmaTileShapeK)"). The
grid is whole clusters, so a GEMM with fewer rows than the cluster covers still runs every
SM of the cluster over the whole K loop: executed work that does not shrink with M.

Implementations (``CUTLASS_IMPLS``):

* ``vllm-cutlass-nvfp4`` — ``cutlass_scaled_fp4_mm`` (csrc/quantization/fp4/
  nvfp4_scaled_mm_kernels.cu) as it stood before vllm-project/vllm pull request #20646
  ("[Kernel] Basic tuned configs for NVFP4 CUTLASS dense GEMM", whose "Before:" table is the
  G32 rows): one ``KernelTraits`` per output type, for 16-bit outputs MmaTileShape
  256 x 256 x 256, ClusterShape 4 x 4 x 1, PerSmTileShape 128 x 256 x 256, for every M
  (the pre-#20646 file as carried by the vLLM forks pshlego/vllm_logits @
  a6e3e97608e8bc4b46b33a69437030b9cb807311 and linzack/vllm @
  7e6ff441a9d960003734bb59e65929818930379e; sglang #10101's description says the same of
  sgl-kernel's copy of this kernel: it "used a uniform performance config for all MNKs ...
  redundant computation when M was small"). One cluster then covers 512 x 1024 outputs on 16 SMs.

The tuned configs that #20646 brought in (vllm-project/vllm @
4159f5ba771cb20944234e8e7931ccf9e4258bfb, ``cutlass_fp4_gemm_dispatch``: 128 x 128 x 256
cluster 1 x 1 for M <= 16, 256 x 128 x 256 cluster 2 x 1 for M <= 256, 256 x 256 x 256
cluster 2 x 1 above) are not added: no validation row times them (docs/cost_model.md).

Pricing (``cutlass_work``), with the generic roofline's device terms:

1. Clusters = ceil(M / cluster rows) x ceil(N / cluster columns) (x batch). Clusters of
   ``cluster_m x cluster_n`` CTAs run ``floor(SMs / cluster size)`` at a time; the kernel
   takes ``ceil(clusters / that)`` waves (CUTLASS's SM100 persistent scheduler hands whole
   cluster tiles out as clusters finish; equal tiles make that wave-like). The CUDA
   programming guide places a cluster's CTAs in one GPC, which can hold fewer clusters of 16
   than ``floor(148 / 16)``; the B200's per-GPC SM count is not sourced here, so that limit
   is not modelled (optimistic, and only where a GEMM runs more than one wave of clusters).
2. Each SM of a wave computes its per-SM tile over ceil(K / mma_k) K blocks, at the SM's
   share of matrix peak x ``matrix_max`` (the device terms): a wave lasts one per-SM tile.
3. Operand feed (the generic bound, off where the profile has no L2 bandwidth): under the
   2-SM MMA each SM of the pair loads its M/2 rows of A and N/2 columns of B per k (NVIDIA
   Tilus ``Tcgen05InstructionGroup.mma``; docs/cost_model.md), under 1-SM its bm + bn. TMA
   multicast across the cluster would cut the L2 reads further; not credited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xpusim.hwprofiles.spec import Device
from xpusim.sim.ir import GemmShape

CUTLASS_IMPLS = ("vllm-cutlass-nvfp4",)
CUTLASS_DTYPES = ("nvfp4",)  # cutlass_scaled_fp4_mm: NVFP4 (e2m1 + e4m3 per-16 scales) inputs


@dataclass(frozen=True)
class CutlassConfig:
    """One compiled vLLM SM100 CUTLASS config: MMA tile and cluster shape."""

    mma_m: int
    mma_n: int
    mma_k: int
    cluster_m: int
    cluster_n: int

    @property
    def two_sm(self) -> bool:
        """MMA tile M = 256: the 2-SM MMA, 128 rows per SM (vLLM PerSmTileShape_MNK)."""
        return self.mma_m == 256

    @property
    def sm_tile(self) -> tuple[int, int]:
        """(rows, columns) of output one SM computes."""
        return (self.mma_m // 2 if self.two_sm else self.mma_m), self.mma_n

    @property
    def cluster_tile(self) -> tuple[int, int]:
        """(rows, columns) one cluster covers (sglang #10101 ClusterMmaTileShape)."""
        rows_per_m = self.mma_m // 2 if self.two_sm else self.mma_m
        return rows_per_m * self.cluster_m, self.mma_n * self.cluster_n

    @property
    def cluster_size(self) -> int:
        return self.cluster_m * self.cluster_n


# Before vLLM #20646: KernelTraits<bfloat16_t> / <half_t>, every M.
NVFP4_UNTUNED = CutlassConfig(256, 256, 256, 4, 4)


def cutlass_device_error(device: Device) -> str | None:
    """Why ``device`` cannot run vLLM's SM100 CUTLASS NVFP4 kernel, or None: it is built for
    sm_100a (``cutlass_scaled_fp4_mm_sm100a``, ``CUTLASS_ARCH_MMA_SM100_SUPPORTED``), i.e. an
    NVIDIA profile with an NVFP4 tensor-core peak, and needs a whole 16-CTA cluster."""
    if device.arch != "nvidia" or "nvfp4" not in device.matrix_peak:
        return (f"{device.name} has no NVFP4 tensor cores; vLLM's cutlass_scaled_fp4_mm "
                "runs on SM100-family Blackwell (b200, gb200, b300)")
    if device.matrix_cores < NVFP4_UNTUNED.cluster_size:
        return f"{device.name} has fewer SMs than one {NVFP4_UNTUNED.cluster_size}-CTA cluster"
    return None


def cutlass_config(impl: str) -> CutlassConfig:
    """The config vLLM's dispatch runs under ``impl`` (the untuned kernel: one for every M)."""
    if impl == "vllm-cutlass-nvfp4":
        return NVFP4_UNTUNED
    raise ValueError(f"not a vLLM CUTLASS GEMM: {impl!r}")


@dataclass(frozen=True)
class CutlassLaunch:
    """Clusters and waves of one GEMM under a config (``cutlass_launch``)."""

    config: CutlassConfig
    clusters: int
    concurrent: int  # clusters resident at once: floor(SMs / cluster size)

    @property
    def waves(self) -> int:
        return math.ceil(self.clusters / self.concurrent)


def cutlass_launch(shape: GemmShape, num_sms: int) -> CutlassLaunch:
    """The grid of ``shape`` under its ``shape.impl`` config on ``num_sms`` SMs."""
    m, n, batch = (max(1, math.ceil(v)) for v in (shape.m, shape.n, shape.batch))
    cfg = cutlass_config(shape.impl)
    rows, cols = cfg.cluster_tile
    clusters = batch * math.ceil(m / rows) * math.ceil(n / cols)
    return CutlassLaunch(cfg, clusters, max(1, num_sms // cfg.cluster_size))


def cutlass_work(
    shape: GemmShape, device: Device, flops_per_element: float,
) -> tuple[float, float]:
    """(cost in tensor FLOPs, executed FLOPs) of ``shape`` under its vLLM CUTLASS config.

    Every SM of every wave counts one per-SM tile over the padded K loop (the convention of
    the generic ``block_work``: time = waves x one SM's tile at its share of the peak); a K
    block costs the larger of its MMA FLOPs and ``flops_per_element`` x the operand
    elements the SM loads."""
    launch = cutlass_launch(shape, device.matrix_cores)
    cfg = launch.config
    bm, bn = cfg.sm_tile
    k_blocks = math.ceil(max(shape.k, 1) / cfg.mma_k)
    mma = 2.0 * bm * bn * cfg.mma_k
    loads = (bm + (bn / 2 if cfg.two_sm else bn)) * cfg.mma_k
    per_block = max(mma, flops_per_element * loads)
    slots = launch.waves * device.matrix_cores * k_blocks
    return slots * per_block, slots * mma


__all__ = [
    "CUTLASS_DTYPES",
    "CUTLASS_IMPLS",
    "CutlassConfig",
    "CutlassLaunch",
    "cutlass_config",
    "cutlass_device_error",
    "cutlass_launch",
    "cutlass_work",
]
