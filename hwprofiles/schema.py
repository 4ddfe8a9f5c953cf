"""The TOML file format of hardware profiles, validated with pydantic.

Keys carry their unit (``_tflops`` = 1e12 FLOP/s, ``_gbps`` = GB/s = 1e9 B/s,
``_gbit`` = Gb/s line rate, ``_gib``/``_mib``/``_kib`` binary capacities, ``_us``
microseconds, ``_ghz``). ``to_spec`` converts to the SI dataclasses of
``xpusim.hwprofiles.spec``. Every section has a ``source`` string: a URL or document,
or "estimate: <reasoning>".
"""

from __future__ import annotations

from typing import Any, Literal, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from xpusim.hwprofiles.spec import (
    CollectiveEfficiency,
    CollectiveLibrary,
    Device,
    Efficiency,
    KernelTraits,
    Latency,
    Link,
    MemoryLevel,
    PcieTree,
    System,
)

TERA = 1e12
GIGA = 1e9
KIB, MIB, GIB = 1024, 1024**2, 1024**3
US = 1e-6
DTYPES = (
    "fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4",
    # Low-precision formats (sim/ir.py LOW_PRECISION): FP8 variants and block-scaled
    # formats, peaks as the vendor quotes them for tensor cores that run them natively.
    "fp8_e4m3", "fp8_e5m2", "hif8", "mxfp8", "mxfp6", "fp4", "mxfp4", "nvfp4",
)
# Sections of a profile whose figures can be marked as announced (see ``announced``).
DEVICE_SECTIONS = (
    "matrix", "vector", "cores", "hbm", "levels", "efficiency", "kernels", "latency", "tdp_w",
)
SYSTEM_SECTIONS = ("intra_node", "package", "nic", "inter_node", "collective_efficiency", "size")


def _check_announced(sections: list[str], known: tuple[str, ...]) -> list[str]:
    for name in sections:
        if name not in known:
            raise ValueError(
                f"announced: unknown section '{name}' (expected some of {', '.join(known)})"
            )
    return sections


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads TOML's true as 1.0: `bandwidth_gbps = true` became 1 GB/s.
        A boolean is refused wherever the field (or its table's values) is not one."""
        annotation = cls.model_fields[info.field_name or ""].annotation
        if isinstance(value, dict) and get_origin(annotation) is not dict:
            return value  # a nested section: its own fields are checked
        values = value.values() if isinstance(value, dict) else [value]
        if any(isinstance(v, bool) for v in values) and "bool" not in str(annotation):
            raise ValueError("expected a number or text, not true/false")
        # The other way round: pydantic read `nvls = 0` and `nvls = "yes"` as booleans.
        if annotation in (bool, bool | None) and not isinstance(value, bool | None):
            raise ValueError("expected true or false")
        return value


class PeakTable(_Strict):
    peak_tflops: dict[str, float]
    marketing_tflops: dict[str, float] = Field(default_factory=dict)
    # A peak quoted elsewhere (e.g. in a paper) that results are sometimes normalised by:
    # only ever an alternative MFU denominator, never a model input.
    quoted_tflops: dict[str, float] = Field(default_factory=dict)
    quoted_source: str = ""
    tile: tuple[int, int, int] = (16, 16, 16)
    source: str

    @field_validator("peak_tflops", "marketing_tflops", "quoted_tflops")
    @classmethod
    def _known_positive(cls, table: dict[str, float]) -> dict[str, float]:
        for dtype, value in table.items():
            if dtype not in DTYPES:
                raise ValueError(f"unknown dtype '{dtype}' (expected one of {', '.join(DTYPES)})")
            if value <= 0:
                raise ValueError(f"peak for {dtype} must be > 0 TFLOP/s, got {value}")
        return table


class Cores(_Strict):
    count: int = Field(gt=0, description="SMs / AI cores / CPU cores")
    matrix: int = Field(gt=0, description="cores with a matrix unit (Ascend AIC)")
    vector: int = Field(gt=0, description="cores with a vector unit (Ascend AIV)")
    clock_ghz: float = Field(gt=0)
    hbm_bytes_per_cycle: float | None = Field(
        default=None, gt=0,
        description="bytes per clock one AI core moves to/from main memory (CANN ini ddr_rate)")
    source: str


class MainMemory(_Strict):
    type: str
    capacity_gib: float = Field(gt=0)
    bandwidth_gbps: float = Field(gt=0)
    source: str


class Level(_Strict):
    name: str
    scope: Literal["device", "per_core"] = "device"
    capacity_kib: float | None = Field(default=None, gt=0)
    capacity_mib: float | None = Field(default=None, gt=0)
    bandwidth_gbps: float | None = Field(default=None, gt=0)
    source: str

    @model_validator(mode="after")
    def _one_capacity(self) -> Level:
        given = [c for c in (self.capacity_kib, self.capacity_mib) if c is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of capacity_kib or capacity_mib")
        return self

    def capacity_bytes(self) -> float:
        if self.capacity_kib is not None:
            return self.capacity_kib * KIB
        assert self.capacity_mib is not None  # _one_capacity: exactly one is given
        return float(self.capacity_mib) * MIB


class EfficiencyFile(_Strict):
    matrix_max: float = Field(gt=0, le=1)
    matrix_max_fp8: float = Field(default=0.0, ge=0, le=1)  # 0: as matrix_max (see Efficiency)
    matrix_max_fp4: float = Field(default=0.0, ge=0, le=1)  # 0: as matrix_max (see Efficiency)
    matrix_max_mxfp8: float = Field(default=0.0, ge=0, le=1)  # 0: as matrix_max_fp8
    matrix_half_gflop: float = Field(ge=0)
    vector_max: float = Field(gt=0, le=1)
    vector_half_mflop: float = Field(ge=0)
    memory_max: float = Field(gt=0, le=1)
    memory_half_mib: float = Field(ge=0)
    launch_overhead_us: float = Field(ge=0)
    core_block_m: int = Field(default=128, gt=0)
    core_block_n: int = Field(default=128, gt=0)
    # Output block shapes [m, n] the GEMM library may choose among (see Efficiency);
    # empty = just [core_block_m, core_block_n].
    core_blocks: list[tuple[int, int]] = Field(default_factory=list)
    # Per-op-kind corrections written by calibration (see Efficiency); keys are OpKind values.
    kind_speed: dict[str, float] = Field(default_factory=dict)
    kind_overhead_us: dict[str, float] = Field(default_factory=dict)
    # Last-level-cache tier of main memory (see Efficiency); 0 MiB = off.
    cache_mib: float = Field(default=0.0, ge=0)
    cache_speedup: float = Field(default=1.0, ge=1.0)  # >= 1 keeps time monotone in size
    first_touch: bool = False  # first-touch bytes at the main-memory rate (see Efficiency)
    overlap: float = Field(default=1.0, ge=0, le=1)  # compute/memory overlap (see Efficiency)
    source: str

    @field_validator("kind_speed")
    @classmethod
    def _speed_positive(cls, table: dict[str, float]) -> dict[str, float]:
        for kind, value in table.items():
            if value <= 0:
                raise ValueError(f"kind_speed.{kind} must be > 0, got {value}")
        return table

    @field_validator("kind_overhead_us")
    @classmethod
    def _overhead_non_negative(cls, table: dict[str, float]) -> dict[str, float]:
        for kind, value in table.items():
            if value < 0:
                raise ValueError(f"kind_overhead_us.{kind} must be >= 0, got {value}")
        return table

    @field_validator("core_blocks")
    @classmethod
    def _blocks_positive(cls, blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for m, n in blocks:
            if m <= 0 or n <= 0:
                raise ValueError(
                    f"core_blocks entries must be [m, n] with m, n > 0, got [{m}, {n}]"
                )
        return blocks

    def to_spec(self) -> Efficiency:
        return Efficiency(
            matrix_max=self.matrix_max,
            matrix_max_fp8=self.matrix_max_fp8,
            matrix_max_fp4=self.matrix_max_fp4,
            matrix_max_mxfp8=self.matrix_max_mxfp8,
            matrix_half_flops=self.matrix_half_gflop * GIGA,
            vector_max=self.vector_max,
            vector_half_flops=self.vector_half_mflop * 1e6,
            memory_max=self.memory_max,
            memory_half_bytes=self.memory_half_mib * MIB,
            launch_overhead_s=self.launch_overhead_us * US,
            core_block_m=self.core_block_m,
            core_block_n=self.core_block_n,
            core_blocks=tuple((int(m), int(n)) for m, n in self.core_blocks),
            kind_speed=dict(self.kind_speed),
            kind_overhead_s={k: v * US for k, v in self.kind_overhead_us.items()},
            cache_bytes=self.cache_mib * MIB,
            cache_speedup=self.cache_speedup,
            first_touch=self.first_touch,
            overlap=self.overlap,
        )


class KernelsFile(_Strict):
    """Optional ``[kernels]`` section: what kernel implementations can use (see KernelTraits)."""

    exp_per_clk_per_core: float = Field(default=16.0, gt=0)
    warp_mma_fraction: float = Field(default=1.0, gt=0, le=1)
    async_mma: bool = False
    default_attention: str = ""
    l2_bandwidth_gbps: float | None = Field(default=None, gt=0)
    epilogue_overlap: bool = False
    non_tn_fp8_gemm: bool = False
    cast_transpose_fraction: float | None = Field(default=None, gt=0, le=1)
    compute_capability: str = Field(default="", pattern=r"^(\d+\.\d+)?$")
    source: str

    def to_spec(self) -> KernelTraits:
        return KernelTraits(
            exp_per_clk_per_core=self.exp_per_clk_per_core,
            warp_mma_fraction=self.warp_mma_fraction,
            async_mma=self.async_mma,
            default_attention=self.default_attention,
            l2_bandwidth=None if self.l2_bandwidth_gbps is None else self.l2_bandwidth_gbps * GIGA,
            epilogue_overlap=self.epilogue_overlap,
            non_tn_fp8_gemm=self.non_tn_fp8_gemm,
            cast_transpose_fraction=self.cast_transpose_fraction,
            compute_capability=self.compute_capability,
        )


class LatencyFile(_Strict):
    """Optional ``[latency]`` section: load-to-use latencies in core clock cycles, as
    microbenchmark studies measure them (see Latency). Only what a source gives."""

    smem_cycles: float | None = Field(default=None, gt=0)
    l2_hit_cycles: float | None = Field(default=None, gt=0)
    hbm_cycles: float | None = Field(default=None, gt=0)
    source: str

    def to_spec(self) -> Latency:
        return Latency(smem_cycles=self.smem_cycles, l2_hit_cycles=self.l2_hit_cycles,
                       hbm_cycles=self.hbm_cycles)


class DeviceFile(_Strict):
    schema_version: Literal[1] = 1
    kind: Literal["device"] = "device"
    name: str
    vendor: str
    arch: Literal["davinci", "nvidia", "amd", "cpu"]
    description: str
    tdp_w: float | None = Field(default=None, gt=0)  # per-watt figures divide by it
    # Sections whose figures are vendor announcements no one has measured yet (parts
    # not shipping, or shipping without published measurements): ``hw show`` prints them.
    announced: list[str] = Field(default_factory=list)
    matrix: PeakTable
    vector: PeakTable
    cores: Cores
    hbm: MainMemory
    levels: list[Level] = Field(default_factory=list)
    efficiency: EfficiencyFile
    kernels: KernelsFile | None = None
    latency: LatencyFile | None = None

    @field_validator("announced")
    @classmethod
    def _announced_known(cls, sections: list[str]) -> list[str]:
        return _check_announced(sections, DEVICE_SECTIONS)

    def to_spec(self, path: str = "") -> Device:
        hbm_bandwidth = self.hbm.bandwidth_gbps * GIGA
        main = MemoryLevel(
            name="hbm", capacity_bytes=self.hbm.capacity_gib * GIB, bandwidth=hbm_bandwidth
        )
        levels = tuple(
            MemoryLevel(
                name=lv.name,
                capacity_bytes=lv.capacity_bytes(),
                bandwidth=None if lv.bandwidth_gbps is None else lv.bandwidth_gbps * GIGA,
                scope=lv.scope,
            )
            for lv in self.levels
        )
        return Device(
            name=self.name,
            vendor=self.vendor,
            arch=self.arch,
            description=self.description,
            matrix_peak={k: v * TERA for k, v in self.matrix.peak_tflops.items()},
            vector_peak={k: v * TERA for k, v in self.vector.peak_tflops.items()},
            marketing_peak={k: v * TERA for k, v in self.matrix.marketing_tflops.items()},
            quoted_peak={k: v * TERA for k, v in self.matrix.quoted_tflops.items()},
            cores=self.cores.count,
            matrix_cores=self.cores.matrix,
            vector_cores=self.cores.vector,
            clock_hz=self.cores.clock_ghz * GIGA,
            hbm_capacity=main.capacity_bytes,
            hbm_bandwidth=float(hbm_bandwidth),
            memory=(main, *levels),
            matrix_tile=self.matrix.tile,
            efficiency=self.efficiency.to_spec(),
            tdp_watts=self.tdp_w,
            announced=tuple(self.announced),
            kernels=self.kernels.to_spec() if self.kernels else KernelTraits(),
            latency=self.latency.to_spec() if self.latency else Latency(),
            core_hbm_bytes_per_cycle=self.cores.hbm_bytes_per_cycle,
            sources={
                "matrix": self.matrix.source,
                **({"matrix.quoted": self.matrix.quoted_source} if self.matrix.quoted_tflops else {}),
                "vector": self.vector.source,
                "cores": self.cores.source,
                "hbm": self.hbm.source,
                "efficiency": self.efficiency.source,
                **{f"level.{lv.name}": lv.source for lv in self.levels},
                **({"kernels": self.kernels.source} if self.kernels else {}),
                **({"latency": self.latency.source} if self.latency else {}),
            },
            path=path,
        )


class IntraNode(_Strict):
    topology: Literal["full_mesh", "switch", "pcie"]
    link_bandwidth_gbps: float = Field(gt=0, description="one direction, per link (full mesh) or per device port")
    vendor_figure: str = Field(description="what the vendor quotes and whether it is one-way or both ways")
    links_per_device: int = Field(gt=0)
    latency_us: float = Field(ge=0)
    source: str


class Package(_Strict):
    dies: int = Field(gt=0)
    die_to_die_bandwidth_gbps: float = Field(gt=0, description="one direction")
    latency_us: float = Field(ge=0)
    source: str


class HostLink(_Strict):
    """The device's link to its host CPU's memory (pinned-memory copies by the copy
    engines: activation offload, sim/training/offload.py)."""

    bandwidth_gbps: float = Field(
        gt=0, description="one direction, per device, with every device of the node copying at once")
    vendor_figure: str = Field(description="what the vendor quotes and whether it is one-way or both ways")
    source: str


class Nic(_Strict):
    count: int = Field(gt=0, description="NICs per node")
    bandwidth_gbit: float = Field(gt=0, description="line rate per NIC per direction, Gb/s")
    latency_us: float = Field(ge=0)
    source: str


class InterNode(_Strict):
    topology: Literal["rail_optimized", "fat_tree", "supernode"]
    oversubscription: float = Field(default=1.0, ge=1.0)
    source: str


class CollectiveEfficiencyFile(_Strict):
    intra_node: float = Field(gt=0, le=1)
    inter_node: float = Field(gt=0, le=1)
    step_overhead_us: float = Field(ge=0)
    source: str


NcclProtocol = Literal["LL", "LL128", "Simple"]
_PROTOCOLS: tuple[NcclProtocol, ...] = ("LL", "LL128", "Simple")


class CollectiveLibraryFile(_Strict):
    name: Literal["nccl", "hccl", "generic"]
    arch: Literal["volta", "ampere", "hopper", "blackwell"] = "hopper"
    nvls: bool = False
    nvls_efficiency: float = Field(default=0.0, ge=0, le=1)
    collnet: bool = False
    channels: int = Field(default=16, gt=0)
    # NCCL_PROTO where the system's recommended environment sets it (cite it in source).
    protocols: list[NcclProtocol] = Field(default_factory=lambda: list(_PROTOCOLS), min_length=1)
    source: str

    @model_validator(mode="after")
    def _nvls_needs_efficiency(self) -> CollectiveLibraryFile:
        if self.nvls and self.nvls_efficiency <= 0:
            raise ValueError("nvls = true needs nvls_efficiency > 0 (the port fraction NVLS reaches)")
        return self


class PcieTreeFile(_Strict):
    devices_per_switch: int = Field(gt=0, description="GPUs under one PCIe switch; 1 = own root port")
    sockets: int = Field(gt=0)
    p2p: bool = Field(description="the driver offers CUDA P2P between the GPUs")
    p2p_level: Literal["PIX", "PXB", "PHB", "SYS"] = Field(description="NCCL_P2P_LEVEL in effect")
    cross_socket_p2p: float = Field(gt=0, le=1)
    shm_efficiency: float = Field(gt=0, le=1)
    source: str

    def to_spec(self) -> PcieTree:
        return PcieTree(
            devices_per_switch=self.devices_per_switch,
            sockets=self.sockets,
            p2p=self.p2p,
            p2p_level=self.p2p_level,
            cross_socket_p2p=self.cross_socket_p2p,
            shm_efficiency=self.shm_efficiency,
        )


class SystemFile(_Strict):
    schema_version: Literal[1] = 1
    kind: Literal["system"] = "system"
    name: str
    description: str
    device: str = Field(description="device profile name or path")
    devices_per_node: int = Field(gt=0)
    nodes: int = Field(default=1, gt=0)
    intra_node: IntraNode
    package: Package | None = None
    nic: Nic
    inter_node: InterNode
    collective_efficiency: CollectiveEfficiencyFile
    collective_library: CollectiveLibraryFile | None = None
    pcie_tree: PcieTreeFile | None = None
    host_link: HostLink | None = None
    # Sections whose figures are vendor announcements no one has measured (see DeviceFile).
    announced: list[str] = Field(default_factory=list)

    @field_validator("announced")
    @classmethod
    def _announced_known(cls, sections: list[str]) -> list[str]:
        return _check_announced(sections, SYSTEM_SECTIONS)

    def to_spec(self, device: Device, path: str = "") -> System:
        pkg = self.package
        return System(
            name=self.name,
            description=self.description,
            device=device,
            devices_per_node=self.devices_per_node,
            intra_topology=self.intra_node.topology,
            intra_link=Link(self.intra_node.link_bandwidth_gbps * GIGA, self.intra_node.latency_us * US),
            links_per_device=self.intra_node.links_per_device,
            nics_per_node=self.nic.count,
            nic=Link(self.nic.bandwidth_gbit * GIGA / 8, self.nic.latency_us * US),
            inter_topology=self.inter_node.topology,
            oversubscription=self.inter_node.oversubscription,
            nodes=self.nodes,
            dies_per_package=pkg.dies if pkg else 1,
            die_to_die=Link(pkg.die_to_die_bandwidth_gbps * GIGA, pkg.latency_us * US) if pkg else None,
            collective_efficiency=CollectiveEfficiency(
                intra_node=self.collective_efficiency.intra_node,
                inter_node=self.collective_efficiency.inter_node,
                step_overhead_s=self.collective_efficiency.step_overhead_us * US,
            ),
            collective_library=_library(self.collective_library),
            pcie_tree=self.pcie_tree.to_spec() if self.pcie_tree else None,
            host_link=Link(self.host_link.bandwidth_gbps * GIGA, 0.0) if self.host_link else None,
            announced=tuple(self.announced),
            sources={
                "intra_node": self.intra_node.source,
                "nic": self.nic.source,
                "inter_node": self.inter_node.source,
                "collective_efficiency": self.collective_efficiency.source,
                **({"package": pkg.source} if pkg else {}),
                **({"pcie_tree": self.pcie_tree.source} if self.pcie_tree else {}),
                **({"host_link": self.host_link.source} if self.host_link else {}),
                **(
                    {"collective_library": self.collective_library.source}
                    if self.collective_library
                    else {}
                ),
            },
            path=path,
        )


def _library(lib: CollectiveLibraryFile | None) -> CollectiveLibrary:
    if lib is None:
        return CollectiveLibrary()
    return CollectiveLibrary(
        name=lib.name,
        arch=lib.arch,
        nvls=lib.nvls,
        nvls_efficiency=lib.nvls_efficiency,
        collnet=lib.collnet,
        channels=lib.channels,
        protocols=tuple(lib.protocols),
    )
