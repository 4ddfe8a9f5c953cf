"""``simulate_training``: one training step of a model, plan and system, end to end.

Scale by symmetry: ranks of one pipeline stage run the same program (TP, CP, DP and
EP peers; EP peers differ only in routing load, and the busiest one sets the pace),
so by default one representative rank per stage is simulated, with every
collective's group holding the real global ranks so it is costed on the full
topology. ``full_ranks=True`` simulates every rank (small jobs): the check that the
reduction is right.

A step is lowered once (``lower_step``: unpriced per-rank graphs, sim.training.lowering)
and priced on a system (``price_step``: the device's cost model and the system's
network give every segment, op and collective its duration; the engine schedules the
priced graphs). Pricing the same ``LoweredStep`` on another system of the same shape
(same device count and devices per node, same attention implementation) answers a
hardware what-if without lowering again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.cost.attention_impl import check_impl, default_impl
from xpusim.sim.cost.pricing import Pricing
from xpusim.sim.engine import Engine, SimResult
from xpusim.sim.errors import InputError
from xpusim.sim.ir import Collective, RankGraph, Segment
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import (
    Coord,
    Layout,
    ParallelPlan,
    microbatches,
    validate_plan,
)
from xpusim.sim.placement import device_of, job_devices
from xpusim.sim.schedules import stage_order
from xpusim.sim.training.emitter import EmitCache
from xpusim.sim.training.framework import framework_profile
from xpusim.sim.training.lowering import (
    LoweredRank,
    RankPlan,
    build_chunks,
    lower_rank,
    merges_fb,
    rank_groups,
    slot_context,
)
from xpusim.sim.training.lowprec import SWIZZLE_KIND, is_scale_swizzle
from xpusim.sim.training.memory import (
    MemoryBreakdown,
    estimate_memory,  # noqa: F401 - re-exported: callers import it from here
    rank_memory,
)
from xpusim.sim.training.offload import rank_exposed_s
from xpusim.sim.training.result import (  # noqa: F401  (re-exported)
    OFFLOAD_KEY,
    StageStats,
    TrainingResult,
    device_peaks,
    explain_terms,
    mfu_conventions,
    oom_message,
    stage_stats,
)
from xpusim.sim.training.te_moe_host import te_host_scale
from xpusim.sim.training.units import Piece

FULL_RANK_LIMIT = 128
COMM_LABELS = ("tp", "ep", "cp", "dp", "pp")


@dataclass(frozen=True)
class Sensitivity:
    """What-if knobs for gap analysis (defaults: none). Not calibration: each is a question
    ("what if grouped expert GEMMs ran 25% slower?"), reported next to the headline.

    ``slowdown`` multiplies the modelled time of ops: keys are op kinds ("gemm",
    "attention", "elementwise", ...) or "experts" (the routed experts' ops,
    ``Role.expert``: their grouped GEMMs, activation, casts and backward, which then take
    no kind factor). ``op_overhead_s`` adds a fixed time to every op (host dispatch that
    the device waits for when the launch queue runs dry).
    """

    slowdown: tuple[tuple[str, float], ...] = ()
    op_overhead_s: float = 0.0

    def wrap(self, op_time):
        if not self.slowdown and not self.op_overhead_s:
            return op_time
        factors = dict(self.slowdown)
        extra = self.op_overhead_s

        def timed(op):
            key = "experts" if op.role.expert and "experts" in factors else str(op.kind)
            return op_time(op) * factors.get(key, 1.0) + extra

        return timed


@dataclass(frozen=True)
class TrainingOptions:
    full_ranks: bool = False
    progress: bool = False
    include_mtp_in_mfu: bool = False  # MFU convention: main model only (DeepSeek/Pangu count 6N)
    sensitivity: Sensitivity = Sensitivity()
    attention_impl: str | None = None  # None: the device's default (sim.cost.attention_impl)
    exact: bool = False  # simulate every micro-batch (sim.training.steady), keep records


def _progress(options: TrainingOptions, message: str) -> None:
    if options.progress:
        sys.stderr.write(f"xpusim train: {message}\n")
        sys.stderr.flush()


@dataclass
class StepCache:
    """What lowerings of one step at several micro-batch counts share (the steady-state
    path lowers two): each stage's chunks and each unit's pieces depend on the plan but
    not on the global batch, so they are built once and their segments priced once.
    ``key`` is the plan without its global batch; a cache meets one such plan only."""

    key: tuple[ParallelPlan, TrainingOptions] | None = None
    chunks: dict[tuple, list] = field(default_factory=dict)
    pieces: dict[tuple[int, str], list[Piece]] = field(default_factory=dict)
    groups: dict[int, dict[str, tuple[int, ...]]] = field(default_factory=dict)  # per rank
    emit: dict[int, EmitCache] = field(default_factory=dict)  # per rank

    def check(self, plan: ParallelPlan, options: TrainingOptions) -> None:
        key = (replace(plan, gbs=0), options)
        if self.key is None:
            self.key = key
        elif self.key != key:
            raise ValueError("StepCache: shared by plans that differ beyond the global batch")

    def emit_cache(self, rank: int) -> EmitCache:
        return self.emit.setdefault(rank, EmitCache())


def rank_plans(
    spec: ModelSpec, system: System, plan: ParallelPlan, full_ranks: bool = False,
    cache: StepCache | None = None, orders: bool = True,
) -> tuple[Layout, list[RankPlan]]:
    """Rank plans to simulate: one per stage (coordinates 0 elsewhere), or all ranks;
    the stages' chunks from ``cache`` when given. ``orders=False``: no schedule order
    (an empty one): the memory estimates read only its peak (``rank_state``)."""
    layout = Layout(plan)
    if full_ranks:
        if plan.world > FULL_RANK_LIMIT:
            raise InputError(
                f"--full-ranks simulates every rank; {plan.world} ranks is over the "
                f"limit of {FULL_RANK_LIMIT} — drop --full-ranks"
            )
        ranks = list(range(plan.world))
    else:
        ranks = [layout.rank(Coord(0, 0, 0, 0, s)) for s in range(plan.pp)]
    m = microbatches(plan)
    chunks = cache.chunks if cache is not None else {}
    groups = cache.groups if cache is not None else {}
    out = []
    for r in ranks:
        stage = layout.coord(r).pp
        ctx, _ = slot_context(spec, plan, system, layout, r, full_ranks)
        key = (stage, tuple(sorted(ctx.hot.items())), tuple(sorted(ctx.hot_comm.items())))
        if key not in chunks:
            chunks[key] = build_chunks(spec, plan, ctx, stage)
        # Merged F/B overlap hands each forward on later: one more warm-up micro-batch
        # keeps the pipeline fed (MindSpeed megatron-moe-fb-overlap.md).
        merge = merges_fb(spec, plan)
        order = (stage_order(stage, plan.pp, plan.vpp, m, plan.interleaved, int(merge))
                 if orders else [])
        shared = (
            spec.vocab / plan.tp * spec.hidden if spec.tie_embeddings or spec.mtp_layers else 0.0
        )
        if r not in groups:
            groups[r] = rank_groups(plan, layout, r)
        out.append(RankPlan(r, stage, groups[r], chunks[key], order, merge, shared))
    return layout, out


def resolve_attention(plan: ParallelPlan, system: System, impl: str | None = None) -> ParallelPlan:
    """The plan with its attention implementation named: ``impl`` (the option), else the
    plan's, else the device's default stack. It prices the attention ops and decides
    whether the S x S scores are kept for the backward (``layers.attention_scores_saved``)."""
    from xpusim.sim.cost.attention_blackwell import check_trainable
    from xpusim.sim.cost.attention_impl import check_impl, default_impl

    name = impl or plan.attention_impl or default_impl(system.device)
    name = check_impl(system.device, name, "--attention-impl")
    check_trainable(name)
    return replace(plan, attention_impl=name)


_COMM_FN: list = []  # [(system, comm_time)] of recently simulated systems, newest first
_KEEP_COMM_FN = 4


def _placed(
    plan: ParallelPlan, system: System, fn: Callable[[Collective], float]
) -> Callable[[Collective], float]:
    """``fn`` over the devices of a collective's ranks (``device_of``): the identity
    unless the plan uses ``per_node`` devices of each node, where the network must see
    rank r on device r mod k of node r // k."""
    k = plan.per_node
    dpn = system.devices_per_node
    if not k or k == dpn:
        return fn

    @lru_cache(maxsize=65536)
    def devices(group: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(device_of(plan, r, dpn) for r in group)

    # Times by what ``fn`` reads (kind, group, bytes, algorithm: ``CommTime``), for this
    # pricing's life: the engines ask once per collective object (~158,000 over the
    # training rows of ``validate --published``), and a ``replace`` per ask cost more
    # than the lookup it leads to.
    known: dict[tuple[Any, tuple[int, ...], float, str], float] = {}

    def comm_time(coll: Collective) -> float:
        key = (coll.kind, coll.group, coll.bytes, coll.algorithm)
        t = known.get(key)
        if t is None:
            t = known[key] = fn(replace(coll, group=devices(coll.group)))
        return t

    return comm_time


def _comm_time_for(system: System) -> Callable[[Collective], float]:
    """The network's collective pricing for ``system``, memoised across the steps
    simulated on an equal System (the steady-state path runs two, a study many, and a
    study's worker process receives a fresh copy of the system with each task):
    ``comm_time_fn`` caches per (kind, group, bytes, algorithm), a pure function of the
    frozen System's values, so reusing it changes no result, only how often a
    collective is costed. A what-if's ``replace(system, ...)`` with other values is
    another key."""
    for known, fn in _COMM_FN:
        if known is system or known == system:
            return fn
    from xpusim.sim.network import comm_time_fn

    fn = comm_time_fn(system)
    _COMM_FN.insert(0, (system, fn))
    del _COMM_FN[_KEEP_COMM_FN:]
    return fn


@dataclass
class LoweredStep:
    """One training step lowered to unpriced per-rank graphs (``lower_step``), ready to
    be priced on any system of the shape it was lowered for (``price_step``).

    ``plan`` is validated, with its attention implementation named; ``devices`` and
    ``devices_per_node`` are the topology the lowering read (the plan's DP degree, the
    hierarchical-EP choice); ``attention_request`` the implementation asked for ("" =
    the device's default).
    """

    spec: ModelSpec
    plan: ParallelPlan
    options: TrainingOptions
    layout: Layout
    ranks: list[LoweredRank]
    devices: int
    devices_per_node: int
    attention_request: str
    lower_s: float

    @property
    def graphs(self) -> list[RankGraph]:
        return [lr.graph for lr in self.ranks]

    @property
    def tasks(self) -> int:
        """Tasks as one per piece (a chain task counts its parts)."""
        return sum(lr.tasks for lr in self.ranks)


def lower_step(
    spec: ModelSpec, system: System, plan: ParallelPlan, options: TrainingOptions | None = None,
    cache: StepCache | None = None,
) -> LoweredStep:
    """Lower one training step, every micro-batch, to unpriced graphs; raises InputError
    for an impossible plan. ``cache`` shares chunks and unit pieces with other lowerings
    of the same plan at other global batches (``StepCache``)."""
    options = options or TrainingOptions()
    t0 = time.perf_counter()
    plan = validate_plan(spec, plan, job_devices(plan, system))
    requested = options.attention_impl or plan.attention_impl
    # The option, else the plan's, else the device's default (memory depends on it too).
    plan = resolve_attention(plan, system, options.attention_impl)
    _progress(
        options,
        f"plan tp={plan.tp} pp={plan.pp} vpp={plan.vpp} dp={plan.dp} ep={plan.ep} "
        f"cp={plan.cp} on {plan.world} devices, {microbatches(plan)} micro-batches",
    )
    if cache is not None:
        cache.check(plan, options)
    layout, rps = rank_plans(spec, system, plan, options.full_ranks, cache)
    simulated = frozenset(rp.rank for rp in rps)
    pieces = cache.pieces if cache is not None else None
    # Chain tasks unless every task's record is asked for (exact: traces, timelines).
    ranks = [lower_rank(rp, plan, layout, simulated, not options.exact, pieces,
                        cache.emit_cache(rp.rank) if cache is not None else None)
             for rp in rps]
    step = LoweredStep(spec, plan, options, layout, ranks, system.num_devices,
                       system.devices_per_node, requested, time.perf_counter() - t0)
    _progress(options, f"lowered {step.tasks} tasks on {len(ranks)} simulated ranks "
                       f"({step.lower_s:.2f} s)")
    return step


def check_shape(step: LoweredStep, system: System) -> None:
    """Refuse to price ``step`` on a system its lowering does not describe."""
    if (system.num_devices, system.devices_per_node) != (step.devices, step.devices_per_node):
        raise InputError(
            f"system '{system.name}' has {system.num_devices} devices, "
            f"{system.devices_per_node} per node; the step was lowered for {step.devices}, "
            f"{step.devices_per_node} per node: lower it again for this system (lower_step)"
        )
    impl = step.attention_request or default_impl(system.device)
    check_impl(system.device, impl, "--attention-impl")
    if impl != step.plan.attention_impl:
        raise InputError(
            f"{system.device.name} runs attention with '{impl}' by default; the step was "
            f"lowered with '{step.plan.attention_impl}' (it decides the saved activations): "
            "name the implementation (--attention-impl) or lower it again for this system"
        )


def step_pricing(plan: ParallelPlan, system: System, options: TrainingOptions) -> Pricing:
    """How a training step is priced on ``system``: the device's kernel cost model with
    the plan's attention implementation (and the options' sensitivity), the system's
    network, and the framework's host cost per launched op."""
    return Pricing.for_system(
        system,
        plan.attention_impl,
        framework_profile(plan.framework).host_op_s,
        comm_time=_placed(plan, system, _comm_time_for(system)),
        wrap=options.sensitivity.wrap,
        host_scale=te_host_scale(system),
    )


def price_step(step: LoweredStep, system: System, pricing: Pricing | None = None,
               units: dict[tuple[int, ...], dict[str, list[float]]] | None = None
               ) -> TrainingResult:
    """The step's result on ``system``: every segment, op and collective priced on its
    hardware, the graphs scheduled by the engine. ``system`` may differ from the one the
    step was lowered on in anything but its shape (``check_shape``): device bandwidths,
    peaks and efficiencies, link bandwidths and latencies. ``pricing``: one already built
    by ``step_pricing`` for this system, plan and options (shared by the steady-state
    path's two runs, so each op is costed once), and ``units`` the breakdowns of unit
    templates that it already summed (``rank_breakdown``)."""
    check_shape(step, system)
    t0 = time.perf_counter()
    options = step.options
    pricing = pricing or step_pricing(step.plan, system, options)
    kinds = {lr.rank_plan.rank: rank_breakdown(lr, pricing, units) for lr in step.ranks}
    for lr in step.ranks:  # CPU activation offload: the copies' waits (sim/training/offload.py)
        wait = rank_exposed_s(lr.rank_plan, step.plan, system, pricing.op_time)
        if wait > 0:
            kinds[lr.rank_plan.rank][OFFLOAD_KEY] = [wait, 0.0]
    # Per-task records only for a trace or timeline (options.exact): the breakdown reads
    # the engine's streamed busy times and interval unions.
    sim = Engine(step.graphs, pricing=pricing).run(records=options.exact)
    wall = step.lower_s + time.perf_counter() - t0
    _progress(options, f"simulated {sim.makespan_s:.3f} s of training in {wall:.2f} s")
    return _result(step, system, sim, kinds, wall)


def simulate_exact(
    spec: ModelSpec, system: System, plan: ParallelPlan, options: TrainingOptions | None = None
) -> TrainingResult:
    """Simulate one training step, every op of every micro-batch; raises InputError for
    an impossible plan. ``xpusim.sim.training.steady.simulate_training`` is the usual entry:
    it calls this at two micro-batch counts and extends the steady state."""
    return price_step(lower_step(spec, system, plan, options), system)


def rank_breakdown(lr: LoweredRank, pricing: Pricing,
                   units: dict[tuple[int, ...], dict[str, list[float]]] | None = None
                   ) -> dict[str, list[float]]:
    """"phase:op kind" -> [seconds, FLOPs] of one rank: each distinct unit once (the
    caller scales by the micro-batch count), "phase:host" the exposed host time, and
    "optimizer:elementwise" the optimizer's passes. ``units``: the templates' sums kept
    by the sequence of template objects, for runs priced by the same ``pricing`` (the
    steady state's two lowerings share their unit pieces, ``StepCache``, so the second
    run's ranks sum the same objects in the same order: the same floats); each rank
    gets its own copy."""
    key = tuple([id(t) for t in lr.templates])
    kept = units.get(key) if units is not None else None
    if kept is None:
        kept = {}
        for pieces in lr.templates:
            _unit_breakdown(pieces, pricing, kept)
        if units is not None:
            units[key] = kept
    acc = {k: list(v) for k, v in kept.items()} if units is not None else kept
    prep = 0.0
    for op in lr.optimizer_prep:
        prep += pricing.op_time(op)
    step = 0.0
    for op in lr.optimizer_step:
        step += pricing.op_time(op)
    acc["optimizer:elementwise"] = [step + prep, 0.0]
    return acc


def _unit_breakdown(pieces: list[Piece], pricing: Pricing, acc: dict[str, list[float]]) -> None:
    # Units share their Segment objects (a ZeRO-3 step lists the same layer segments
    # thousands of times), so each distinct (phase, segment) is summed once and added
    # as many times as it occurs.
    counts: dict[tuple[str, int], int] = {}
    segs: dict[int, Segment] = {}
    for p in pieces:
        if p.segment is not None:
            key = (p.phase, id(p.segment))
            counts[key] = counts.get(key, 0) + 1
            segs[id(p.segment)] = p.segment
    for (phase, sid), n in counts.items():
        seg = segs[sid]
        for kind, (t, f) in _segment_kinds(seg, pricing).items():
            entry = acc.setdefault(f"{phase}:{kind}", [0.0, 0.0])
            entry[0] += t * n
            entry[1] += f * n
    for (phase, sid), n in counts.items():
        host = pricing.segment(segs[sid]).host_s
        if host > 0:
            acc.setdefault(f"{phase}:host", [0.0, 0.0])[0] += host * n


def _segment_kinds(seg: Segment, pricing: Pricing) -> dict[str, list[float]]:
    """Seconds and FLOPs of one segment's ops, per op kind."""
    kinds: dict[str, list[float]] = {}
    for op, t in zip(seg.ops, pricing.segment(seg).op_s, strict=True):
        # The MXFP8 scale swizzles get their own line in the breakdown (lowprec.py).
        label = SWIZZLE_KIND if is_scale_swizzle(op) else f"{op.kind}"
        kind = kinds.setdefault(label, [0.0, 0.0])
        kind[0] += t
        kind[1] += op.flops
    return kinds


def _result(step: LoweredStep, system: System, sim: SimResult,
            kinds: dict[int, dict[str, list[float]]], wall_s: float) -> TrainingResult:
    spec, plan, options = step.spec, step.plan, step.options
    memory_by_stage: dict[int, MemoryBreakdown] = {}
    reps: dict[int, int] = {}  # stage -> its representative rank
    for lr in step.ranks:
        rp = lr.rank_plan
        mem = rank_memory(rp, plan, system.device.hbm_capacity)
        if rp.stage not in memory_by_stage or mem.total > memory_by_stage[rp.stage].total:
            memory_by_stage[rp.stage] = mem
        reps.setdefault(rp.stage, rp.rank)
    m = microbatches(plan)
    compute_by_kind: dict[str, float] = {}
    flops_by_phase: dict[str, float] = {}
    ranks_per_stage = plan.world // plan.pp
    for rank in reps.values():
        for key, (t, f) in kinds[rank].items():
            scale = 1 if key.startswith("optimizer") else m
            compute_by_kind[key] = compute_by_kind.get(key, 0.0) + t * scale / plan.pp
            flops_by_phase[key] = flops_by_phase.get(key, 0.0) + f * scale * ranks_per_stage
    from xpusim.sim.models.counting import model_flops_per_token

    return TrainingResult(
        model=spec.name,
        system=system.name,
        plan=plan,
        devices=plan.world,
        # The offload waits (per micro-batch, on the compute stream) add to the engine's step.
        step_time_s=sim.makespan_s + m * max(k.get(OFFLOAD_KEY, [0.0])[0] for k in kinds.values()),
        tokens_per_step=float(plan.gbs * plan.seq),
        model_flops_per_token=model_flops_per_token(
            spec, plan.seq, include_mtp=options.include_mtp_in_mfu),
        peaks=device_peaks(system.device, plan.dtype),
        flops_conventions=mfu_conventions(spec, plan.seq),
        memory=[memory_by_stage[s] for s in sorted(memory_by_stage)],
        stages=[stage_stats(sim, rank, stage) for stage, rank in sorted(reps.items())],
        compute_by_kind_s=compute_by_kind,
        flops_by_phase=flops_by_phase,
        simulated_ranks=len(step.ranks),
        tasks=step.tasks,
        wall_s=wall_s,
        sim=sim,
    )


def with_overrides(plan: ParallelPlan, **changes: Any) -> ParallelPlan:
    return replace(plan, **{k: v for k, v in changes.items() if v is not None})


