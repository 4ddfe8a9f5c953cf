"""``simulate_training``: one training step of a model, plan and system, end to end.

Scale by symmetry: ranks of one pipeline stage run the same program (TP, CP, DP and
EP peers; EP peers differ only in routing load, and the busiest one sets the pace),
so by default one representative rank per stage is simulated, with every
collective's group holding the real global ranks so it is costed on the full
topology. ``full_ranks=True`` simulates every rank (small jobs): the check that the
reduction is right.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.cost import CachedCostModel
from xpusim.sim.cost.attention_impl import KernelCostModel
from xpusim.sim.engine import Engine, SimResult, overlap_length, union_intervals
from xpusim.sim.errors import InputError
from xpusim.sim.ir import Stream
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import Coord, Layout, ParallelPlan, microbatches, validate_plan
from xpusim.sim.schedules import closed_form_bubble, stage_order
from xpusim.sim.training.framework import framework_profile
from xpusim.sim.training.lowering import (
    Pricer,
    RankPlan,
    build_chunks,
    lower_rank,
    merges_fb,
    rank_groups,
    slot_context,
)
from xpusim.sim.training.memory import (
    MemoryBreakdown,
    estimate_memory,  # noqa: F401 - re-exported: callers import it from here
    format_breakdown,
    rank_memory,
)

FULL_RANK_LIMIT = 128
COMM_LABELS = ("tp", "ep", "cp", "dp", "pp")

@dataclass(frozen=True)
class Sensitivity:
    """What-if knobs for gap analysis (defaults: none). Not calibration: each is a question
    ("what if grouped expert GEMMs ran 25% slower?"), reported next to the headline.

    ``slowdown`` multiplies the modelled time of ops: keys are op kinds ("gemm",
    "attention", "elementwise", ...) or "experts" (the routed experts' ops, ``Role.expert``:
    their grouped GEMMs, activation, casts and backward, which then take no kind factor). ``op_overhead_s`` adds a fixed time to
    every op (host dispatch that the device waits for when the launch queue runs dry).
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


@dataclass
class StageStats:
    stage: int
    rank: int
    busy_s: dict[str, float]  # compute phases and comm labels -> seconds
    bubble_s: float
    exposed_comm_s: float
    work_s: float  # forward + backward + recompute compute time

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "rank": self.rank,
            "busy_s": self.busy_s,
            "bubble_s": self.bubble_s,
            "exposed_comm_s": self.exposed_comm_s,
            "work_s": self.work_s,
        }


@dataclass
class TrainingResult:
    model: str
    system: str
    plan: ParallelPlan
    devices: int
    step_time_s: float
    tokens_per_step: float
    model_flops_per_token: float
    peaks: dict[str, float]  # name -> per-device peak FLOP/s used for MFU
    flops_conventions: dict[str, float]  # convention -> model FLOPs per token (mfu_conventions)
    memory: list[MemoryBreakdown]
    stages: list[StageStats]
    compute_by_kind_s: dict[str, float]  # per step, mean over stages
    flops_by_phase: dict[str, float]  # "phase:op kind" -> lowered FLOPs per step, all devices
    simulated_ranks: int
    tasks: int
    wall_s: float
    sim: SimResult | None = field(default=None, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_time_s

    @property
    def mfu_by_peak(self) -> dict[str, float]:
        achieved = self.model_flops_per_token * self.tokens_per_s / self.devices
        return {name: achieved / peak for name, peak in self.peaks.items()}

    def mfu_table(self) -> dict[str, dict[str, float]]:
        """MFU for every (FLOPs-per-token convention, peak) pair: the same run, counted
        the ways papers count it."""
        per_device = self.tokens_per_s / self.devices
        return {
            conv: {name: f * per_device / peak for name, peak in self.peaks.items()}
            for conv, f in self.flops_conventions.items()
        }

    @property
    def mfu(self) -> float:
        return self.mfu_by_peak["matrix"]

    @property
    def peak_memory(self) -> MemoryBreakdown:
        return max(self.memory, key=lambda m: m.total)

    @property
    def oom(self) -> bool:
        return any(m.oom for m in self.memory)

    @property
    def bubble_fraction(self) -> float:
        return sum(s.bubble_s for s in self.stages) / len(self.stages) / self.step_time_s

    @property
    def exposed_comm_s(self) -> float:
        return sum(s.exposed_comm_s for s in self.stages) / len(self.stages)

    def breakdown(self) -> dict[str, float]:
        """Mean over stages of busy time per phase / comm group, plus bubble and exposed comm."""
        keys = sorted({k for s in self.stages for k in s.busy_s})
        n = len(self.stages)
        out = {k: sum(s.busy_s.get(k, 0.0) for s in self.stages) / n for k in keys}
        out["bubble"] = sum(s.bubble_s for s in self.stages) / n
        out["exposed_comm"] = self.exposed_comm_s
        return out

    def as_dict(self) -> dict[str, Any]:
        m = microbatches(self.plan)
        return {
            "model": self.model,
            "system": self.system,
            "devices": self.devices,
            "plan": self.plan.as_dict(),
            "microbatches": m,
            "step_time_s": self.step_time_s,
            "tokens_per_step": self.tokens_per_step,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_device": self.tokens_per_s / self.devices,
            "model_flops_per_token": self.model_flops_per_token,
            "mfu": self.mfu,
            "mfu_by_peak": self.mfu_by_peak,
            "peak_flops": self.peaks,
            "flops_per_token_conventions": self.flops_conventions,
            "mfu_conventions": self.mfu_table(),
            "memory_per_device_bytes": self.peak_memory.total,
            "memory": self.peak_memory.as_dict(),
            "memory_by_stage": [mem.as_dict() for mem in self.memory],
            "oom": self.oom,
            "bubble_fraction": self.bubble_fraction,
            "bubble_closed_form": closed_form_bubble(
                self.plan.pp, m, self.plan.vpp if self.plan.interleaved else 1
            ),
            "exposed_comm_s": self.exposed_comm_s,
            "breakdown_s": self.breakdown(),
            "compute_by_kind_s": self.compute_by_kind_s,
            "flops_by_phase": self.flops_by_phase,
            "stages": [s.as_dict() for s in self.stages],
            "simulated_ranks": self.simulated_ranks,
            "tasks": self.tasks,
            "wall_s": self.wall_s,
        }


def _progress(options: TrainingOptions, message: str) -> None:
    if options.progress:
        sys.stderr.write(f"xpusim train: {message}\n")
        sys.stderr.flush()


def rank_plans(
    spec: ModelSpec, system: System, plan: ParallelPlan, full_ranks: bool = False
) -> tuple[Layout, list[RankPlan]]:
    """Rank plans to simulate: one per stage (coordinates 0 elsewhere), or all ranks."""
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
    cache: dict[tuple, list] = {}
    out = []
    for r in ranks:
        stage = layout.coord(r).pp
        ctx, _ = slot_context(spec, plan, system, layout, r, full_ranks)
        key = (stage, tuple(sorted(ctx.hot.items())), tuple(sorted(ctx.hot_comm.items())))
        if key not in cache:
            cache[key] = build_chunks(spec, plan, ctx, stage)
        # Merged F/B overlap hands each forward on later: one more warm-up micro-batch
        # keeps the pipeline fed (MindSpeed megatron-moe-fb-overlap.md).
        merge = merges_fb(spec, plan)
        order = stage_order(stage, plan.pp, plan.vpp, m, plan.interleaved, int(merge))
        shared = (
            spec.vocab / plan.tp * spec.hidden if spec.tie_embeddings or spec.mtp_layers else 0.0
        )
        out.append(
            RankPlan(r, stage, rank_groups(plan, layout, r), cache[key], order, merge, shared)
        )
    return layout, out


def resolve_attention(plan: ParallelPlan, system: System, impl: str | None = None) -> ParallelPlan:
    """The plan with its attention implementation named: ``impl`` (the option), else the
    plan's, else the device's default stack. It prices the attention ops and decides
    whether the S x S scores are kept for the backward (``layers.attention_scores_saved``)."""
    from xpusim.sim.cost.attention_impl import check_impl, default_impl

    name = impl or plan.attention_impl or default_impl(system.device)
    return replace(plan, attention_impl=check_impl(system.device, name, "--attention-impl"))


_PHASES = ("fwd", "bwd", "recompute", "optimizer")


def stage_stats(sim: SimResult, rank: int, stage: int) -> StageStats:
    """Busy time by phase and comm group; bubble = compute-stream idle not explained by comm.

    Reads the engine's per-(rank, stream, label) busy time and interval unions, which
    every run keeps (no per-task records needed)."""
    busy: dict[str, float] = {}
    compute_iv: list[tuple[float, float]] = []
    async_iv: list[tuple[float, float]] = []
    blocking = work = 0.0
    for (r, stream, label), d in sim.busy_by_label.items():
        if r != rank:
            continue
        key = label if label in _PHASES else f"comm_{label}"
        busy[key] = busy.get(key, 0.0) + d
        if stream == Stream.COMPUTE:
            compute_iv.extend(sim.intervals[(r, stream, label)])
            if key.startswith("comm_"):
                blocking += d
            elif key != "optimizer":
                work += d
        elif label != "pp":
            async_iv.extend(sim.intervals[(r, stream, label)])
    cu, au = union_intervals(compute_iv), union_intervals(async_iv)
    exposed_async = sum(b - a for a, b in au) - overlap_length(au, cu)
    idle = sim.makespan_s - sum(b - a for a, b in cu)
    bubble = max(0.0, idle - exposed_async)
    return StageStats(stage, rank, busy, bubble, blocking + exposed_async, work)


_COMM_FN: list = []  # [(system, comm_time)] of the last system simulated


def _comm_time_for(system: System):
    """The network's collective pricing for ``system``, memoised across the steps
    simulated on the same System object (the steady-state path runs two, a study many):
    ``comm_time_fn`` caches per (kind, group, bytes, algorithm), a pure function of the
    frozen System, so reusing it changes no result, only how often a collective is
    costed. Keyed by identity: a what-if's ``replace(system, ...)`` is a new object."""
    if _COMM_FN and _COMM_FN[0][0] is system:
        return _COMM_FN[0][1]
    from xpusim.sim.network import comm_time_fn

    fn = comm_time_fn(system)
    _COMM_FN[:] = [(system, fn)]
    return fn


def simulate_exact(
    spec: ModelSpec, system: System, plan: ParallelPlan, options: TrainingOptions | None = None
) -> TrainingResult:
    """Simulate one training step, every op of every micro-batch; raises InputError for
    an impossible plan. ``xpusim.sim.training.steady.simulate_training`` is the usual entry:
    it calls this at two micro-batch counts and extends the steady state."""
    options = options or TrainingOptions()
    t0 = time.perf_counter()
    plan = validate_plan(spec, plan, system.num_devices)
    # The option, else the plan's, else the device's default (memory depends on it too).
    plan = resolve_attention(plan, system, options.attention_impl)
    _progress(
        options,
        f"plan tp={plan.tp} pp={plan.pp} vpp={plan.vpp} dp={plan.dp} ep={plan.ep} "
        f"cp={plan.cp} on {plan.world} devices, {microbatches(plan)} micro-batches",
    )
    layout, rps = rank_plans(spec, system, plan, options.full_ranks)
    memory_by_stage: dict[int, MemoryBreakdown] = {}
    for rp in rps:
        mem = rank_memory(rp, plan, system.device.hbm_capacity)
        if rp.stage not in memory_by_stage or mem.total > memory_by_stage[rp.stage].total:
            memory_by_stage[rp.stage] = mem
    cost = CachedCostModel(KernelCostModel(system.device, plan.attention_impl))
    pricer = Pricer(
        options.sensitivity.wrap(lambda op: cost.time(op).time_s),
        framework_profile(plan.framework).host_op_s,
    )
    comm_time = _comm_time_for(system)
    simulated = frozenset(rp.rank for rp in rps)
    graphs = []
    per_rank_kind: dict[int, dict[str, list[float]]] = {}
    for rp in rps:
        acc: dict[str, list[float]] = {}
        graph, t_opt = lower_rank(rp, plan, layout, pricer, acc, simulated, comm_time)
        acc["optimizer:elementwise"] = [t_opt, 0.0]
        per_rank_kind[rp.rank] = acc
        graphs.append(graph)
    tasks = sum(len(g.tasks) for g in graphs)
    _progress(
        options,
        f"lowered {tasks} tasks on {len(graphs)} simulated ranks "
        f"({time.perf_counter() - t0:.2f} s); running the engine",
    )
    # Per-task records only for a trace or timeline (options.exact): the breakdown below
    # reads the engine's streamed busy times and interval unions.
    sim = Engine(graphs, lambda op: 0.0, comm_time).run(records=options.exact)
    _progress(
        options, f"simulated {sim.makespan_s:.3f} s of training in {time.perf_counter() - t0:.2f} s"
    )
    reps = {}
    for rp in rps:
        reps.setdefault(rp.stage, rp.rank)
    stages = [stage_stats(sim, rank, stage) for stage, rank in sorted(reps.items())]
    m = microbatches(plan)
    compute_by_kind: dict[str, float] = {}
    flops_by_phase: dict[str, float] = {}
    ranks_per_stage = plan.world // plan.pp
    for rank in reps.values():
        for key, (t, f) in per_rank_kind[rank].items():
            scale = 1 if key.startswith("optimizer") else m
            compute_by_kind[key] = compute_by_kind.get(key, 0.0) + t * scale / plan.pp
            flops_by_phase[key] = flops_by_phase.get(key, 0.0) + f * scale * ranks_per_stage
    from xpusim.sim.models.counting import model_flops_per_token

    mfpt = model_flops_per_token(spec, plan.seq, include_mtp=options.include_mtp_in_mfu)
    dev = system.device
    peaks = {"matrix": dev.peak_for("matrix", plan.dtype)}
    marketing = dev.marketing_peak.get(plan.dtype) or dev.marketing_peak.get(
        "fp16" if plan.dtype == "bf16" else plan.dtype
    )
    if marketing:
        peaks["marketing"] = marketing
    # A peak quoted by a paper (device profile `quoted_tflops`): a denominator convention.
    quoted = dev.quoted_peak.get(plan.dtype)
    if quoted:
        peaks["quoted"] = quoted
    conventions = mfu_conventions(spec, plan.seq)
    return TrainingResult(
        model=spec.name,
        system=system.name,
        plan=plan,
        devices=plan.world,
        step_time_s=sim.makespan_s,
        tokens_per_step=float(plan.gbs * plan.seq),
        model_flops_per_token=mfpt,
        peaks=peaks,
        flops_conventions=conventions,
        memory=[memory_by_stage[s] for s in sorted(memory_by_stage)],
        stages=stages,
        compute_by_kind_s=compute_by_kind,
        flops_by_phase=flops_by_phase,
        simulated_ranks=len(graphs),
        tasks=tasks,
        wall_s=time.perf_counter() - t0,
        sim=sim,
    )


def mfu_conventions(spec: ModelSpec, seq: int) -> dict[str, float]:
    """Model FLOPs per token under the conventions papers use (3 x forward, no recompute).

    ``causal``: attention over s/2 keys on average (this simulator's ``mfu``);
    ``full_attention``: over all s keys (PaLM's 12·L·H·Q·T, what many reports use);
    ``+mtp``: the MTP modules with their output head counted as model work.
    """
    from xpusim.sim.models.counting import model_flops_per_token

    out = {}
    for causal in (True, False):
        for mtp in (False, True):
            name = ("causal" if causal else "full_attention") + ("+mtp" if mtp else "")
            out[name] = model_flops_per_token(spec, seq, causal=causal, include_mtp=mtp)
    return out


def oom_message(result_or_memory: TrainingResult | list[MemoryBreakdown]) -> str:
    mems = (
        result_or_memory.memory
        if isinstance(result_or_memory, TrainingResult)
        else result_or_memory
    )
    worst = max(mems, key=lambda m: m.total)
    return "out of memory: " + format_breakdown(worst)


def with_overrides(plan: ParallelPlan, **changes: Any) -> ParallelPlan:
    return replace(plan, **{k: v for k, v in changes.items() if v is not None})


_KIND_SOURCES = {
    "gemm": "matrix-unit roofline x the device's GEMM efficiency curve and tile quantisation "
    "(hwprofiles device [efficiency], sim/cost/roofline.py)",
    "elementwise": "HBM roofline (memory_max x bandwidth); includes bias/GELU/residual/dropout, "
    "the unfused fp32 gradient accumulation (plan.grad_accum_fusion) and norms' backward",
    "norm": "HBM roofline: LayerNorm/RMSNorm read + write of the activations",
    "softmax": "HBM roofline: cross-entropy softmax over B*s*V/tp fp32 logits",
    "embedding": "HBM roofline: embedding row gather (and its scatter-add in backward)",
    "reduction": "HBM roofline",
    "memcpy": "HBM roofline",
    "permute": "HBM roofline: MoE token permutation/unpermutation",
}
_PHASE_NAMES = {"fwd": "forward", "bwd": "backward", "recompute": "recompute"}


def explain_terms(result: TrainingResult) -> list[tuple[str, float, str]]:
    """(term, seconds per step on the mean stage, source) for the predicted step.

    Compute terms are the stages' mean busy time per phase and op kind; communication
    counts only its exposed part (what the compute stream waits for); the bubble is the
    compute-stream idle time no communication explains; ``other`` is the rest of the
    makespan (a stage finishing before the slowest one, overlap bookkeeping).
    """
    plan = result.plan
    out: list[tuple[str, float, str]] = []
    host_src = framework_profile(plan.framework).source
    for key, seconds in sorted(result.compute_by_kind_s.items(), key=lambda kv: -kv[1]):
        phase, kind = key.split(":", 1)
        if seconds <= 0:
            continue
        if phase == "optimizer":
            out.append((
                "optimizer step",
                seconds,
                f"Adam over the ZeRO-{plan.zero} shard, HBM-bound "
                "(lowering.adam_bytes_per_param: 30 B/param at 16 bits) + gradient-norm "
                "pass for clipping (+ fp16 loss-scale unscale)",
            ))
            continue
        if kind == "host":
            out.append((f"{_PHASE_NAMES.get(phase, phase)}: host dispatch (exposed)", seconds,
                        f"framework '{plan.framework}': {host_src}"))
            continue
        src = _KIND_SOURCES.get(kind, "roofline")
        if kind == "attention":
            src = (f"attention implementation '{plan.attention_impl}' "
                   "(sim/cost/attention_impl.py)")
        out.append((f"{_PHASE_NAMES.get(phase, phase)}: {kind}", seconds, src))
    b = result.breakdown()
    groups = ", ".join(
        f"{k[5:]} {b[k]:.3g} s" for k in sorted(b) if k.startswith("comm_") and b[k] > 0
    )
    out.append((
        "communication (exposed)",
        result.exposed_comm_s,
        f"sim/network on the system topology (busy per stage: {groups}); TP/CP/EP on the "
        "compute stream are exposed, DP/PP/overlapped EP only where the compute waits",
    ))
    out.append((
        "pipeline bubble",
        b["bubble"],
        f"schedule {'interleaved' if plan.interleaved else '1F1B'} run by the engine "
        "(sim/schedules.py); closed form (p-1)/(m*v) only a check",
    ))
    rest = result.step_time_s - sum(t for _, t, _ in out)
    out.append((
        "other (stage imbalance, overlap bookkeeping)",
        rest,
        "makespan minus the terms above, on the mean stage",
    ))
    return out
