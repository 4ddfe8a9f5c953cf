"""The intermediate representation: what work is done, never how long it takes.

Builders (kernels' ``describe()``, the training and inference lowerings) produce
``Op``/``Segment``/``Collective``/``Delay`` items in a per-rank ``RankGraph``; the pricing
pass (``sim.cost.pricing``: the cost model per device, the network per system) gives
each its duration; the engine schedules them. Nothing here holds a time except a
``Delay`` (work with no hardware model behind it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum

# Number formats live in sim.dtypes; re-exported here, where most builders import them.
from xpusim.sim.dtypes import BYTES_PER_DTYPE as BYTES_PER_DTYPE
from xpusim.sim.dtypes import LOW_PRECISION as LOW_PRECISION
from xpusim.sim.dtypes import LowPrecisionFormat as LowPrecisionFormat
from xpusim.sim.dtypes import dtype_bytes as dtype_bytes
from xpusim.sim.dtypes import is_low_precision as is_low_precision
from xpusim.sim.errors import InputError

MAIN_MEMORY = "hbm"  # key of the device's main memory (HBM, GDDR or host DRAM) in Op.bytes


class OpKind(StrEnum):
    GEMM = "gemm"
    ATTENTION = "attention"
    ELEMENTWISE = "elementwise"
    # A standalone torch.exp: on an MKL build of torch it is MKL VML's vsExp, not
    # Vectorized<float>::exp (docs/cost_model.md "Exponentials"); its own kind, so that a
    # calibration fits its speed from the `exp` microbenchmark.
    EXP = "exp"
    # The -inf elements of a standalone torch.exp (FastAttention's masks): vsExp with
    # VML_FTZDAZ_OFF takes ~12x as long per -inf element (docs/calibration_notes.md).
    EXP_MASKED = "exp_masked"
    # First touch of a CPU op's freshly mmapped output pages (sim/cost/page_faults.py):
    # never an op's own kind; an op's ``fresh_bytes`` are priced under it, so that a
    # calibration fits its speed from the `page_fault` microbenchmark.
    PAGE_FAULT = "page_fault"
    REDUCTION = "reduction"
    SOFTMAX = "softmax"
    NORM = "norm"
    CONV2D = "conv2d"
    # torch's CPU im2col + GEMM convolution (``_slow_conv2d_forward``), not oneDNN: never an
    # op's own kind; a CPU prices CONV2D under it where that path runs (sim/cost/conv_path.py).
    CONV2D_IM2COL = "conv2d_im2col"
    POOL = "pool"
    UPSAMPLE = "upsample"
    # torch's CPU nearest upsampling on ATen's channels-last kernel: as CONV2D_IM2COL, a
    # kind a CPU prices UPSAMPLE under where that path runs (sim/cost/upsample_path.py).
    UPSAMPLE_CL = "upsample_cl"
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
    # Asynchronous data-parallel collectives (ZeRO/FSDP parameter gathers, gradient
    # reduce-scatters and all-reduces): the DP process group's own NCCL stream
    # (Megatron's distributed optimizer / Megatron-FSDP), so the TP, EP, CP and PP traffic
    # on ``COMM`` never queues behind a whole-layer gather (sim.training.emitter.
    # _async_stream, docs/training_notes.md "DP collectives on their own stream").
    DP_COMM = "dp_comm"


# The streams whose collectives run beside compute (SM contention, ``sim.engine_share``).
ASYNC_COMM_STREAMS = (Stream.COMM, Stream.DP_COMM)


# ---------------------------------------------------------------- op shapes
#
# What a cost model needs beyond an op's totals. Small frozen dataclasses: a typo in a
# field name is an error, not a silent miss, and they hash as part of ``Op.cache_key``.


@dataclass(frozen=True, slots=True)
class GemmShape:
    """C[batch, m, n] = A[batch, m, k] @ B[batch, k, n].

    ``weight_bytes`` / ``footprint_bytes`` (0: not stated) tell the cost model's cache tier
    that the B operand is a weight of that size in a graph that reads ``footprint_bytes``
    of weights per pass (sim/cost/roofline.py, ``cold_bytes``). ``accumulate``: the dtype
    of C when the GEMM adds its product into C (beta = 1: the epilogue reads C and writes
    it back, e.g. a weight gradient into the fp32 main gradient); "" for a plain output.
    ``impl`` names the library kernel that runs it (sim/cost/gemm_impl.py ``GEMM_IMPLS``,
    e.g. "deepgemm"); "" (every GEMM training and serving lower) is the generic path.
    ``tactic_m`` > 0: the generic path runs the block shape chosen for ``tactic_m`` rows
    at every M (a TensorRT engine's one optimisation profile; sim/cost/roofline.py
    ``tactic_tile``); 0: the cheapest block shape for the GEMM's own M.
    ``group_rows``: the rows of each group of a grouped GEMM whose groups differ (an MoE
    layer's experts); then ``batch`` is their count and ``m`` their mean, so every total
    (FLOPs, bytes, output) stays ``batch x m``. Empty: ``batch`` equal groups of ``m``. Only a
    kernel that cuts groups its own way reads it (sim/cost/gemm_torch.py,
    sim/cost/gemm_trtllm.py).
    """

    m: float
    n: float
    k: float
    batch: float = 1
    weight_bytes: float = 0.0
    footprint_bytes: float = 0.0
    accumulate: str = ""
    impl: str = ""
    tactic_m: float = 0.0
    group_rows: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ConvShape(GemmShape):
    """A 2-D convolution as its implicit GEMM, with the output's spatial size and what
    torch's CPU path choice reads (sim/cost/conv_path.py): the images, the input's
    elements (images x in_ch x H x W), the square kernel's side, stride, groups and
    padding (``in_elements`` 0: not stated, priced as the oneDNN path)."""

    h_out: float = 0
    w_out: float = 0
    images: float = 1
    in_elements: float = 0
    kernel: int = 0
    stride: int = 1
    groups: int = 1
    padding: int = 0


@dataclass(frozen=True, slots=True)
class AttentionShape:
    """``q_len`` queries of ``batch x heads`` against ``kv_len`` keys (``kv_heads`` K/V heads).

    ``backward``: the backward pass (priced as such by the attention implementations).
    ``cp`` > 1: a context-parallel share, 1/cp of the causal score matrix of ``cp x q_len``
    queries (Megatron's zig-zag split). ``impl`` names the implementation when the op
    fixes it ("": the plan's or the device's default). ``window`` > 0: sliding-window
    (local) causal attention, each query seeing at most ``window`` keys, itself included
    (``attention_pairs``); 0 = the whole causal context.
    """

    batch: float
    heads: float
    q_len: float
    kv_len: float
    head_dim: float
    kv_heads: float
    v_head_dim: float
    causal: bool = False
    backward: bool = False
    cp: float = 1
    impl: str = ""
    window: float = 0


def attention_pairs(q_len: float, kv_len: float, causal: bool, window: float = 0) -> float:
    """(query, key) pairs one head scores: the queries are the last ``q_len`` of ``kv_len``
    positions.

    Causal: the query at position p (0-based) sees p + 1 keys. With a sliding ``window``
    it sees min(p + 1, window): HF's sliding mask keeps key k for query q when
    q - window < k <= q (transformers masking_utils ``sliding_window_overlay``; gpt-oss
    ``sliding_window`` 128). Without ``causal`` every query sees every key (or
    ``window`` of them).
    """
    if not causal:
        return q_len * (min(kv_len, window) if window else kv_len)
    if q_len <= 1 and not window:
        return q_len * kv_len
    offset = kv_len - q_len
    if not window or window >= kv_len:
        return q_len * offset + q_len * (q_len + 1) / 2
    # Positions offset .. window-1 are still inside the ramp (p + 1 <= window keys);
    # every later query sees exactly ``window`` keys.
    ramp = max(0.0, min(kv_len, window) - offset)
    return ramp * (offset + 1) + ramp * (ramp - 1) / 2 + (q_len - ramp) * window


def _chunked_prefix_pairs(positions: float, chunk: float) -> float:
    """Pairs that the causal queries at positions 0 .. ``positions`` - 1 score when each
    sees only its own chunk: the query at p sees (p mod chunk) + 1 keys."""
    whole, rest = divmod(positions, chunk)
    return whole * chunk * (chunk + 1) / 2 + rest * (rest + 1) / 2


def chunked_attention_pairs(q_len: float, kv_len: float, chunk: float) -> float:
    """(query, key) pairs one head scores under chunked causal attention (Llama 4's
    chunked layers): the queries are the last ``q_len`` of ``kv_len`` positions, and the
    query at p sees the keys of its own chunk of ``chunk`` positions up to itself,
    (p mod chunk) + 1 of them (transformers masking_utils ``chunked_overlay`` on the
    causal mask: kv // chunk == q // chunk). A sequence of s = n x chunk tokens scores
    n x chunk (chunk + 1) / 2 pairs, n independent causal chunks."""
    return _chunked_prefix_pairs(kv_len, chunk) - _chunked_prefix_pairs(kv_len - q_len, chunk)


@dataclass(frozen=True, slots=True)
class ElementwiseShape:
    """A pointwise (or row-wise) op over ``numel`` elements. ``transpose``: the op also
    writes a transposed copy through a tiled transpose kernel (TransformerEngine's FP8
    cast-transpose), priced at the device's ``kernels.cast_transpose_fraction`` of HBM
    bandwidth where the profile has one (``sim.cost.roofline``)."""

    numel: float
    transpose: bool = False


@dataclass(frozen=True, slots=True)
class NormShape:
    """RMSNorm / LayerNorm over ``tokens`` rows of ``hidden``."""

    tokens: float
    hidden: float

    @property
    def numel(self) -> float:
        return self.tokens * self.hidden


@dataclass(frozen=True, slots=True)
class SoftmaxShape:
    """Softmax over ``rows`` rows of ``cols``."""

    rows: float
    cols: float

    @property
    def numel(self) -> float:
        return self.rows * self.cols


@dataclass(frozen=True, slots=True)
class MemcpyShape:
    nbytes: float


@dataclass(frozen=True, slots=True)
class EmbeddingShape:
    tokens: float
    hidden: float


@dataclass(frozen=True, slots=True)
class PoolShape:
    numel: float
    window: float
    h_out: float
    w_out: float


@dataclass(frozen=True, slots=True)
class UpsampleShape:
    numel: float  # output elements
    factor: float  # per side
    h_out: float = 0.0  # output size (0: not stated), for torch's CPU path rule
    w_out: float = 0.0


@dataclass(frozen=True, slots=True)
class TopKShape:
    """Top-k over ``experts`` scores for each of ``tokens`` tokens."""

    tokens: float
    experts: float
    top_k: float


Shape = (
    GemmShape | AttentionShape | ElementwiseShape | NormShape | SoftmaxShape | MemcpyShape
    | EmbeddingShape | PoolShape | UpsampleShape | TopKShape | None
)


def shape_dict(shape: Shape) -> dict[str, float | bool | str]:
    """A shape's fields as a plain dict (for JSON output); {} for no shape."""
    return {} if shape is None else asdict(shape)


# ---------------------------------------------------------------- op roles
#
# What an op *is* in the model, for the rules that are not pricing: which activation it
# keeps for its backward, which module recomputes it, which weight it reads. Training's
# memory and recompute rules read these; no cost model does (``Op.cache_key`` leaves the
# role out, so two ops that differ only in role share one priced cost).


class Weight(StrEnum):
    """The weight an op reads."""

    NONE = ""
    DENSE = "dense"  # a linear layer of the transformer (attention, MLP, shared experts)
    EXPERT = "expert"  # a routed expert's matrices (sharded over expert parallelism)
    ROUTER = "router"  # the MoE gate
    HEAD = "head"  # the output projection
    TABLE = "table"  # the embedding table (rows gathered, not a GEMM operand)


@dataclass(frozen=True, slots=True)
class Saved:
    """A tensor an op keeps for its backward pass.

    ``elements`` of ``bytes_per_element`` bytes (0: the op's dtype, so a low-precision
    GEMM keeps its cast input), of which the rank keeps ``1/shard`` (sequence
    parallelism: a GEMM fed by the all-gather keeps only its sequence shard). ``by`` is
    the module whose recompute drops it ("checkpoint": always kept). Ops that read the
    same tensor name it by ``tensor``; it is kept once.
    """

    elements: float
    by: str = "checkpoint"
    bytes_per_element: float = 0.0
    shard: float = 1
    tensor: str = ""

    def nbytes(self, op_dtype: str) -> float:
        per = self.bytes_per_element or dtype_bytes(op_dtype)
        return self.elements * per / self.shard


@dataclass(frozen=True, slots=True)
class Role:
    """An op's place in the model.

    ``module``: the module its output belongs to (a selective recompute re-runs the ops
    of the modules it names; "core_attn" is the attention core inside "attn"; "out":
    never recomputed selectively). ``saves``: what it keeps for its backward.
    ``weight``: the weight it reads, ``weight_elements`` of it. ``expert``: part of a
    routed expert's work (its grouped GEMMs, their activation, casts and backward).
    ``swizzled_scales``: a low-precision GEMM whose operands' block scales are swizzled
    before each of its GEMMs, forward and backward (``sim.training.lowprec``).
    ``cast_usages`` / ``amax_pass``: how a low-precision GEMM's operand casts run, its
    backward's output-gradient cast included: copies written per cast (2: rowwise and
    transposed; 1 where the device's FP8 GEMMs take any layout) and whether a separate
    amax pass precedes each (FP8 current scaling; ``sim.training.lowprec.CastRecipe``).
    """

    module: str = "out"
    saves: tuple[Saved, ...] = ()
    weight: Weight = Weight.NONE
    weight_elements: float = 0.0
    expert: bool = False
    swizzled_scales: bool = False
    cast_usages: int = 2
    amax_pass: bool = False


NO_ROLE = Role()


@dataclass(frozen=True, slots=True)
class Op:
    """A piece of device work.

    ``flops`` run on ``unit``; ``bytes`` maps memory level -> bytes moved there
    (``"hbm"`` is main device memory; on-chip levels such as ``"l2"`` or ``"ub"`` are
    optional). ``shape`` carries what a cost model needs beyond totals (a ``GemmShape``
    for a GEMM, an ``AttentionShape`` for attention); ``role`` what the op is in the
    model (memory and recompute rules; never priced). ``fresh_bytes``: the size of a
    newly allocated output the op writes first (an eager framework's out-of-place result;
    0 = not stated or written into existing memory): on a CPU, where the allocator hands
    large blocks back to the OS, its pages fault on first touch (sim/cost/page_faults.py).
    ``first_touch_bytes``: the part of the main-memory traffic on data no earlier op of
    its kernel graph touched (sim/workloads/data_flow.py; 0 = not stated): main-memory
    rate on a CPU calibrated with it (sim/cost/first_touch.py).
    """

    name: str
    kind: OpKind
    flops: float
    bytes: Mapping[str, float]
    dtype: str = "bf16"
    unit: Unit = Unit.MATRIX
    shape: Shape = None
    role: Role = NO_ROLE
    fresh_bytes: float = 0.0
    first_touch_bytes: float = 0.0

    def __post_init__(self) -> None:
        if self.flops < 0:
            raise InputError(f"op '{self.name}': FLOPs must be >= 0, got {self.flops}")
        for level, nbytes in self.bytes.items():
            if nbytes < 0:
                raise InputError(f"op '{self.name}': bytes at '{level}' must be >= 0, got {nbytes}")
        if self.fresh_bytes < 0:
            raise InputError(f"op '{self.name}': fresh_bytes must be >= 0, got {self.fresh_bytes}")
        if self.first_touch_bytes < 0:
            raise InputError(f"op '{self.name}': first_touch_bytes must be >= 0")

    @property
    def main_bytes(self) -> float:
        return self.bytes.get(MAIN_MEMORY, 0.0)

    def cache_key(self) -> tuple:
        """What the op's cost depends on: everything but its name and role."""
        levels = tuple(self.bytes.items())
        return (
            self.kind,
            self.flops,
            levels if len(levels) < 2 else tuple(sorted(levels)),
            self.dtype,
            self.unit,
            self.shape,
            self.fresh_bytes,
            self.first_touch_bytes,
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


@dataclass(frozen=True, slots=True, eq=False)
class Segment:
    """Consecutive ops of one stream that run back to back, scheduled as one task.

    Lowering merges runs of ops into segments so the engine schedules tens of thousands
    of tasks instead of millions; the pricing pass (``sim.cost.pricing``) gives a
    segment the sum of its ops' times and, when ``host`` (each op launched by the
    framework on the host), at least ``len(ops) x`` the host's cost per op. Compared by
    identity: one segment object is shared by every unit that runs the same ops.

    ``host_syncs``: host-device synchronisations the framework makes in the segment
    (the host waits until the device has drained, so the device then idles while the
    host issues the next op: one host op per sync, ``sim.cost.pricing``).
    ``host_extra_s``: host seconds the framework spends issuing these ops beyond one
    host op each (TransformerEngine's per-expert launches, ``sim.training.te_moe_host``),
    at the reference host; the pricing scales them to the system's host.
    ``after``: the compute segment the same unit ran before this one (None at a unit's
    start): the host may have issued ahead by that segment's slack (``sim.cost.pricing``).
    """

    name: str
    ops: tuple[Op, ...]
    kind: str = "compute"
    host: bool = True
    host_syncs: int = 0
    host_extra_s: float = 0.0
    after: Segment | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class Chain:
    """Consecutive work of one stream that nothing else waits for part-way: each part
    starts when the previous one ends, so the engine schedules the run as one task while
    still adding each part's busy time and interval under its own label (the same times,
    to the bit, as one task per part). A collective part must have no other simulated
    member (a fixed duration, no rendezvous). Lowering emits chains only when no
    per-task record is asked for (sim.training.lowering); compared by identity: one
    chain object is shared by every unit that runs the same parts.
    """

    name: str
    parts: tuple[tuple[Segment | Collective, str], ...]  # (work, label), in order
    kind: str = "chain"


Work = Op | Collective | Delay | Segment | Chain


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
        stream: Stream | str = Stream.COMPUTE,
        deps: tuple[int, ...] | list[int] = (),
        label: str = "",
    ) -> int:
        tid = len(self.tasks)
        for d in deps:
            if not 0 <= d < tid:
                raise InputError(f"rank {self.rank}: task {tid} depends on unknown task {d}")
        on = stream if isinstance(stream, Stream) else Stream(stream)
        self.tasks.append(Task(tid, work, on, tuple(deps), label))
        return tid

    def ops(self) -> list[Op]:
        """The graph's ops in task order, those inside segments included."""
        out: list[Op] = []
        for t in self.tasks:
            if isinstance(t.work, Op):
                out.append(t.work)
            elif isinstance(t.work, Segment):
                out.extend(t.work.ops)
            elif isinstance(t.work, Chain):
                for part, _ in t.work.parts:
                    if isinstance(part, Segment):
                        out.extend(part.ops)
        return out

    def total_flops(self) -> float:
        return sum(op.flops for op in self.ops())
