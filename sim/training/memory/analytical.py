"""The analytical mode: per-stage memory without lowering the model.

The full mode (``full.py``) builds the forward items of every slot of every pipeline
stage and walks each stage's schedule. Most of that is repetition: every dense layer of
a model holds the same ops, every MoE layer differs only by its routing load, and the
micro-batches in flight follow from the schedule's warm-up length. So this mode

* builds the items of one slot per *kind* — embedding, dense layer, MoE layer (at the
  coolest and hottest routing load among the stage's MoE layers, interpolated to each
  layer's load), MTP module, output head — and reads their parameters, saved
  activation bytes and largest collective with the same functions the lowering uses
  (``layers.weight_params``, ``layers.activation_bytes``);
* places them on stages by the plan's slot assignment (``parallel.stage_slots``: even or
  uneven splits, no-op padding, MTP after the last layer, embedding on virtual stage 0,
  head on the last one);
* counts micro-batches in flight in closed form (``in_flight``, equal to
  ``schedules.peak_in_flight`` of the schedule's order);
* and hands the result to ``rules.stage_memory``, as the full mode does.

No backward, recompute, segment, schedule order or price is built: a check costs a few
slot builds instead of all of them (milliseconds for a 61-layer MoE, cached across the
plans of a search that share TP, EP, CP and micro-batch size).

``static_lower_bound`` goes one step further for a whole plan space: a closed form in
the model's parameter count that no plan of the space can go below.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from xpusim.hwprofiles.spec import System
from xpusim.sim.ir import dtype_bytes
from xpusim.sim.models.counting import attention_matmul_params, dense_ffn_width, mlp_matmul_params
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import (
    Coord,
    Layout,
    ParallelPlan,
    microbatches,
    stage_slots,
    validate_plan,
)
from xpusim.sim.placement import job_devices, rank_nodes
from xpusim.sim.training import layers as L
from xpusim.sim.training.items import act_dtype
from xpusim.sim.training.lowering import merges_fb
from xpusim.sim.training.memory.rules import (
    GIB,
    MemoryBreakdown,
    StageState,
    stage_memory,
    unsharded_and_sharded_bytes,
)
from xpusim.sim.training.offload import offloaded_bytes
from xpusim.sim.training.routing import hot_factors


def in_flight(
    stage: int, stages: int, chunks: int, m: int, interleaved: bool, extra_warmup: int = 0
) -> dict[int, int]:
    """Micro-batches alive per chunk when stage ``stage``'s live count first peaks: the
    closed form of ``peak_in_flight(stage_order(...))``.

    The schedule runs ``w`` warm-up forwards and then alternates F and B, so the live
    count first peaks at the first steady forward, w + 1 (or at all forwards when the
    warm-up is the whole step). 1F1B: w = p - s - 1 (+1 with merged F/B overlap), one
    chunk. Interleaved: w = 2(p - s - 1) + (v - 1)p, forwards in groups of p
    micro-batches per chunk, so the first k forwards hold p per chunk per full round of
    p·v and the remainder fills chunks in order. One stage with several chunks runs
    each micro-batch through all of them before its backward: one per chunk.
    """
    if interleaved and stages > 1:
        total = m * chunks
        warmup = min((stages - stage - 1) * 2 + (chunks - 1) * stages + extra_warmup, total)
        k = min(warmup + 1, total)
        rounds, rest = divmod(k, stages * chunks)
        counts = {c: rounds * stages + min(max(rest - c * stages, 0), stages) for c in range(chunks)}
        return {c: n for c, n in counts.items() if n}
    if chunks > 1:
        return {c: 1 for c in range(chunks)}
    warmup = min(stages - stage - 1 + extra_warmup, m)
    return {0: min(warmup + 1, m)}


@dataclass(frozen=True)
class SlotFigures:
    """What one slot puts on its rank."""

    dense: float  # weight elements
    expert: float
    act: float  # bytes one micro-batch keeps until its backward
    largest_comm: float  # per-rank bytes of its largest collective


def slot_figures(plan: ParallelPlan, items: list[L.Item], input_bytes: float) -> SlotFigures:
    """The figures of one slot, by the rules ``lowering.build_chunks`` applies to it."""
    d, e = L.weight_params(items)  # matrices and embedding tables, from the ops' roles
    act = L.activation_bytes(items, plan.recompute, plan.recompute_modules, input_bytes)
    largest = max((it.nbytes for it in items if isinstance(it, L.Comm)), default=0.0)
    return SlotFigures(d, e, act, largest)


def _slot_kind(spec: ModelSpec, name: str) -> str:
    if name.startswith("L"):
        return "moe" if spec.is_moe_layer(int(name[1:])) else "dense"
    if name.startswith("mtp"):
        return "mtp"
    return name  # "embedding", "head", "noop"


def _slot_key(plan: ParallelPlan) -> ParallelPlan:
    """``plan`` with the fields slot items never read set to fixed values: the items
    depend on TP/EP/CP/SP, micro-batch, dtype, recompute and attention settings, never on
    how layers are cut into stages, on replication or on the routing draw (the load is
    passed on its own), so the plans of a search that differ only there share figures."""
    return replace(plan, pp=1, vpp=1, dp=1, gbs=1, zero=0, layer_split=(), pad_layers=-1,
                   schedule="auto", moe_routing="uniform", seed=0)


@lru_cache(maxsize=4096)
def _cached_figures(
    spec: ModelSpec, plan: ParallelPlan, name: str, layer: int, hot: float, spans: bool
) -> SlotFigures:
    tokens = plan.mbs * plan.seq / plan.cp
    loads = {layer: hot} if spec.moe else {}
    ctx = L.SlotContext(spec, plan, tokens, loads, loads, spans)
    if name == "embedding":
        items = L.embedding_items(ctx)
    elif name == "head":
        items = L.head_items(ctx)
    else:
        items = L.slot_items(ctx, name)
    seq_shard = plan.tp if plan.sequence_parallel else 1
    input_bytes = tokens * spec.hidden * dtype_bytes(act_dtype(plan)) / seq_shard
    return slot_figures(plan, items, input_bytes)


def _ep_spans_nodes(plan: ParallelPlan, layout: Layout, stage: int, per_node: int) -> bool:
    """Whether the EP group of stage ``stage``'s representative rank (coordinates 0 but
    pp) leaves its server: its ranks span [first, last], so it does when those two do."""
    dims = ("tp", "ep") if plan.tp_extend_ep else ("ep",)
    experts = layout.for_experts()  # folded over TP x CP x DP with plan.moe_fold
    first = experts.rank(Coord(0, 0, 0, 0, stage))
    top = {d: experts.sizes[d] - 1 if d in dims else 0 for d in ("tp", "cp", "ep", "dp")}
    last = experts.rank(Coord(pp=stage, **top))
    return first // per_node != last // per_node


@dataclass(frozen=True)
class _Model:
    """Per-plan facts every stage reads."""

    spec: ModelSpec
    plan: ParallelPlan
    key: ParallelPlan  # the plan with its stage-cutting fields normalised (cache key)
    hot: dict[int, float]  # MoE layer -> busiest EP rank's load / mean
    first: dict[bool, int]  # is MoE -> the first layer of that kind (the one built)

    def slot_key(self, name: str) -> ParallelPlan:
        """The cache key of slot ``name``: with ``--recompute-every`` k > 1 the slot's own
        policy (a layer that recomputes or one that keeps all), so a layer kind is built
        at most twice, not once per layer."""
        if self.plan.recompute_every == 1:
            return self.key
        return replace(self.key, recompute=self.plan.layer_recompute(name), recompute_every=1)

    def figures(self, name: str, loads: tuple[float, float], spans: bool) -> SlotFigures:
        """The figures of slot ``name``, built once per kind: a dense layer as the
        model's first dense layer, an MTP module at the last layer's load (its block is
        built like the last layer), an MoE layer as the first MoE layer at the stage's
        coolest and hottest loads ``loads``, interpolated to its own."""
        spec, key = self.spec, self.slot_key(name)
        kind = _slot_kind(spec, name)
        if kind == "dense":
            layer = self.first[False]
            return _cached_figures(spec, key, f"L{layer}", layer, 1.0, spans)
        if kind == "mtp":
            last = spec.layers - 1
            return _cached_figures(spec, key, "mtp0", last, self.hot.get(last, 1.0), spans)
        if kind != "moe":
            return _cached_figures(spec, key, name, 0, 1.0, spans)
        layer, (lo, hi) = self.first[True], loads
        load = self.hot.get(int(name[1:]), 1.0)
        top = _cached_figures(spec, key, f"L{layer}", layer, hi, spans)
        if load == hi:
            return top
        low = _cached_figures(spec, key, f"L{layer}", layer, lo, spans)
        if load == lo:
            return low
        # The load scales the routed tokens, and they enter the saved tensors (expert
        # GEMM inputs, activation outputs) linearly: interpolating is exact. Weights do
        # not depend on it; the stage's largest collective is the hottest layer's.
        act = low.act + (top.act - low.act) * (load - lo) / (hi - lo)
        return replace(top, act=act)


def _stage_state(model: _Model, stage: int, slots: list[list[str]], spans: bool,
                 flight: dict[int, int]) -> StageState:
    """One stage's parameters, activations and buffers, summed slot by slot in the
    order ``build_chunks`` sums them (so uniform routing gives identical floats)."""
    spec, plan = model.spec, model.plan
    last_v = plan.pp * plan.vpp - 1
    works = []
    for c in range(plan.vpp):
        v = c * plan.pp + stage
        head = ["head"] if v == last_v else []
        works.append((["embedding"] if v == 0 else []) + slots[v] + head)
    moe_loads = [
        model.hot.get(int(n[1:]), 1.0) for w in works for n in w if _slot_kind(spec, n) == "moe"
    ]
    loads = (min(moe_loads, default=1.0), max(moe_loads, default=1.0))
    dense_by_chunk, expert_by_chunk, acts = [], [], []
    layer_acts: list[float] = []  # per transformer layer, for CPU offload
    largest = per_layer = 0.0
    for work in works:
        dense = expert = act = 0.0
        for name in work:
            f = model.figures(name, loads, spans)
            dense += f.dense
            expert += f.expert
            act += f.act
            largest = max(largest, f.largest_comm)
            if name.startswith("L"):
                per_layer = max(per_layer, f.act)
                layer_acts.append(f.act)
        dense_by_chunk.append(dense)
        expert_by_chunk.append(expert)
        acts.append(act)
    seq_shard = plan.tp if plan.sequence_parallel else 1
    p2p = (plan.mbs * plan.seq / plan.cp * spec.hidden * dtype_bytes(act_dtype(plan))
           / seq_shard)
    return StageState(stage, sum(dense_by_chunk), sum(expert_by_chunk), tuple(acts), flight,
                      largest, p2p if plan.pp > 1 else 0.0, per_layer,
                      offloaded_bytes(layer_acts, plan.cpu_offload_layers))


def analytical_memory(
    spec: ModelSpec, system: System, plan: ParallelPlan
) -> list[MemoryBreakdown]:
    """Memory per pipeline stage, like ``estimate_memory`` but from one slot per kind.

    Equal to the full mode (to the last bit) under uniform routing; with routing skew it
    counts every MoE layer of a stage at the stage's hottest load, so it is never below
    the full mode (see the package docstring for the band)."""
    from xpusim.sim.training.simulate import resolve_attention  # simulate imports us

    plan = resolve_attention(validate_plan(spec, plan, job_devices(plan, system)), system)
    n_ep = plan.ep * (plan.tp if plan.tp_extend_ep else 1)
    hot = hot_factors(spec, plan.moe_routing, n_ep, plan.seed) if spec.moe else {}
    first: dict[bool, int] = {}
    for i in range(spec.layers):
        first.setdefault(spec.is_moe_layer(i), i)
    model = _Model(spec, plan, _slot_key(plan), hot, first)
    slots = stage_slots(spec, plan)
    layout = Layout(plan)
    m = microbatches(plan)
    extra = int(merges_fb(spec, plan))
    out = []
    for stage in range(plan.pp):
        spans = spec.moe is not None and _ep_spans_nodes(
            plan, layout, stage, rank_nodes(plan, system.devices_per_node))
        flight = in_flight(stage, plan.pp, plan.vpp, m, plan.interleaved, extra)
        state = _stage_state(model, stage, slots, spans, flight)
        out.append(stage_memory(state, plan, system.device.hbm_capacity))
    return out


# ---------------------------------------------------------------- a whole plan space


def _layer_params(spec: ModelSpec, layer: int) -> tuple[float, float]:
    """(dense, expert) matmul weights of one layer, nothing replicated."""
    dense = float(attention_matmul_params(spec))
    moe = spec.moe
    if moe is None or not spec.is_moe_layer(layer):
        return dense + mlp_matmul_params(spec, dense_ffn_width(spec)), 0.0
    dense += spec.hidden * moe.num_experts  # router
    dense += moe.shared_experts * mlp_matmul_params(spec, moe.shared_ffn)
    return dense, float(moe.num_experts * mlp_matmul_params(spec, moe.expert_ffn))


def model_weight_params(spec: ModelSpec) -> tuple[float, float]:
    """(dense, expert) weight elements of the model as the full mode counts them, with
    nothing replicated: matmul weights, the input table and the output head (a GEMM of
    its own even when tied), and per MTP module its 2h x h projection, a block like the
    last layer's, its table lookup and the head. Norms and biases are left out, as the
    full mode leaves them out."""
    table = float(spec.vocab * spec.hidden)
    dense, expert = 2.0 * table, 0.0
    for layer in range(spec.layers):
        d, e = _layer_params(spec, layer)
        dense, expert = dense + d, expert + e
    for _ in range(spec.mtp_layers):
        d, e = _layer_params(spec, spec.layers - 1)
        dense += d + 2.0 * spec.hidden * spec.hidden + 2.0 * table
        expert += e
    return dense, expert


def static_lower_bound(
    spec: ModelSpec, plan: ParallelPlan, devices: int, tp: int, pp: int, ep: int
) -> float:
    """Bytes per device that every plan with degrees up to ``tp``, ``pp``, ``ep`` on
    ``devices`` devices needs at least, with ``plan``'s dtypes, ZeRO stage and reserve.

    On any such plan the busiest stage holds at least the mean over stages; TP shards a
    parameter at most ``tp`` ways (replicated ones count more), so a rank holds at least
    dense/(tp·pp) + expert/(tp·ep·pp) of the weights; what ZeRO shards is divided by the
    data-parallel group, which leaves at least (dense + expert)/devices per rank whatever
    the degrees. Activations, buffers and fragmentation only add."""
    dense, expert = model_weight_params(spec)
    kept, sharded = unsharded_and_sharded_bytes(plan)
    per_rank = dense / (tp * pp) + expert / (tp * ep * pp)
    return kept * per_rank + sharded * (dense + expert) / devices + plan.runtime_reserved_gib * GIB
