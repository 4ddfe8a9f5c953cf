"""Automatic parallel-plan search for one model (stage 3 of a study).

1. Enumerate the study's plan space (TP x PP x VPP x EP x CP x micro-batch x
   recompute), dropping plans ``sim.parallel.validate_plan`` rejects and plans
   whose TP group would leave a server (TP stays on the intra-node fabric, as in
   Megatron and the Pangu runs).
2. Order them by a cheap step-time estimate built from the stage-1 roofline
   figures: per-device compute of the global batch x the recompute cost x the
   closed-form pipeline bubble (1 + (p-1)/(m v)) x the no-op padding of the
   pipeline (slots rounded up to a multiple of p v), plus the TP all-reduces
   (exposed) and the part of the EP all-to-alls longer than the compute (hidden
   by the adaptive pipe overlap when ``overlap_ep``; all exposed otherwise).
   This only decides *which* plans get simulated first; the simulation decides
   which is best.
3. Walk that order: skip plans whose static state cannot fit (a formula), check
   the rest with the training model's ``estimate_memory`` (no engine run), and
   keep ``plans_per_model`` that fit, one per layout family (TP, PP, VPP, EP, CP)
   first so that structurally different plans get simulated.
4. Simulate each kept plan with ``simulate_training`` and keep the best by the
   study's ranking metric.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from xpusim.hwprofiles.spec import System
from xpusim.sim.errors import InputError
from xpusim.sim.ir import dtype_bytes
from xpusim.sim.models.counting import param_counts
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan, microbatches, validate_plan
from xpusim.sim.studies.analytical import MAIN_GRAD_BYTES, OPTIMIZER_BYTES, Analytical, ep_bandwidth
from xpusim.sim.studies.study_file import Study
from xpusim.sim.training import estimate_memory

# Upper bound on estimate_memory calls per model, so a space of mostly-OOM plans
# cannot stall a study; reported in the row as plans_checked.
MAX_MEMORY_CHECKS = 64


def enumerate_plans(spec: ModelSpec, system: System, study: Study) -> list[ParallelPlan]:
    """Valid plans of the study's plan space for ``spec`` on ``system``, in a fixed order."""
    space = study.plans
    fixed = study.fixed
    out = []
    for tp, pp, vpp, ep, cp, mbs, rc in itertools.product(
        space.tp, space.pp, space.vpp, space.ep, space.cp, space.mbs, space.recompute
    ):
        if tp > system.devices_per_node or (vpp > 1 and pp == 1):
            continue
        if spec.moe is None and ep > 1:
            continue
        plan = ParallelPlan(
            tp=tp,
            pp=pp,
            vpp=vpp,
            ep=ep,
            cp=cp,
            mbs=mbs,
            gbs=fixed.global_batch,
            seq=fixed.seq,
            dtype=fixed.dtype,
            sequence_parallel=space.sequence_parallel and tp > 1,
            zero=space.zero,
            recompute=rc,
            tp_extend_ep=space.tp_extend_ep,
            overlap_ep=space.overlap_ep,
            hierarchical_ep=space.hierarchical_ep,
            moe_routing=study.search.moe_routing,
            seed=study.search.seed,
        )
        try:
            out.append(validate_plan(spec, plan, system.num_devices))
        except InputError:
            continue
    return out


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
        act = plan.seq / plan.cp * spec.hidden * dtype_bytes(plan.dtype)
        per_layer = 4 * 2 * (plan.tp - 1) / plan.tp * act / ep_bandwidth(system, plan.tp)
        layers_per_stage = (spec.layers + spec.mtp_layers) / plan.pp
        tp_comm = (plan.gbs / plan.dp) * layers_per_stage * per_layer
    ep_comm = ep_comm_estimate(plan, spec, system)
    if plan.overlap_ep:
        # Adaptive pipe overlap: one micro-batch's all-to-all runs under another's
        # compute, so only the part longer than the compute shows (as in stage 1).
        ep_comm = max(0.0, ep_comm - compute)
    return compute * (1 + bubble) + tp_comm + ep_comm


def ep_comm_estimate(plan: ParallelPlan, spec: ModelSpec, system: System) -> float:
    """EP all-to-all seconds per step on one device: dispatch + combine, fwd + bwd.

    The group is TP x EP with ``tp_extend_ep`` (else EP); each TP rank sends its
    1/tp share of the micro-batch's tokens, top_k copies each, (g-1)/g of them to
    other devices, at the intra-node bandwidth when the group fits in a server
    and the NIC share otherwise (``analytical.ep_bandwidth``).
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
        * dtype_bytes(plan.dtype)
        * (group - 1)
        / group
        / ep_bandwidth(system, group)
    )
    moe_layers = sum(1 for i in range(spec.layers + spec.mtp_layers) if spec.is_moe_layer(i))
    return microbatches(plan) * moe_layers / plan.pp * per_layer


def static_memory(plan: ParallelPlan, spec: ModelSpec, study: Study) -> float:
    """Weights + main grads + ZeRO-1 optimizer state per device of ``plan`` (no activations)."""
    counts = param_counts(spec)
    experts = counts.routed_experts
    dense = counts.total_with_mtp - experts
    mp = plan.tp * plan.pp
    expert_shards = mp * plan.ep if plan.tp_extend_ep else plan.pp * plan.ep
    per_param = dtype_bytes(plan.dtype) + MAIN_GRAD_BYTES
    opt_dense = (
        OPTIMIZER_BYTES * dense / (mp * plan.dp * plan.cp)
        if plan.zero >= 1
        else (OPTIMIZER_BYTES * dense / mp)
    )
    edp = max(1, plan.dp // plan.ep)
    opt_expert = OPTIMIZER_BYTES * experts / (expert_shards * (edp if plan.zero >= 1 else 1))
    return per_param * (dense / mp + experts / expert_shards) + opt_dense + opt_expert


@dataclass
class PlanChoice:
    plans: list[ParallelPlan]  # fitting plans to simulate, best estimate first
    enumerated: int
    checked: int  # estimate_memory calls
    fitting_memory_bytes: list[float]


def _family(plan: ParallelPlan) -> tuple[int, ...]:
    """The layout of a plan: how the model is cut (TP, PP, VPP, EP, CP)."""
    return (plan.tp, plan.pp, plan.vpp, plan.ep, plan.cp)


def choose_plans(spec: ModelSpec, system: System, study: Study, est: Analytical) -> PlanChoice:
    """The plans to simulate: in estimate order, the first fitting plan of each layout
    family (so the simulation compares different cuts of the model, not near-duplicates
    that differ only in micro-batch or recompute), then, if room is left, the next
    fitting plans of families already taken."""
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
        ),
    )
    capacity = system.device.hbm_capacity
    want = study.search.plans_per_model
    fitting: list[tuple[ParallelPlan, float]] = []
    families: set[tuple[int, ...]] = set()
    checked = 0
    for plan in scored:
        if len(families) >= want or checked >= MAX_MEMORY_CHECKS:
            break
        if _family(plan) in families or static_memory(plan, spec, study) > capacity:
            continue
        checked += 1
        stages = estimate_memory(spec, system, plan)
        if not any(m.oom for m in stages):
            fitting.append((plan, max(m.total for m in stages)))
            families.add(_family(plan))
    for plan in scored:  # fill up with second-best plans of the families found
        if len(fitting) >= want or checked >= MAX_MEMORY_CHECKS:
            break
        if _family(plan) not in families or any(plan == p for p, _ in fitting):
            continue
        if static_memory(plan, spec, study) > capacity:
            continue
        checked += 1
        stages = estimate_memory(spec, system, plan)
        if not any(m.oom for m in stages):
            fitting.append((plan, max(m.total for m in stages)))
    return PlanChoice([p for p, _ in fitting], len(plans), checked, [m for _, m in fitting])


def plan_label(plan: ParallelPlan) -> str:
    return (
        f"tp{plan.tp} pp{plan.pp} vpp{plan.vpp} ep{plan.ep} cp{plan.cp} dp{plan.dp} "
        f"mbs{plan.mbs} rc={plan.recompute}"
    )
