"""What each simulated rank holds: its model chunks (virtual stages) with their forward
items, parameters and activation bytes, its named collective groups, and its schedule.

The forward items come from ``sim.training.layers`` (each op with its role); parameters
and saved activations are read off the roles (``sim.training.saved``). Hardware enters
only through the topology: whether the EP group spans nodes (``System.devices_per_node``)
decides the hierarchical EP form.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from xpusim.hwprofiles.spec import System
from xpusim.sim.ir import dtype_bytes
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import Coord, Layout, ParallelPlan, stage_slots
from xpusim.sim.placement import rank_nodes
from xpusim.sim.schedules import Unit as SchedUnit
from xpusim.sim.training import layers as L
from xpusim.sim.training.items import act_dtype
from xpusim.sim.training.routing import hot_factors, rank_loads


@dataclass
class Chunk:
    """The model chunk (virtual stage) ``chunk`` of one rank."""

    vstage: int
    slots: list[tuple[str, list[L.Item]]]
    dense_params: float
    expert_params: float
    act_bytes: float  # alive per in-flight micro-batch
    input_bytes: float  # the chunk's input activation (what is sent between stages)
    # (dense, expert) parameters of each slot, in slot order: ZeRO-3 gathers and
    # reduce-scatters them one slot (layer) at a time, as FSDP does.
    slot_params: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class RankPlan:
    rank: int
    stage: int
    groups: dict[str, tuple[int, ...]]
    chunks: list[Chunk]
    order: list[SchedUnit] = field(default_factory=list)
    merge_fb: bool = False  # interleave steady-state F/B pairs at EP collectives (overlap_ep)
    # Word-embedding elements on this rank shared between the first and the last pipeline
    # stage (tied output head, or MTP modules that reuse the input embedding): their
    # gradients are all-reduced between the two stages once per step (Megatron's
    # embedding group, ``_allreduce_word_embedding_grads``). 0: nothing shared.
    shared_embedding: float = 0.0


def merges_fb(spec: ModelSpec, plan: ParallelPlan) -> bool:
    """Whether adaptive pipe overlap applies: an MoE model with expert all-to-alls, on a
    schedule that can merge a forward and a backward (``ParallelPlan.fb_mergeable``: no
    pipelining, or interleaved; plain 1F1B with PP > 1 runs unmerged, as the frameworks do)."""
    has_a2a = plan.ep > 1 or (plan.tp_extend_ep and plan.tp > 1)
    return plan.overlap_ep and plan.fb_mergeable and spec.moe is not None and has_a2a


def slot_context(
    spec: ModelSpec, plan: ParallelPlan, system: System, layout: Layout, rank: int, full_ranks: bool
) -> tuple[L.SlotContext, L.SlotContext]:
    """(compute context, comm context): loads for the rank's own experts and the busiest rank."""
    ep_group = expert_group(plan, layout, rank)
    per_node = rank_nodes(plan, system.devices_per_node)  # consecutive ranks per node
    spans = len({g // per_node for g in ep_group}) > 1
    n = len(ep_group)
    hot = hot_factors(spec, plan.moe_routing, n, plan.seed) if spec.moe else {}
    own = hot
    if full_ranks and spec.moe:
        idx = ep_group.index(rank)
        own = {i: float(rank_loads(spec, plan.moe_routing, n, i, plan.seed)[idx]) for i in hot}
    tokens = plan.mbs * plan.seq / plan.cp
    swizzle = system.device.arch == "nvidia"  # cuBLASLt block-scale layout (lowprec.py)
    non_tn = system.device.kernels.non_tn_fp8_gemm  # one FP8 copy per cast (lowprec.py)
    comp = L.SlotContext(spec, plan, tokens, own, hot, spans, swizzle, non_tn)
    return comp, L.SlotContext(spec, plan, tokens, hot, hot, spans, swizzle, non_tn)


def with_pp(layout: Layout, rank: int, stage: int) -> Coord:
    """The coordinates of ``rank`` moved to pipeline stage ``stage``."""
    return replace(layout.coord(rank), pp=stage)


def expert_group(plan: ParallelPlan, layout: Layout, rank: int) -> tuple[int, ...]:
    """The ranks sharing ``rank``'s all-to-all: TP x EP under TP-extend-EP, else EP, in
    the MoE layers' layout (``Layout.for_experts``: folded over TP x CP x DP with
    ``plan.moe_fold``)."""
    dims = ("tp", "ep") if plan.tp_extend_ep else ("ep",)
    return layout.for_experts().group(rank, dims)


def rank_groups(plan: ParallelPlan, layout: Layout, rank: int) -> dict[str, tuple[int, ...]]:
    experts = layout.for_experts()  # ``layout`` itself unless the plan folds
    return {
        "tp": layout.group(rank, ("tp",)),
        "cp": layout.group(rank, ("cp",)),
        "ep": expert_group(plan, layout, rank),
        "ep_inter": experts.group(rank, ("ep",)),
        "ep_intra": experts.group(rank, ("tp",)),
        "ep_tp": experts.group(rank, ("tp",)),  # expert-TP gather/scatter around the dispatch
        "dp_dense": layout.group(rank, ("cp", "ep", "dp")),
        # Replicas of this rank's expert shard (cp*dp/ep; with folding the experts' layout
        # has cp of size 1 and dp of size cp*dp/ep, Megatron's expert-data-parallel group).
        "dp_expert": experts.group(rank, ("cp", "dp")),
        "embed": tuple(sorted({layout.rank(with_pp(layout, rank, s)) for s in (0, plan.pp - 1)})),
        "world": tuple(range(plan.world)),
    }


def build_chunks(
    spec: ModelSpec, plan: ParallelPlan, ctx: L.SlotContext, stage: int
) -> list[Chunk]:
    """The chunks of pipeline stage ``stage``: their slots' forward items, parameters
    (matrices and embedding tables, from the ops' roles) and saved activations."""
    slots = stage_slots(spec, plan)
    last_v = plan.pp * plan.vpp - 1
    b = dtype_bytes(act_dtype(plan))  # a stage's input: bf16 under FP8 / FP4
    seq_shard = plan.tp if plan.sequence_parallel else 1
    input_bytes = ctx.tokens * spec.hidden * b / seq_shard
    chunks = []
    for c in range(plan.vpp):
        v = c * plan.pp + stage
        work: list[tuple[str, list[L.Item]]] = []
        if v == 0:
            work.append(("embedding", L.embedding_items(ctx)))
        for slot in slots[v]:
            work.append((slot, L.slot_items(ctx, slot)))
        if v == last_v:
            work.append(("head", L.head_items(ctx)))
        dense = expert = act = 0.0
        per_slot = []
        for name, items in work:
            d, e = L.weight_params(items)
            dense += d
            expert += e
            per_slot.append((d, e))
            policy = plan.layer_recompute(name)
            act += L.activation_bytes(items, policy, plan.recompute_modules, input_bytes)
        chunks.append(Chunk(v, work, dense, expert, act, input_bytes, per_slot))
    return chunks
