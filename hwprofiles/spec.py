"""Hardware in SI units: the plain data every model in ``sim/`` reads.

These are the loaded, validated, unit-converted forms of the TOML profiles
(``hwprofiles/schema.py`` holds the file format). Everything is frozen so a
what-if study changes a field with ``dataclasses.replace`` and never mutates
a shared profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from xpusim.hwprofiles.errors import ProfileError


@dataclass(frozen=True)
class MemoryLevel:
    """One level of the memory hierarchy.

    ``scope`` is ``device`` (HBM, L2: one per device) or ``per_core`` (L1, L0A/B/C,
    UB, shared memory: one per AI core / SM). ``bandwidth`` is bytes/s for the whole
    device (summed over cores for per-core levels); None where unpublished.
    """

    name: str
    capacity_bytes: float
    bandwidth: float | None
    scope: str = "device"


# 8-bit floating-point formats that run on the FP8 tensor-core path.
FP8_FAMILY = ("fp8", "fp8_e4m3", "fp8_e5m2", "mxfp8", "hif8")
# 4-bit floating-point formats that run on the FP4 tensor-core path (Blackwell).
FP4_FAMILY = ("fp4", "mxfp4", "nvfp4")


@dataclass(frozen=True)
class Efficiency:
    """Parameters of the analytic cost model (``sim/cost/roofline.py``).

    Achieved fraction of peak grows with the work of one op and saturates:
    ``eff(w) = max * w / (w + half)`` — ``half`` is the work at which the unit
    reaches half its maximum efficiency. Calibration replaces these.
    """

    matrix_max: float = 0.85
    # Sustained fraction of the FP8 matrix peak where it differs from the 16-bit one
    # (0 = the same): at twice the MMA rate a GPU meets its power limit and its clock
    # drops below the boost clock the peak is quoted at.
    matrix_max_fp8: float = 0.0
    # The same for the FP4 matrix peak (0 = as matrix_max): twice the FP8 MMA rate again.
    matrix_max_fp4: float = 0.0
    # MXFP8 (1x32 E8M0 block scales) where its GEMMs run slower than per-tensor FP8 ones at
    # the same peak (0 = as matrix_max_fp8): the block-scaled kernels stage the scale
    # factors beside the operands (Blackwell: tcgen05.mma kind::mxf8f6f4 with scale_vec::1X,
    # scales copied into tensor memory), docs/lowprecision.md.
    matrix_max_mxfp8: float = 0.0
    matrix_half_flops: float = 2.0e9
    vector_max: float = 0.7
    vector_half_flops: float = 1.0e7
    memory_max: float = 0.85
    memory_half_bytes: float = 1.0e6
    launch_overhead_s: float = 5.0e-6
    # Output block one core computes per wave for a GEMM (GPU CTA / Ascend cube
    # L0C block); drives wave quantisation.
    core_block_m: int = 128
    core_block_n: int = 128
    # Output block shapes (m, n) the GEMM library may choose among per problem (cuBLAS /
    # CUTLASS heuristics pick the CTA tile that wastes least on wave quantisation).
    # Empty = only (core_block_m, core_block_n), the single fixed block.
    core_blocks: tuple[tuple[int, int], ...] = ()
    # Per-op-kind corrections (calibration fills them; empty = no correction):
    # ``kind_speed[kind]`` divides the roofline body max(compute, memory) of ops of that
    # OpKind (a CPU's conv2d runs through oneDNN, its GEMM through BLAS: one matrix curve
    # cannot fit both); ``kind_overhead_s[kind]`` adds to the launch overhead.
    kind_speed: dict[str, float] = field(default_factory=dict)
    kind_overhead_s: dict[str, float] = field(default_factory=dict)
    # Last-level-cache tier of main memory (calibration sets it; 0 = off): an op whose
    # main-memory traffic is at most ``cache_bytes`` streams at ``cache_speedup`` times
    # the main-memory bandwidth (its data stays in the LLC between ops, e.g. a CPU's L3).
    cache_bytes: float = 0.0
    cache_speedup: float = 1.0
    # A CPU calibrated with it (True; calibrate/fit.py sets it on a CPU): an op's
    # ``Op.first_touch_bytes`` stream at the main-memory rate, never the cache tier's
    # (sim/cost/first_touch.py). False (every GPU / NPU profile, older overlays): off.
    first_touch: bool = False
    # Overlap of an op's compute and memory phases (calibration sets it; 1 = full):
    # body = max(compute, memory) + (1 - overlap) * min(compute, memory). A GPU kernel
    # streams operands while it computes (1); a CPU BLAS call packs its operands, a
    # memory pass, before the compute loop runs (< 1).
    overlap: float = 1.0

    def matrix_max_for(self, dtype: str) -> float:
        """``matrix_max`` for ``dtype``: the MXFP8 / FP8 / FP4 figure where the profile sets one."""
        if self.matrix_max_mxfp8 and dtype == "mxfp8":
            return self.matrix_max_mxfp8
        if self.matrix_max_fp8 and dtype in FP8_FAMILY:
            return self.matrix_max_fp8
        if self.matrix_max_fp4 and dtype in FP4_FAMILY:
            return self.matrix_max_fp4
        return self.matrix_max

    @property
    def block_shapes(self) -> tuple[tuple[int, int], ...]:
        """The GEMM output block shapes to choose from, in order of preference."""
        return self.core_blocks or ((self.core_block_m, self.core_block_n),)


@dataclass(frozen=True)
class KernelTraits:
    """What attention/GEMM kernel implementations can use on this device.

    ``exp_per_clk_per_core``: special-function-unit (MUFU) results per clock per SM
    (``exp2``: the online softmax's one transcendental per score). ``warp_mma_fraction``:
    share of the matrix peak that warp-level ``mma.sync`` can issue (1 on Ampere; on
    Hopper the full rate needs warpgroup ``wgmma``). ``async_mma``: warpgroup MMA + TMA
    exist (Hopper). ``default_attention``: the attention implementation a user's stack
    runs on this device ("" = by architecture, ``xpusim.sim.cost.attention_impl.default_impl``).
    ``l2_bandwidth``: the L2's bandwidth, which fp32 reductions (attention backward's dQ
    accumulation) stream through. ``epilogue_overlap``: GEMM kernels keep more than one
    accumulator stage, so a tile's epilogue (convert + store) runs while the next tile's
    MMAs do (Blackwell: tensor-memory accumulators, CUTLASS SM100 AccumulatorPipeline).
    ``non_tn_fp8_gemm``: per-tensor FP8 GEMMs take operands in any layout (sm_100/sm_103:
    TransformerEngine ``nvte_is_non_tn_fp8_gemm_supported``), so an FP8 cast writes no
    transposed copy (``sim.training.lowprec``); false on Hopper/Ada (TN only).
    ``cast_transpose_fraction``: the share of HBM bandwidth TransformerEngine's per-tensor
    FP8 cast-transpose kernel (``transformer_engine/common/transpose/cast_transpose.cu``,
    TE 1.x and 2.x) reaches, where measured; it replaces ``memory_max`` for casts that
    write a transposed copy (``ElementwiseShape.transpose``). None: ``memory_max``.
    ``compute_capability``: the CUDA compute capability ("9.0" for Hopper), for kernels
    built or measured for one architecture (``--impl xla-sm90``); "" where not stated.
    """

    exp_per_clk_per_core: float = 16.0
    warp_mma_fraction: float = 1.0
    async_mma: bool = False
    default_attention: str = ""
    l2_bandwidth: float | None = None  # bytes/s of the L2 (reductions through L2); None: unpublished
    epilogue_overlap: bool = False
    non_tn_fp8_gemm: bool = False
    cast_transpose_fraction: float | None = None
    compute_capability: str = ""


@dataclass(frozen=True)
class Latency:
    """Load-to-use latencies in core clock cycles (the profile's ``[latency]`` table), as
    pointer-chasing microbenchmarks measure them: ``smem_cycles`` a shared-memory load,
    ``l2_hit_cycles`` a global load that hits L2, ``hbm_cycles`` one that misses to device
    memory. None: no source. Used where a kernel's per-block work waits on a dependent
    chain of such accesses (``sim.cost.attention_latency``)."""

    smem_cycles: float | None = None
    l2_hit_cycles: float | None = None
    hbm_cycles: float | None = None


@dataclass(frozen=True)
class Device:
    """One accelerator (or a host CPU) in SI units.

    ``matrix_peak`` holds the matrix-unit (tensor core / Cube) dense peak per dtype
    in FLOP/s — for Ascend the Cube-only figure; ``marketing_peak`` keeps the
    vendor's headline figure (Ascend's adds the Vector units).
    """

    name: str
    vendor: str
    arch: str  # "davinci" | "nvidia" | "amd" | "cpu"
    description: str
    matrix_peak: dict[str, float]
    vector_peak: dict[str, float]
    marketing_peak: dict[str, float]
    cores: int  # SMs / AI cores / CPU cores
    matrix_cores: int  # Ascend AIC count; SMs on NVIDIA
    vector_cores: int  # Ascend AIV count; SMs on NVIDIA
    clock_hz: float
    hbm_capacity: float  # bytes of main device memory (HBM, GDDR or host DRAM)
    hbm_bandwidth: float  # bytes/s of main device memory
    memory: tuple[MemoryLevel, ...]
    matrix_tile: tuple[int, int, int]  # (m, n, k) of one matrix-unit instruction
    efficiency: Efficiency
    tdp_watts: float | None = None
    quoted_peak: dict[str, float] = field(default_factory=dict)  # MFU denominators only
    calibration: str = ""  # path of the calibration overlay applied, if any
    sources: dict[str, str] = field(default_factory=dict)
    path: str = ""
    kernels: KernelTraits = KernelTraits()
    latency: Latency = Latency()
    # Profile sections whose figures are vendor announcements, not yet measured.
    announced: tuple[str, ...] = ()
    # Bytes per core clock one AI core moves to/from main memory (Ascend: the CANN
    # platform ini's [AICoreMemoryRates] ddr_rate, GetCoreMemBw(HBM)). None: no such cap.
    core_hbm_bytes_per_cycle: float | None = None
    # A CPU's torch intra-op threads the profile prices (1 unless a calibration overlay's
    # provenance records its run's): torch picks a CPU convolution's path by it
    # (sim/cost/conv_path.py). Unused off a CPU.
    threads: int = 1

    @property
    def core_hbm_bandwidth(self) -> float:
        """Bytes/s the AI cores together move to/from main memory: ``cores`` x
        ``core_hbm_bytes_per_cycle`` x clock, the HBM bandwidth CANN's own tiling model
        derives from the platform ini (hicann/ops-nn ``GetHbmBW``: cube_freq x ai_core_cnt x
        ddr_rate); infinite where the profile gives no per-core rate."""
        if self.core_hbm_bytes_per_cycle is None:
            return math.inf
        return self.cores * self.core_hbm_bytes_per_cycle * self.clock_hz

    def main_memory_rate(self, fraction: float) -> float:
        """Bytes/s an op running on the cores streams through main memory: the HBM
        bandwidth x ``fraction`` (the achievable share, ``memory_max``), capped by what the
        cores themselves move (``core_hbm_bandwidth``). docs/cost_model.md, "Memory-bound ops"."""
        return min(self.hbm_bandwidth * fraction, self.core_hbm_bandwidth)

    def level(self, name: str) -> MemoryLevel | None:
        for lvl in self.memory:
            if lvl.name == name:
                return lvl
        return None

    def runs_natively(self, dtype: str, unit: str = "matrix") -> bool:
        """Whether ``unit`` has a published peak for ``dtype`` or for its own family
        (an FP8 encoding on an FP8 unit); False where ``peak_for`` would fall back to a
        different number format (FP8 work on a 910B, FP4 on an H100)."""
        table = self.matrix_peak if unit == "matrix" else self.vector_peak
        if dtype in table:
            return True
        family = {"fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "mxfp8": "fp8", "hif8": "fp8"}
        return family.get(dtype) in table

    def peak_for(self, unit: str, dtype: str) -> float:
        """Peak FLOP/s of ``unit`` ("matrix" or "vector") for ``dtype``.

        Falls back to the closest published dtype (bf16<->fp16, fp32 from fp16/2)
        so every dtype has a defined peak; the fallback is documented in docs/cost_model.md.
        """
        table = self.matrix_peak if unit == "matrix" else self.vector_peak
        if dtype in table:
            return table[dtype]
        if unit == "matrix" and dtype == "fp32" and "tf32" in table and "fp32" in self.vector_peak:
            # A tensor-core GPU has no FP32 matrix path: PyTorch's default
            # (torch.backends.cuda.matmul.allow_tf32 = False since 1.12) runs fp32 matmuls
            # on the CUDA cores; TF32 is its own dtype ("tf32").
            return self.vector_peak["fp32"]
        for alt in _DTYPE_FALLBACK.get(dtype, ()):
            if alt in table:
                return table[alt]
        if dtype == "fp64":
            # Many accelerators (all Ascend, Ada) have no FP64 matrix path: refuse rather
            # than price double precision at an unrelated rate.
            raise ProfileError(
                f"{self.name} publishes no fp64 {unit} peak; fp64 work cannot be priced on it "
                f"(published: {', '.join(sorted(table))})"
            )
        # Any remaining dtype runs at the slowest published rate of the unit.
        return min(table.values())


_DTYPE_FALLBACK = {
    # FP8 encodings and 8-bit block-scaled formats run on the FP8 tensor-core path; a
    # device without a native block-scaled FP4 path dequantises FP4 weights to its FP8
    # (else 16-bit) path, as W4A8/W4A16 kernels do (Marlin, TRT-LLM on Hopper).
    # Without an FP8 unit they take fp8's own chain (before: the unit's slowest rate, FP64
    # on an A100, while plain "fp8" took the INT8 rate).
    "fp8_e4m3": ("fp8", "int8", "bf16", "fp16"),
    "fp8_e5m2": ("fp8", "int8", "bf16", "fp16"),
    "hif8": ("fp8", "int8", "bf16", "fp16"),
    "mxfp8": ("fp8", "int8", "bf16", "fp16"),
    "mxfp6": ("fp8", "int8", "bf16", "fp16"),
    "mxfp4": ("fp4", "fp8", "bf16", "fp16"),
    "nvfp4": ("fp4", "fp8", "bf16", "fp16"),
    "fp4": ("mxfp4", "fp8", "bf16", "fp16"),
    "bf16": ("fp16",),
    "fp16": ("bf16",),
    "fp8": ("int8", "bf16", "fp16"),
    "int8": ("fp8", "bf16", "fp16"),
    # int4 weights run weight-only (W4A16): gpt-fast's ``_weight_int4pack_mm`` (tinygemm)
    # takes bf16 activations and dequantises the weights to bf16 for the tensor cores, as
    # AWQ/GPTQ/Marlin kernels do with fp16; no profile publishes an INT4 tensor rate (W4A4),
    # and before this entry int4 fell to the unit's slowest rate (FP64 on an A100).
    "int4": ("bf16", "fp16"),
    "tf32": ("fp32",),
}


@dataclass(frozen=True)
class Link:
    """A class of point-to-point link: bandwidth per direction (bytes/s) and latency (s)."""

    bandwidth: float
    latency: float


@dataclass(frozen=True)
class CollectiveEfficiency:
    """Fraction of link peak a collective reaches, per link class, and per-step overhead.

    NCCL/HCCL bus bandwidth stays below the link peak (protocol headers,
    chunking, synchronisation); the defaults come from published bus-bandwidth
    measurements cited in each system profile.
    """

    intra_node: float = 0.8
    inter_node: float = 0.9
    step_overhead_s: float = 2.0e-6


@dataclass(frozen=True)
class CollectiveLibrary:
    """The collective library a system runs and what it enables there.

    ``name``: "nccl" prices collectives with NCCL's own tuning model (protocols LL,
    LL128, Simple; ring, tree, NVLS, CollNet; sim/network/protocols.py); "hccl" and
    "generic" keep one protocol whose steps each cost a hop latency plus
    ``step_overhead`` (HCCL publishes no protocol model). ``arch`` selects NCCL's
    per-architecture caps (volta, ampere, hopper, blackwell). ``nvls``: NVLink SHARP
    (multimem in-switch reduction, Hopper NVSwitch and later) and the fraction of
    the port bandwidth it reaches; ``collnet``: in-network reduction (SHARP)
    declared on the inter-node fabric. ``channels``: NCCL's ring/tree channels.
    ``protocols``: the protocols the library may run there (NCCL_PROTO; a cloud's
    network plugin or recommended environment can restrict it, e.g. to Simple).
    """

    name: str = "generic"
    arch: str = "hopper"
    nvls: bool = False
    nvls_efficiency: float = 0.0
    collnet: bool = False
    channels: int = 16
    protocols: tuple[str, ...] = ("LL", "LL128", "Simple")


@dataclass(frozen=True)
class PcieTree:
    """How the GPUs of a PCIe server (no NVLink) hang off switches and CPU sockets, and
    which NCCL transport each pair of GPUs gets (sim/network/pcie.py).

    ``devices_per_switch``: GPUs under one PCIe switch (1: every GPU on its own CPU root
    port). ``sockets``: CPU sockets, the devices split evenly over them in order.
    ``p2p``: the driver offers CUDA P2P between the GPUs (GeForce cards: no).
    ``p2p_level``: NCCL's NCCL_P2P_LEVEL cutoff (PIX, PXB, PHB or SYS): pairs further
    apart use the SHM transport through host memory. ``cross_socket_p2p``: a P2P flow
    across the socket link / one inside a socket. ``shm_efficiency``: what one GPU
    receives through SHM, as a fraction of its PCIe link peak.
    """

    devices_per_switch: int
    sockets: int
    p2p: bool
    p2p_level: str
    cross_socket_p2p: float
    shm_efficiency: float


@dataclass(frozen=True)
class System:
    """A server (node) of identical devices, and how many of them form the cluster.

    intra_topology: "full_mesh" (HCCS: every device has a direct link to every other),
    "switch" (NVLink through NVSwitch, UB switch: each device has one aggregate port),
    "pcie" (through PCIe switches / host). ``intra_link`` is one link in full mesh,
    the device's aggregate port otherwise.
    inter_topology: "rail_optimized" (NIC i of every node on leaf/rail i), "fat_tree", or
    "supernode" (the whole cluster on one switched fabric, CloudMatrix-style).
    """

    name: str
    description: str
    device: Device
    devices_per_node: int
    intra_topology: str
    intra_link: Link
    links_per_device: int
    nics_per_node: int
    nic: Link
    inter_topology: str
    oversubscription: float
    nodes: int = 1
    dies_per_package: int = 1
    die_to_die: Link | None = None
    collective_efficiency: CollectiveEfficiency = CollectiveEfficiency()
    collective_library: CollectiveLibrary = CollectiveLibrary()
    pcie_tree: PcieTree | None = None
    # The device's link to host memory, one direction, per device with all copying at
    # once (activation offload's D2H/H2D copies, sim/training/offload.py); None: unpublished.
    host_link: Link | None = None
    sources: dict[str, str] = field(default_factory=dict)
    path: str = ""
    # Profile sections whose figures are vendor announcements, not yet measured.
    announced: tuple[str, ...] = ()

    @property
    def num_devices(self) -> int:
        return self.nodes * self.devices_per_node
