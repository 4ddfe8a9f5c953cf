"""The rules both memory modes share: bytes per parameter, sharding, buffers, reserve.

Whatever a mode knows about a pipeline stage (its parameters, the activation bytes of
each model chunk per micro-batch, the micro-batches in flight, its largest collective
and the pipeline send) is turned into bytes here, by one function (``stage_memory``),
so the full per-stage mode and the analytical mode cannot apply different constants.
"""

from __future__ import annotations

from dataclasses import dataclass

from xpusim.sim.ir import dtype_bytes
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.nvfp4 import weight_bytes_per_param

OPTIMIZER_BYTES_PER_PARAM = 12.0  # fp32 master weights + Adam first and second moments
GIB = 1024**3
# Communication buffers: send + receive of the largest collective of a layer, and the
# pipeline send/receive of activations and gradients, each double-buffered.
COLLECTIVE_BUFFERS = 2.0
P2P_BUFFERS = 4.0


def megatron_activation_bytes(
    s: float, b: float, h: float, a: float, t: int = 1, sp: bool = False, policy: str = "none"
) -> float:
    """Activation bytes per transformer layer and micro-batch, as Korthikanti et al. 2022
    (arXiv 2205.05198, Table 2) derive them for a GPT layer (16-bit activations,
    dropout, unfused attention, 4h GELU MLP):

    * no parallelism: s·b·h·(34 + 5·a·s/h);
    * tensor parallel t: s·b·h·(10 + 24/t + 5·a·s/(h·t)); with sequence parallelism
      s·b·h·(34/t + 5·a·s/(h·t));
    * selective recompute (the attention core): the 5·a·s/h term goes, s·b·h·(10 + 24/t)
      and s·b·h·34/t with SP;
    * full recompute: the layer input only, 2·s·b·h (sharded by t with SP: Megatron
      checkpoints the sequence-parallel shard).

    The reference the lowering's per-op accounting (``layers.activation_bytes``) is
    tested against; the simulator itself sums per-op saved tensors, so FlashAttention,
    no dropout, SwiGLU or GQA change the result where this formula cannot.
    """
    sbh = s * b * h
    if policy == "full":
        return 2.0 * sbh / (t if sp else 1)
    scores = 0.0 if policy == "selective" else 5.0 * a * s / (h * t)
    if sp:
        return sbh * (34.0 / t + scores)
    return sbh * (10.0 + 24.0 / t + scores)


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter of the training state, and the ZeRO stage from which each
    part is sharded over the data-parallel group (Rajbhandari et al. 2020)."""

    weights: float  # plan.dtype (NVFP4: bf16 + its cached copies, sim.training.nvfp4)
    gradients: float  # main grads in plan.grad_reduce_dtype
    optimizer: float  # fp32 master + Adam m, v

    WEIGHTS_ZERO = 3
    GRADIENTS_ZERO = 2
    OPTIMIZER_ZERO = 1


def state_bytes(plan: ParallelPlan) -> StateBytes:
    return StateBytes(
        weight_bytes_per_param(plan.dtype), dtype_bytes(plan.grad_reduce_dtype),
        OPTIMIZER_BYTES_PER_PARAM
    )


def unsharded_and_sharded_bytes(plan: ParallelPlan) -> tuple[float, float]:
    """(bytes per parameter every replica keeps, bytes per parameter ZeRO shards over
    the data-parallel group) under ``plan.zero``."""
    sb = state_bytes(plan)
    parts = (
        (sb.weights, StateBytes.WEIGHTS_ZERO),
        (sb.gradients, StateBytes.GRADIENTS_ZERO),
        (sb.optimizer, StateBytes.OPTIMIZER_ZERO),
    )
    full = sum(b for b, stage in parts if plan.zero < stage)
    return full, sum(b for b, stage in parts if plan.zero >= stage)


@dataclass(frozen=True)
class StageState:
    """What one rank of a pipeline stage holds, as either mode finds it.

    Parameters are those of the rank (already split by TP, EP and PP); the data-parallel
    groups ZeRO shards over are the plan's: dense parameters over DP x CP, expert
    parameters over the expert-data-parallel group (DP/EP x CP)."""

    stage: int
    dense_params: float
    expert_params: float
    chunk_activations: tuple[float, ...]  # bytes one micro-batch keeps, per model chunk
    in_flight: dict[int, int]  # chunk -> micro-batches alive at the peak
    largest_comm: float  # per-rank bytes of the largest collective of any slot
    p2p: float  # activation bytes sent between stages (0 without a pipeline)
    per_layer_activations: float  # largest transformer layer, one micro-batch
    # Activation bytes on the host at the peak (CPU offload, sim/training/offload.py).
    offloaded: float = 0.0


@dataclass(frozen=True)
class MemoryBreakdown:
    stage: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    comm_buffers: float
    fragmentation: float
    reserved: float
    in_flight: dict[int, int]  # chunk -> micro-batches alive at the peak
    capacity: float
    # Activation bytes per micro-batch of the largest transformer layer on this stage
    # (compare with ``megatron_activation_bytes``) and per chunk (layers + embedding/head).
    per_layer_activations: float = 0.0
    per_chunk_activations: tuple[float, ...] = ()
    # Activation bytes CPU offload keeps in host memory at the peak (not in ``activations``).
    offloaded: float = 0.0

    @property
    def total(self) -> float:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.comm_buffers
            + self.fragmentation
            + self.reserved
        )

    @property
    def oom(self) -> bool:
        return self.total > self.capacity

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "weights_bytes": self.weights,
            "gradients_bytes": self.gradients,
            "optimizer_bytes": self.optimizer,
            "activations_bytes": self.activations,
            "comm_buffers_bytes": self.comm_buffers,
            "fragmentation_bytes": self.fragmentation,
            "reserved_bytes": self.reserved,
            "total_bytes": self.total,
            "capacity_bytes": self.capacity,
            "in_flight_microbatches": {str(k): v for k, v in self.in_flight.items()},
            "activations_per_layer_bytes": self.per_layer_activations,
            "activations_per_chunk_bytes": list(self.per_chunk_activations),
            "oom": self.oom,
            **({"activations_offloaded_bytes": self.offloaded} if self.offloaded else {}),
        }


def stage_memory(st: StageState, plan: ParallelPlan, capacity: float) -> MemoryBreakdown:
    """Bytes per device of one stage: the one place where state, activations, buffers,
    fragmentation and the runtime reserve are counted."""
    dpd = plan.cp * plan.dp  # dense parameters: DP x CP (EP is carved out of DP)
    dpe = plan.edp  # expert parameters: the expert-data-parallel replicas (cp*dp/ep)
    dense, expert = st.dense_params, st.expert_params

    def sharded(per_param: float, from_stage: int) -> float:
        if plan.zero >= from_stage:
            return per_param * (dense / dpd + expert / dpe)
        return per_param * (dense + expert)

    sb = state_bytes(plan)
    # CPU offload runs without a pipeline (one micro-batch in flight): the offloaded
    # layers' bytes leave the GPU (sim/training/offload.py).
    acts = sum(st.chunk_activations[c] * n for c, n in st.in_flight.items()) - st.offloaded
    buffers = COLLECTIVE_BUFFERS * st.largest_comm + P2P_BUFFERS * st.p2p
    return MemoryBreakdown(
        st.stage,
        sharded(sb.weights, StateBytes.WEIGHTS_ZERO),
        sharded(sb.gradients, StateBytes.GRADIENTS_ZERO),
        sharded(sb.optimizer, StateBytes.OPTIMIZER_ZERO),
        acts,
        buffers,
        plan.fragmentation * (acts + buffers),
        plan.runtime_reserved_gib * GIB,
        dict(st.in_flight),
        capacity,
        st.per_layer_activations,
        st.chunk_activations,
        st.offloaded,
    )


def peak_stage(stages: list[MemoryBreakdown]) -> MemoryBreakdown:
    """The stage that needs the most memory (it decides whether the plan fits)."""
    return max(stages, key=lambda m: m.total)


def format_breakdown(mem: MemoryBreakdown) -> str:
    parts = [
        ("weights", mem.weights),
        ("gradients", mem.gradients),
        ("optimizer", mem.optimizer),
        ("activations", mem.activations),
        ("comm buffers", mem.comm_buffers),
        ("fragmentation", mem.fragmentation),
        ("reserved", mem.reserved),
    ]
    body = ", ".join(f"{name} {value / GIB:.1f}" for name, value in parts)
    return (
        f"stage {mem.stage}: {mem.total / GIB:.1f} GiB needed of {mem.capacity / GIB:.1f} GiB "
        f"({body} GiB)"
        + (f"; {mem.offloaded / GIB:.1f} GiB of activations offloaded to host memory"
           if mem.offloaded else "")
    )
