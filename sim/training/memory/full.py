"""The full per-stage mode: memory read off the lowered model chunks of each stage.

``rank_memory`` takes a ``RankPlan`` (the chunks the lowering builds for one rank and
its schedule order) and counts what the rank holds: parameters from the GEMMs and
embedding tables of its slots, activation bytes per chunk from the ops' saved tensors
(``layers.activation_bytes``), the micro-batches in flight at the peak of the schedule
(``schedules.peak_in_flight``) and its largest collective. ``rules.stage_memory`` turns
that into bytes. ``simulate_training`` reports this; ``estimate_memory`` runs it without
the engine.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan, microbatches, validate_plan
from xpusim.sim.placement import job_devices
from xpusim.sim.training import layers as L
from xpusim.sim.training.lowering import RankPlan
from xpusim.sim.training.memory.analytical import in_flight
from xpusim.sim.training.memory.rules import MemoryBreakdown, StageState, stage_memory
from xpusim.sim.training.offload import layer_activations, offloaded_bytes


def rank_state(rp: RankPlan, plan: ParallelPlan) -> StageState:
    """What rank ``rp`` holds, read off its lowered chunks; the micro-batches in flight
    at the peak of its stage's schedule order, by the closed form of the order
    ``rank_plans`` builds (``analytical.in_flight``: the same items in the same order), so
    a memory estimate needs no order of its own."""
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
    per_layer = max(
        (
            L.activation_bytes(
                items, plan.layer_recompute(name), plan.recompute_modules, ch.input_bytes
            )
            for ch in rp.chunks
            for name, items in ch.slots
            if name.startswith("L")
        ),
        default=0.0,
    )
    return StageState(
        stage=rp.stage,
        dense_params=sum(ch.dense_params for ch in rp.chunks),
        expert_params=sum(ch.expert_params for ch in rp.chunks),
        chunk_activations=tuple(ch.act_bytes for ch in rp.chunks),
        in_flight=in_flight(rp.stage, plan.pp, plan.vpp, microbatches(plan),
                            plan.interleaved, int(rp.merge_fb)),
        largest_comm=largest,
        p2p=max(ch.input_bytes for ch in rp.chunks) if plan.pp > 1 else 0.0,
        per_layer_activations=per_layer,
        offloaded=offloaded_bytes(layer_activations(rp, plan), plan.cpu_offload_layers),
    )


def rank_memory(rp: RankPlan, plan: ParallelPlan, capacity: float) -> MemoryBreakdown:
    return stage_memory(rank_state(rp, plan), plan, capacity)


def estimate_memory(spec: ModelSpec, system: System, plan: ParallelPlan,
                    store: dict[ParallelPlan, Any] | None = None) -> list[MemoryBreakdown]:
    """Memory per pipeline stage without running the engine (the full mode: every slot
    of every stage is built; ``analytical_memory`` is the cheap equivalent). ``store``:
    the stages' chunks are kept there in a ``StepCache`` per plan (validated, attention
    named, global batch 0) for the lowering of the plan chosen (``lower_training``)."""
    # simulate.py imports this package: its rank plans and attention default are
    # imported here, at call time.
    from xpusim.sim.training.simulate import StepCache, rank_plans, resolve_attention

    plan = resolve_attention(validate_plan(spec, plan, job_devices(plan, system)), system)
    cache = None if store is None else store.setdefault(replace(plan, gbs=0), StepCache())
    _, rps = rank_plans(spec, system, plan, cache=cache, orders=False)
    return [rank_memory(rp, plan, system.device.hbm_capacity) for rp in rps]
