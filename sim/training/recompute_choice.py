"""``--recompute auto``: the cheapest recompute policy that fits memory (docs/training.md,
"Choosing the recompute (`--recompute auto`)").

The candidates are none, a small ladder of selective module sets and full. Each is
priced by the forward work it re-runs per micro-batch on its busiest stage: the
recomputed items of every transformer layer (``units.recompute_for_slot``, the items the
lowering re-runs before each backward) timed op by op with the device's kernel cost
model and the network's collective pricing. No engine runs; the memory of a candidate
is ``estimate_memory``. ``auto`` keeps the cheapest candidate whose every stage fits, so
more device memory never picks a costlier policy (the set that fits only grows).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.cost.pricing import cost_model
from xpusim.sim.ir import Collective
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import BROAD_SELECTIVE, DEFAULT_SELECTIVE, ParallelPlan, validate_plan
from xpusim.sim.placement import job_devices
from xpusim.sim.training import layers as L
from xpusim.sim.training.chunks import RankPlan
from xpusim.sim.training.memory import MemoryBreakdown, estimate_memory
from xpusim.sim.training.units import recompute_for_slot

# The selective module sets ``auto`` tries, besides none and full. Each is a recipe's:
# - ("norm", "act"): Megatron-Bridge gpt-oss GB200/H100 recipes, recompute_modules
#   ['layernorm', 'moe_act'] (scripts/performance/configs/gpt_oss, docs/training_notes.md
#   2026-12-06 gpt-oss section): two elementwise re-runs;
# - DEFAULT_SELECTIVE ("core_attn",): Megatron-LM's --recompute-granularity selective
#   default (Korthikanti et al. 2022, "Reducing Activation Recomputation", selective
#   activation recomputation): the attention core only;
# - BROAD_SELECTIVE (norm, attn, act): norms, the attention block with its projections
#   and the FFN activation, the heaviest selective set before full.
SELECTIVE_LADDER: tuple[tuple[str, ...], ...] = (("norm", "act"), DEFAULT_SELECTIVE, BROAD_SELECTIVE)


def candidates(plan: ParallelPlan) -> list[ParallelPlan]:
    """The policies ``auto`` may pick, in ladder order (ties in cost keep this order).
    A plan that names its own selective modules (``--recompute-modules``) tries only
    those between none and full."""
    ladder = SELECTIVE_LADDER if plan.recompute_modules == DEFAULT_SELECTIVE else (plan.recompute_modules,)
    return (
        [replace(plan, recompute="none")]
        + [replace(plan, recompute="selective", recompute_modules=m) for m in ladder]
        + [replace(plan, recompute="full")]
    )


def recompute_seconds(rps: list[RankPlan], plan: ParallelPlan, system: System) -> float:
    """Seconds of forward work ``plan``'s recompute re-runs per micro-batch on the busiest
    rank of ``rps`` (rank plans lowered with ``plan``'s attention implementation):
    compute ops by the device's kernel cost model, collectives by the network."""
    from xpusim.sim.training.simulate import _comm_time_for

    model = cost_model(system.device, plan.attention_impl)
    comm = _comm_time_for(system)

    def item_s(it: L.Item, rp: RankPlan) -> float:
        if isinstance(it, L.Comm):
            group = rp.groups.get(it.group, (rp.rank,))
            if len(group) < 2:
                return 0.0
            return comm(Collective(it.name, it.kind, group, it.nbytes, it.algorithm))
        return model.time(it).time_s

    def rank_s(rp: RankPlan) -> float:
        return sum(
            item_s(it, rp)
            for ch in rp.chunks
            for slot, items in ch.slots
            if slot not in ("embedding", "head")
            for it in recompute_for_slot(items, plan, slot)
        )

    return max((rank_s(rp) for rp in rps), default=0.0)


def choose_recompute(
    spec: ModelSpec, system: System, plan: ParallelPlan,
    store: dict[ParallelPlan, Any] | None = None,
) -> tuple[ParallelPlan, list[MemoryBreakdown]]:
    """The cheapest candidate policy whose memory fits on every stage; when none fits,
    the candidate with the smallest worst stage (for the out-of-memory message).
    ``store``: ``estimate_memory``'s, the candidates' chunks kept for the lowering."""
    from xpusim.sim.training.simulate import StepCache, rank_plans, resolve_attention

    first = replace(plan, recompute="none")
    mems = estimate_memory(spec, system, first, store)
    if not any(m.oom for m in mems):  # nothing re-run: the cheapest there is
        return first, mems
    if plan.cpu_offload_layers:  # Megatron-Core refuses recompute with CPU offloading
        return first, mems
    base = resolve_attention(validate_plan(spec, first, job_devices(first, system)), system)
    cache = None if store is None else store.setdefault(replace(base, gbs=0), StepCache())
    _, rps = rank_plans(spec, system, base, cache=cache, orders=False)  # chunks only
    rest = candidates(plan)[1:]
    ranked = sorted(rest, key=lambda c: recompute_seconds(rps, replace(c, attention_impl=base.attention_impl), system))
    best = (first, mems)
    for cand in ranked:
        cand_mems = estimate_memory(spec, system, cand, store)
        if not any(m.oom for m in cand_mems):
            return cand, cand_mems
        if max(m.total for m in cand_mems) < max(m.total for m in best[1]):
            best = (cand, cand_mems)
    return best
