"""The intermediate representation: what work is done, never how long it takes.

Builders (kernels' ``describe()``, the training and inference lowerings) produce
``Op``/``Collective``/``Delay`` items in a per-rank ``RankGraph``; the cost model and
the network price them; the engine schedules them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from sim.errors import InputError

MAIN_MEMORY = "hbm"  # key of the device's main memory (HBM, GDDR or host DRAM) in Op.bytes

BYTES_PER_DTYPE = {
    "fp64": 8,
    "fp32": 4,
    "tf32": 4,
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
}


def dtype_bytes(dtype: str) -> float:
    try:
        return BYTES_PER_DTYPE[dtype]
    except KeyError:
        raise InputError(
            f"unknown dtype '{dtype}'; expected one of {', '.join(BYTES_PER_DTYPE)}"
        ) from None


class OpKind(StrEnum):
    GEMM = "gemm"
    ATTENTION = "attention"
    ELEMENTWISE = "elementwise"
    REDUCTION = "reduction"
    SOFTMAX = "softmax"
    NORM = "norm"
    CONV2D = "conv2d"
    POOL = "pool"
    UPSAMPLE = "upsample"
    MEMCPY = "memcpy"
    EMBEDDING = "embedding"
    ROUTING = "routing"
    OTHER = "other"


class Unit(StrEnum):
    MATRIX = "matrix"  # tensor cores / Cube
    VECTOR = "vector"  # CUDA cores / AIV
    DMA = "dma"  # copy engines: memory traffic only


class CollectiveKind(StrEnum):
    ALL_REDUCE = "all-reduce"
    ALL_GATHER = "all-gather"
    REDUCE_SCATTER = "reduce-scatter"
    ALL_TO_ALL = "all-to-all"
    ALL_TO_ALLV = "all-to-allv"
    BROADCAST = "broadcast"
    SEND_RECV = "send-recv"


class Stream(StrEnum):
    COMPUTE = "compute"
    COMM = "comm"
    COPY = "copy"


_EMPTY: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Op:
    """A piece of device work.

    ``flops`` run on ``unit``; ``bytes`` maps memory level -> bytes moved there
    (``"hbm"`` is main device memory; on-chip levels such as ``"l2"`` or ``"ub"`` are
    optional). ``shape`` carries what a cost model needs beyond totals (m, n, k,
    batch for a GEMM; seq, heads for attention).
    """

    name: str
    kind: OpKind
    flops: float
    bytes: Mapping[str, float]
    dtype: str = "bf16"
    unit: Unit = Unit.MATRIX
    shape: Mapping[str, float] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if self.flops < 0:
            raise InputError(f"op '{self.name}': FLOPs must be >= 0, got {self.flops}")
        for level, nbytes in self.bytes.items():
            if nbytes < 0:
                raise InputError(f"op '{self.name}': bytes at '{level}' must be >= 0, got {nbytes}")

    @property
    def main_bytes(self) -> float:
        return self.bytes.get(MAIN_MEMORY, 0.0)

    def cache_key(self) -> tuple:
        return (
            self.kind,
            self.flops,
            tuple(sorted(self.bytes.items())),
            self.dtype,
            self.unit,
            tuple(sorted(self.shape.items())),
        )


@dataclass(frozen=True, slots=True)
class Collective:
    """Communication among ``group`` (global rank ids).

    ``bytes`` is the per-rank buffer: the all-reduce input, the all-gather *output*,
    the reduce-scatter *input*, the total a rank sends in an all-to-all, the message of
    a send/recv. ``algorithm`` is "auto" or a name the network layer knows.
    ``tag`` tells apart repeated collectives on the same group (the engine matches
    the members of one collective by ``(name, tag)``).
    """

    name: str
    kind: CollectiveKind
    group: tuple[int, ...]
    bytes: float
    algorithm: str = "auto"
    tag: int = 0

    def __post_init__(self) -> None:
        if self.bytes < 0:
            raise InputError(f"collective '{self.name}': bytes must be >= 0, got {self.bytes}")
        if len(self.group) < 1:
            raise InputError(f"collective '{self.name}': empty group")


@dataclass(frozen=True, slots=True)
class Delay:
    """Fixed-duration work with no hardware model behind it (host overhead, a known wait)."""

    name: str
    seconds: float
    kind: str = "host"


Work = Op | Collective | Delay


@dataclass(slots=True)
class Task:
    id: int
    work: Work
    stream: Stream
    deps: tuple[int, ...]
    label: str = ""  # free-form grouping for breakdowns (e.g. "fwd", "bwd", "layer3")


@dataclass
class RankGraph:
    """The program of one rank: tasks with dependencies, each on a stream.

    Within a stream tasks run in insertion order (like a CUDA stream); ``deps``
    add cross-stream ordering. A dependency must be added before its dependant.
    """

    rank: int
    tasks: list[Task] = field(default_factory=list)

    def add(
        self,
        work: Work,
        stream: Stream = Stream.COMPUTE,
        deps: tuple[int, ...] | list[int] = (),
        label: str = "",
    ) -> int:
        tid = len(self.tasks)
        for d in deps:
            if not 0 <= d < tid:
                raise InputError(f"rank {self.rank}: task {tid} depends on unknown task {d}")
        stream = stream if isinstance(stream, Stream) else Stream(stream)
        self.tasks.append(Task(tid, work, stream, tuple(deps), label))
        return tid

    def ops(self) -> list[Op]:
        return [t.work for t in self.tasks if isinstance(t.work, Op)]

    def total_flops(self) -> float:
        return sum(op.flops for op in self.ops())
