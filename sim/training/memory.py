"""Memory per device during training, with an explicit out-of-memory verdict.

Per rank (Megatron-LM with the distributed optimizer; Rajbhandari et al. 2020 for ZeRO):

* weights: ``dtype`` bytes per parameter (ZeRO-3: sharded over DP);
* gradients: main grads in ``grad_reduce_dtype`` (fp32 by default; ZeRO >= 2 shards them);
* optimizer: fp32 master copy + Adam m and v = 12 B per parameter (ZeRO >= 1 shards them);
  dense parameters shard over the DP x CP group, expert parameters over the
  expert-data-parallel group (dp/ep x cp);
* activations: bytes each micro-batch keeps per model chunk until its backward
  (``layers.activation_bytes``: the saved inputs of each op, minus what the
  recompute policy drops) times the most micro-batches in flight in the schedule
  (1F1B: p - s on stage s; interleaved: counted from the ordering);
* communication buffers: send and receive buffers of the largest collective of a
  layer and of the pipeline send/receive, double-buffered;
* fragmentation: a fraction of the dynamic (activation + buffer) memory;
* runtime reserve: framework and collective-library workspace (plan field).

Parameters are read off the GEMMs the lowering builds, so the count is the
simulated model's; norms and biases (< 0.1%) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from xpusim.sim.ir import dtype_bytes
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.schedules import peak_in_flight
from xpusim.sim.training import layers as L
from xpusim.sim.training.lowering import RankPlan

OPTIMIZER_BYTES_PER_PARAM = 12.0  # fp32 master weights + Adam first and second moments
GIB = 1024**3


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
        }


def rank_memory(rp: RankPlan, plan: ParallelPlan, capacity: float) -> MemoryBreakdown:
    dpd = len(rp.groups["dp_dense"])
    dpe = len(rp.groups["dp_expert"])
    dense = sum(ch.dense_params for ch in rp.chunks)
    expert = sum(ch.expert_params for ch in rp.chunks)
    b = dtype_bytes(plan.dtype)
    gb = dtype_bytes(plan.grad_reduce_dtype)

    def sharded(per_param: float, from_stage: int) -> float:
        if plan.zero >= from_stage:
            return per_param * (dense / dpd + expert / dpe)
        return per_param * (dense + expert)

    weights = sharded(b, 3)
    grads = sharded(gb, 2)
    optimizer = sharded(OPTIMIZER_BYTES_PER_PARAM, 1)
    in_flight = peak_in_flight(rp.order)
    acts = sum(rp.chunks[c].act_bytes * n for c, n in in_flight.items())
    largest = max(
        (
            it.nbytes
            for ch in rp.chunks
            for _, items in ch.slots
            for it in items
            if isinstance(it, L.Comm)
        ),
        default=0.0,
    )
    p2p = max(ch.input_bytes for ch in rp.chunks) if plan.pp > 1 else 0.0
    buffers = 2.0 * largest + 4.0 * p2p
    frag = plan.fragmentation * (acts + buffers)
    per_layer = max(
        (
            L.activation_bytes(items, plan.recompute, plan.recompute_modules, ch.input_bytes)
            for ch in rp.chunks
            for name, items in ch.slots
            if name.startswith("L")
        ),
        default=0.0,
    )
    return MemoryBreakdown(
        rp.stage,
        weights,
        grads,
        optimizer,
        acts,
        buffers,
        frag,
        plan.runtime_reserved_gib * GIB,
        in_flight,
        capacity,
        per_layer,
        tuple(ch.act_bytes for ch in rp.chunks),
    )


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
    )
