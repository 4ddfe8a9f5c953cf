"""A training step whose simulation cost does not grow with the micro-batch count.

A 1F1B or interleaved pipeline runs a warm-up, a steady state of identical periods
(one forward and one backward per stage per micro-batch) and a cool-down; the
gradient reduction and optimizer step come once at the end. With every micro-batch
lowered to the same ops, the step time — and every per-step sum the result reports
(busy time per phase, bubble, exposed communication, FLOPs) — is therefore affine in
the micro-batch count m once m is past the warm-up: X(m) = a + b·m.

So the step is simulated in full, by the same discrete-event engine, at two
micro-batch counts past the warm-up of every stage (``steady_counts``: pp and 2·pp for
1F1B, 2·pp and 3·pp for the interleaved schedule), and the requested m is reached by
extending the steady state: X(m) = X(m2) + (m − m2)·(X(m2) − X(m1)) / (m2 − m1).
Overlap, bubbles and exposed communication still come from the schedule; only the
repetition of identical periods is not simulated again. ``exact=True`` simulates all m
micro-batches and keeps the engine's records (for traces); tests compare the two
over a grid of plans.

Lowering and pricing are separate (``lower_training`` / ``price_training``): the lowered
runs can be priced on other hardware of the same shape without lowering them again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from xpusim.hwprofiles.spec import System
from xpusim.sim.gcpause import gc_paused
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan, microbatches, validate_plan
from xpusim.sim.placement import job_devices
from xpusim.sim.training.simulate import (
    LoweredStep,
    StageStats,
    StepCache,
    TrainingOptions,
    TrainingResult,
    lower_step,
    price_step,
    resolve_attention,
    step_pricing,
)


def steady_counts(plan: ParallelPlan) -> tuple[int, int]:
    """(m1, m2): two micro-batch counts in the affine regime of this plan's schedule.

    1F1B warms up with at most pp - 1 forwards, so pp micro-batches already reach the
    steady state and pp more fix its period. The interleaved schedule warms up with up
    to 2·(pp - 1) + (vpp - 1)·pp chunk forwards (under 2·pp micro-batches' worth), so it
    starts at 2·pp; multiples of pp keep its divisibility rule. Without a pipeline every
    micro-batch repeats; two counts two apart cancel even/odd bucketing effects.
    """
    if plan.pp == 1:
        return 2, 4
    if plan.interleaved:
        return 2 * plan.pp, 3 * plan.pp
    return plan.pp, 2 * plan.pp


def simulated_microbatches(plan: ParallelPlan, exact: bool = False, full_ranks: bool = False
                           ) -> int:
    """Micro-batches the engine will run for this (validated) plan: all of them on the
    exact path, else those of the two steady-state runs."""
    m = microbatches(plan)
    m1, m2 = steady_counts(plan)
    if exact or full_ranks or m <= m2 + plan.pp:
        return m
    return m1 + m2


@dataclass
class LoweredTraining:
    """A training step lowered once (``lower_training``) and priced on any system of the
    same shape (``price_training``): the whole step when exact (or as cheap), else the two
    steady-state runs at ``counts`` micro-batches that ``extrapolate`` extends to ``m``."""

    plan: ParallelPlan  # validated, at the requested micro-batch count
    steps: tuple[LoweredStep, ...]
    m: int
    counts: tuple[int, int] | None  # (m1, m2) of the steady-state runs; None: exact


def lower_training(
    spec: ModelSpec, system: System, plan: ParallelPlan, options: TrainingOptions | None = None,
    store: dict[ParallelPlan, StepCache] | None = None,
) -> LoweredTraining:
    """Lower one training step for ``system``'s shape, unpriced; raises InputError for an
    impossible plan. ``store``: the chunks the memory estimate built (``estimate_memory``),
    by plan; the lowering starts from the ones of its plan instead of building them again."""
    options = options or TrainingOptions()
    full = validate_plan(spec, plan, job_devices(plan, system))
    m = microbatches(full)
    if simulated_microbatches(full, options.exact, options.full_ranks) == m:
        kept = _kept(store, spec, system, plan, options)
        return LoweredTraining(full, (lower_step(spec, system, plan, options, kept),), m, None)
    m1, m2 = steady_counts(full)
    per_mb = full.mbs * full.dp
    # Both runs share chunks, unit pieces and so segment prices.
    cache = _kept(store, spec, system, replace(full, gbs=m1 * per_mb), options) or StepCache()
    steps = tuple(lower_step(spec, system, replace(full, gbs=k * per_mb), options, cache)
                  for k in (m1, m2))
    return LoweredTraining(full, steps, m, (m1, m2))


def _kept(store: dict[ParallelPlan, StepCache] | None, spec: ModelSpec, system: System,
          plan: ParallelPlan, options: TrainingOptions) -> StepCache | None:
    """The cache in ``store`` whose chunks were built for the plan ``lower_step`` resolves
    from ``plan`` (``validate_plan``, ``resolve_attention``; its global batch aside), or None.
    A memory estimate builds them as ``rank_plans`` of one rank per stage does; every rank's
    (``full_ranks``) builds its own."""
    if not store or options.full_ranks:
        return None
    resolved = resolve_attention(validate_plan(spec, plan, job_devices(plan, system)), system,
                                 options.attention_impl)
    return store.get(replace(resolved, gbs=0))


def price_training(lowered: LoweredTraining, system: System) -> TrainingResult:
    """The lowered step's result on ``system`` (a hardware what-if: another device or
    network of the same shape prices the same graphs, nothing is lowered again)."""
    t0 = time.perf_counter()
    first = lowered.steps[0]
    # One pricing for the runs (they differ in the global batch only): each op, segment
    # and collective is costed once.
    pricing = step_pricing(first.plan, system, first.options)
    # The runs share their unit pieces, so their ranks' unit breakdowns too (the dict
    # holds only sums; the lowered steps keep the templates, so their ids stay valid).
    units: dict[tuple[int, ...], dict[str, list[float]]] = {}
    results = [price_step(step, system, pricing, units) for step in lowered.steps]
    if lowered.counts is None:
        return results[0]
    m1, m2 = lowered.counts
    full = lowered.plan
    result = extrapolate(results[0], results[1], m1, m2, lowered.m)
    lower_s = sum(step.lower_s for step in lowered.steps)
    return replace(
        result,
        plan=replace(results[1].plan, gbs=full.gbs),
        tokens_per_step=float(full.gbs * full.seq),
        wall_s=lower_s + time.perf_counter() - t0,
    )


def simulate_training(
    spec: ModelSpec, system: System, plan: ParallelPlan, options: TrainingOptions | None = None
) -> TrainingResult:
    """One training step: exact when asked (``options.exact``: every micro-batch
    simulated and the engine's records kept, for traces) or when that is as cheap, else
    by extending the simulated steady state. Raises InputError for an impossible plan.
    The cyclic garbage collector is paused meanwhile: the step's task graph stays
    reachable until it is priced, so its passes would free nothing (sim/gcpause.py)."""
    with gc_paused():
        return price_training(lower_training(spec, system, plan, options), system)


def _lerp(x1: float, x2: float, m1: int, m2: int, m: int) -> float:
    return x2 + (m - m2) * (x2 - x1) / (m2 - m1)


def _lerp_dict(d1: dict[str, float], d2: dict[str, float], m1: int, m2: int, m: int
               ) -> dict[str, float]:
    keys = list(d2) + [k for k in d1 if k not in d2]
    return {k: _lerp(d1.get(k, 0.0), d2.get(k, 0.0), m1, m2, m) for k in keys}


def _lerp_stage(s1: StageStats, s2: StageStats, m1: int, m2: int, m: int) -> StageStats:
    return StageStats(
        stage=s2.stage,
        rank=s2.rank,
        busy_s=_lerp_dict(s1.busy_s, s2.busy_s, m1, m2, m),
        bubble_s=max(0.0, _lerp(s1.bubble_s, s2.bubble_s, m1, m2, m)),
        exposed_comm_s=max(0.0, _lerp(s1.exposed_comm_s, s2.exposed_comm_s, m1, m2, m)),
        compute_slowed_s=max(0.0, _lerp(s1.compute_slowed_s, s2.compute_slowed_s, m1, m2, m)),
        work_s=_lerp(s1.work_s, s2.work_s, m1, m2, m),
    )


def extrapolate(r1: TrainingResult, r2: TrainingResult, m1: int, m2: int, m: int
                ) -> TrainingResult:
    """The result at m micro-batches from two simulated counts in the affine regime.
    Memory comes from the m2 run: the activations in flight saturate at the pipeline
    depth, which m2 > pp already reaches."""
    return replace(
        r2,
        step_time_s=_lerp(r1.step_time_s, r2.step_time_s, m1, m2, m),
        stages=[_lerp_stage(a, b, m1, m2, m) for a, b in zip(r1.stages, r2.stages, strict=True)],
        compute_by_kind_s=_lerp_dict(r1.compute_by_kind_s, r2.compute_by_kind_s, m1, m2, m),
        flops_by_phase=_lerp_dict(r1.flops_by_phase, r2.flops_by_phase, m1, m2, m),
        tasks=r1.tasks + r2.tasks,
        sim=None,
    )
