"""Automatic parallel-plan search for one model (stage 3 of a study).

1. Enumerate the study's plan space (TP x PP x VPP x EP x CP x micro-batch x
   recompute x MoE folding), dropping plans ``sim.parallel.validate_plan`` rejects and plans
   whose TP group would leave a server (TP stays on the intra-node fabric, as in
   Megatron and the Pangu runs).
2. Order them by a cheap step-time estimate built from the stage-1 roofline
   figures: per-device compute of the global batch x the recompute cost x the
   closed-form pipeline bubble (1 + (p-1)/(m v)) x the no-op padding of the
   pipeline (slots rounded up to a multiple of p v), plus the TP all-reduces
   (exposed) and the part of the EP all-to-alls (priced where the plan's layout puts
   the group, folded or not: ``plan_ep_group``) longer than the compute (hidden
   by the adaptive pipe overlap when ``overlap_ep`` on a schedule that merges F/B; all
   exposed otherwise), plus the CP K/V all-gathers and reduce-scatters (exposed) and the
   part of the DP gradient reduction and parameter all-gather the first stage cannot
   hide (dense-DP and expert-DP groups where the layout puts them: ``plan_comm``).
   This only decides *which* plans get simulated first; the simulation decides
   which is best.
3. Walk that order, checking each plan with the training memory model's analytical
   mode (``xpusim.sim.training.memory.analytical_memory``: the simulation's per-stage
   memory without lowering the model; equal to it under uniform routing, to rounding
   under skew), and keep ``plans_per_model`` that fit, one per layout family (TP, PP,
   VPP, EP, CP) first so that structurally different plans get simulated.
4. Simulate each kept plan with ``simulate_training`` and keep the best by the
   study's ranking metric.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

from xpusim.hwprofiles.spec import System
from xpusim.sim.errors import InputError
from xpusim.sim.ir import dtype_bytes
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import (
    DEFAULT_SELECTIVE,
    Layout,
    ParallelPlan,
    microbatches,
    validate_plan,
)
from xpusim.sim.studies.analytical import (
    Analytical,
    base_plan,
    ep_bandwidth,
    group_bandwidth,
)
from xpusim.sim.studies.plan_comm import cp_comm_estimate, dp_comm_estimate
from xpusim.sim.studies.study_file import Study
from xpusim.sim.training.chunks import expert_group
from xpusim.sim.training.memory import analytical_memory, peak_stage
from xpusim.sim.training.nvfp4 import param_dtype


def enumerate_plans(spec: ModelSpec, system: System, study: Study) -> list[ParallelPlan]:
    """Valid plans of the study's plan space for ``spec`` on ``system``, in a fixed order
    (each plan once: a fold that changes nothing is the unfolded plan, ``folds``)."""
    space = study.plans
    base = base_plan(study)
    out: list[ParallelPlan] = []
    seen: set[ParallelPlan] = set()
    for tp, pp, vpp, ep, cp, mbs, rc, fold in itertools.product(
        space.tp, space.pp, space.vpp, space.ep, space.cp, space.mbs, space.recompute,
        space.moe_fold,
    ):
        if tp > system.devices_per_node or (vpp > 1 and pp == 1):
            continue
        if spec.moe is None and ep > 1:
            continue
        plan = replace(
            base,
            tp=tp,
            pp=pp,
            vpp=vpp,
            ep=ep,
            cp=cp,
            mbs=mbs,
            sequence_parallel=space.sequence_parallel and tp > 1,
            recompute=rc,
            moe_fold=fold and folds(spec, ep, cp),
        )
        try:
            plan = validate_plan(spec, plan, system.num_devices)
        except InputError:
            continue
        if plan not in seen:
            seen.add(plan)
            out.append(plan)
    return out


def folds(spec: ModelSpec, ep: int, cp: int) -> bool:
    """Whether MoE parallel folding gives a plan other than the unfolded one.

    Folding (``ParallelPlan.moe_fold``, Megatron-Core >= 0.10 ``initialize_model_parallel``,
    arXiv 2504.14960) builds the experts' rank generator over TP x CP x DP in the order
    without CP (``tp-ep-dp-pp``). With cp = 1 that generator lists the same groups as the
    unfolded one (``sim.layout.Layout``), with ep = 1 it has no all-to-all group and the
    same expert-data-parallel group (all of CP x DP), and a dense model has no experts: the
    plan is then the unfolded plan, enumerated once."""
    return spec.moe is not None and ep > 1 and cp > 1


def recompute_factor(policy: str, selective_fraction: float) -> float:
    """Compute per step relative to no recompute: forward+backward = 3 forward units;
    full recompute repeats the forward (4/3), selective only its selected ops."""
    if policy == "full":
        return 4.0 / 3.0
    if policy == "selective":
        return 1.0 + selective_fraction / 3.0
    return 1.0


def plan_estimate(
    plan: ParallelPlan, spec: ModelSpec, system: System, study: Study, est: Analytical
) -> float:
    """Cheap step-time estimate of ``plan`` (seconds), used only to order plans."""
    return sum(plan_terms(plan, spec, system, study, est).values())


def plan_terms(
    plan: ParallelPlan, spec: ModelSpec, system: System, study: Study, est: Analytical
) -> dict[str, float]:
    """The estimate's terms in seconds per step: "compute" (with the pipeline bubble), then
    the exposed "tp", "ep", "cp" and "dp" communication; ``plan_estimate`` is their sum."""
    devices = system.num_devices
    compute = study.fixed.global_batch * 3.0 * est.forward_s_per_seq / devices
    compute *= recompute_factor(plan.recompute, est.selective_fraction)
    m = microbatches(plan)
    bubble = (plan.pp - 1) / (m * plan.vpp)
    # Every virtual stage holds the same number of slots, padded with no-op layers
    # (sim.parallel.layer_slots): the pipeline runs at the pace of the padded count.
    slots = spec.layers + spec.mtp_layers
    stages = plan.pp * plan.vpp
    compute *= stages * math.ceil(slots / stages) / slots
    tp_comm = 0.0
    if plan.tp > 1:
        # Per layer: 2 blocks x (fwd + bwd) all-reduces of seq x hidden, ring volume 2(t-1)/t.
        act = plan.seq / plan.cp * spec.hidden * dtype_bytes(param_dtype(plan.dtype))
        per_layer = 4 * 2 * (plan.tp - 1) / plan.tp * act / ep_bandwidth(system, plan.tp)
        layers_per_stage = (spec.layers + spec.mtp_layers) / plan.pp
        tp_comm = (plan.gbs / plan.dp) * layers_per_stage * per_layer
    ep_comm = ep_comm_estimate(plan, spec, system)
    if plan.overlap_ep and plan.fb_mergeable:
        # Adaptive pipe overlap: one micro-batch's all-to-all runs under another's
        # compute, so only the part longer than the compute shows (as in stage 1). Plain
        # 1F1B with PP > 1 does not merge F/B (``ParallelPlan.fb_mergeable``).
        ep_comm = max(0.0, ep_comm - compute)
    return {"compute": compute * (1 + bubble), "tp": tp_comm, "ep": ep_comm,
            "cp": cp_comm_estimate(spec, system, plan), "dp": dp_comm_estimate(spec, system, plan)}


def ep_comm_estimate(plan: ParallelPlan, spec: ModelSpec, system: System) -> float:
    """EP all-to-all seconds per step on one device: dispatch + combine, fwd + bwd.

    The group is TP x EP with ``tp_extend_ep`` (else EP); each TP rank sends its
    1/tp share of the micro-batch's tokens, top_k copies each, (g-1)/g of them to
    other devices, at the rate of the group where the plan places it
    (``plan_ep_group``): the intra-node bandwidth when it sits in one server, the NIC
    share when it spans servers (``analytical.group_bandwidth``).
    """
    if spec.moe is None:
        return 0.0
    group = plan.ep * (plan.tp if plan.tp_extend_ep else 1)
    if group <= 1:
        return 0.0
    tokens = plan.mbs * plan.seq / plan.cp / plan.tp
    per_layer = (
        4
        * tokens
        * spec.moe.top_k
        * spec.hidden
        * dtype_bytes(param_dtype(plan.dtype))
        * (group - 1)
        / group
        / group_bandwidth(system, plan_ep_group(plan))
    )
    moe_layers = sum(1 for i in range(spec.layers + spec.mtp_layers) if spec.is_moe_layer(i))
    return microbatches(plan) * moe_layers / plan.pp * per_layer


def plan_ep_group(plan: ParallelPlan) -> tuple[int, ...]:
    """Rank 0's all-to-all group as the simulation places it (``sim.training.chunks.
    expert_group``: TP x EP or EP in the MoE layers' layout, rank r on device r). Every
    group of a plan is this one shifted by a whole number of its strides, so rank 0's
    stands for all. Unfolded, EP sits outside TP and CP (default order ``tp-cp-ep-dp-pp``:
    stride tp*cp); folded, the experts' order drops CP (``tp-ep-dp-pp``: stride tp), so
    with cp > 1 the group packs into fewer servers (Megatron-Core >= 0.10's expert
    RankGenerator, arXiv 2504.14960). With cp = 1 and TP-extend-EP both are devices
    0..tp*ep-1."""
    return expert_group(plan, Layout(plan), 0)


@dataclass
class PlanChoice:
    plans: list[ParallelPlan]  # fitting plans to simulate, best estimate first
    enumerated: int
    checked: int  # memory checks (analytical mode)
    fitting_memory_bytes: list[float]  # worst stage of each kept plan


def _family(plan: ParallelPlan, per_node: int) -> tuple[int, ...]:
    """The layout of a plan: how the model is cut (TP, PP, VPP, EP, CP) and how many
    servers its all-to-all group spans. A fold that leaves the group on as many servers
    (TP filling whole servers, say) keeps the layout: its all-to-all crosses the same
    number of servers (the same EP estimate where the ranks per server match, as there),
    and what else moves, the expert gradient reduction, the estimate sees only through
    its DP term's last bucket (``plan_comm``). For
    unfolded plans the span follows from the degrees, so families are as before the
    ``moe_fold`` axis."""
    servers = len({rank // per_node for rank in plan_ep_group(plan)})
    return (plan.tp, plan.pp, plan.vpp, plan.ep, plan.cp, servers)


def _twin(plan: ParallelPlan) -> ParallelPlan:
    """The plan with its MoE folding switched (only ever enumerated when it differs)."""
    return replace(plan, moe_fold=not plan.moe_fold)


def plan_memory(spec: ModelSpec, system: System, plan: ParallelPlan) -> float | None:
    """The worst stage's bytes per device of ``plan``, or None when it does not fit:
    the simulation's memory model in its analytical mode (never below the full mode,
    so a plan kept here does not run out of memory in the simulation)."""
    worst = peak_stage(analytical_memory(spec, system, plan))
    return None if worst.oom else worst.total


def choose_plans(spec: ModelSpec, system: System, study: Study, est: Analytical) -> PlanChoice:
    """The plans to simulate: in estimate order, the first fitting plan of each layout
    family (so the simulation compares different cuts of the model, not near-duplicates
    that differ only in micro-batch or recompute), then, if room is left, the next
    fitting plans of families already taken, save the fold twins of kept plans."""
    plans = enumerate_plans(spec, system, study)
    scored = sorted(
        plans,
        key=lambda p: (
            plan_estimate(p, spec, system, study, est),
            p.tp,
            p.pp,
            p.vpp,
            p.ep,
            p.cp,
            p.mbs,
            p.recompute,
            p.moe_fold,
        ),
    )
    want = study.search.plans_per_model
    fitting: list[tuple[ParallelPlan, float]] = []
    families: set[tuple[int, ...]] = set()
    memory: dict[int, float | None] = {}  # index in ``scored`` -> plan_memory

    def fits(i: int) -> float | None:
        if i not in memory:
            memory[i] = plan_memory(spec, system, scored[i])
        return memory[i]

    per_node = system.devices_per_node
    for i, plan in enumerate(scored):
        if len(families) >= want:
            break
        if _family(plan, per_node) not in families and (total := fits(i)) is not None:
            fitting.append((plan, total))
            families.add(_family(plan, per_node))
    taken = {p for p, _ in fitting}
    for i, plan in enumerate(scored):  # fill up with second-best plans of the families found
        if len(fitting) >= want:
            break
        family = _family(plan, per_node)
        # a fold twin of a taken plan in the same family is a near-duplicate (_family)
        twin = _twin(plan) in taken and _family(_twin(plan), per_node) == family
        if family in families and plan not in taken and not twin and (total := fits(i)) is not None:
            fitting.append((plan, total))
    return PlanChoice([p for p, _ in fitting], len(plans), len(memory), [m for _, m in fitting])


def plan_label(plan: ParallelPlan) -> str:
    """The plan as a row label; a selective recompute names its modules when they are not
    Megatron's default (``core_attn``), since `train --recompute selective` alone would run
    the default set: a different step time and memory than the candidate's."""
    recompute = plan.recompute
    if recompute == "selective" and plan.recompute_modules != DEFAULT_SELECTIVE:
        recompute += "[" + ",".join(plan.recompute_modules) + "]"
    # " fold": train's --moe-fold, only where the plan folds (the labels of unfolded
    # plans are as before the moe_fold axis).
    return (
        f"tp{plan.tp} pp{plan.pp} vpp{plan.vpp} ep{plan.ep} cp{plan.cp} dp{plan.dp} "
        f"mbs{plan.mbs} rc={recompute}" + (" fold" if plan.moe_fold else "")
    )
