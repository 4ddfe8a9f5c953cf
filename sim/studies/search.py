"""A study end to end, in the Pangu team's stages (Pangu Pro MoE, arXiv 2505.21411 §2.3):

1. enumerate the space and keep the candidates within the parameter budgets and
   constraints (``space``);
2. cheap analytical filter: a static-memory lower bound and a roofline step bound
   (``analytical``);
3. shortlist the top ``search.shortlist`` candidates by the analytical estimate;
4. full training simulation of each shortlisted model over automatically searched
   parallel plans that fit in memory (``plans``), on a process pool or Ray
   (``executors``), resumable through a cache (``cache``);
5. rank by the study's metric, keeping the best plan per model.

Every evaluated candidate becomes a row (analytical columns for all, simulation
columns for the shortlisted); a point that fails carries its error and the rest
of the sweep goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import System
from xpusim.sim.cost import CachedCostModel, RooflineModel
from xpusim.sim.studies import analytical
from xpusim.sim.studies.cache import PointCache, code_fingerprint, point_key
from xpusim.sim.studies.executors import run_tasks
from xpusim.sim.studies.plans import choose_plans, plan_label
from xpusim.sim.studies.space import Candidate, Counted, SpaceSummary, candidates_in_budget, to_spec
from xpusim.sim.studies.study_file import Study, check_constraint, evaluate_constraint
from xpusim.sim.training import simulate_training

# Breakdown entries (seconds per step, mean over pipeline stages) copied into each row.
BREAKDOWN_KEYS = (
    "fwd",
    "bwd",
    "recompute",
    "comm_tp",
    "comm_ep",
    "comm_pp",
    "comm_dp",
    "bubble",
    "exposed_comm",
)


@dataclass(frozen=True)
class PointTask:
    """Everything one full-simulation point needs (picklable for both executors)."""

    study: Study
    system: System
    candidate: Candidate
    analytical: analytical.Analytical


def _sim_row(result: dict[str, Any], label: str) -> dict[str, Any]:
    row = {
        "plan": label,
        "tokens_per_s": result["tokens_per_s"],
        "mfu": result["mfu"],
        "step_time_s": result["step_time_s"],
        "memory_per_device_bytes": result["memory_per_device_bytes"],
        "bubble_fraction": result["bubble_fraction"],
        "exposed_comm_s": result["exposed_comm_s"],
    }
    for key in BREAKDOWN_KEYS:
        row[f"t_{key}_s"] = result["breakdown_s"].get(key, 0.0)
    return row


def _plan_keys(study: Study) -> tuple[str, ...]:
    """The plan fields a row repeats (``plan_tp`` ...), enough to rerun its plan with
    ``train``; ``moe_fold`` only in studies that search folding (rows of other studies
    keep their columns)."""
    keys = ("tp", "pp", "vpp", "ep", "cp", "dp", "mbs", "recompute")
    return (*keys, "moe_fold") if True in study.plans.moe_fold else keys


def evaluate_point(task: PointTask) -> dict[str, Any]:
    """Plan search + simulation of one candidate; never raises (errors become a field)."""
    study, system = task.study, task.system
    try:
        spec = to_spec(task.candidate, study)
        choice = choose_plans(spec, system, study, task.analytical)
        out: dict[str, Any] = {
            "plans_enumerated": choice.enumerated,
            "plans_checked": choice.checked,
            "plans_simulated": len(choice.plans),
        }
        if not choice.plans and not choice.enumerated:
            # Nothing to fit: blaming memory sent users after the wrong knob ([plans] tp = [3]).
            # (short: the explore table shows an error's first 60 characters)
            out["error"] = "no valid plan in [plans] for this model on these devices"
            return out
        if not choice.plans:
            out["error"] = (
                f"no plan of the plan space fits in memory "
                f"({choice.enumerated} valid plans, {choice.checked} checked)"
            )
            return out
        best: dict[str, Any] | None = None
        best_value = float("-inf")
        for plan in choice.plans:
            result = simulate_training(spec, system, plan).as_dict()
            if result["oom"]:
                continue
            value = analytical.rank_value(
                study.search.rank_by,
                result["tokens_per_s"],
                result["mfu"],
                study.search.token_budget,
            )
            if value > best_value:
                best, best_value = _sim_row(result, plan_label(plan)), value
                best.update({f"plan_{k}": getattr(plan, k) for k in _plan_keys(study)})
        if best is None:
            out["error"] = "every simulated plan ran out of memory"
            return out
        return {**out, **best}
    except Exception as exc:  # noqa: BLE001 - one failing point is reported, the sweep goes on
        return {"error": f"{type(exc).__name__}: {exc}"}


def task_key(task: PointTask, fingerprint: str = "") -> str:
    s = task.study
    return point_key(
        {
            "candidate": task.candidate.as_dict(),
            "fixed": s.fixed.model_dump(),
            "plans": s.plans.model_dump(),
            "search": {k: v for k, v in s.search.model_dump().items() if k != "shortlist"},
            "system": repr(task.system),
        },
        fingerprint,
    )


@dataclass
class StudyResult:
    study: Study
    system: System
    summary: SpaceSummary
    rows: list[dict[str, Any]]  # every candidate that passed the budgets, analytical order
    ranked: list[dict[str, Any]]  # simulated rows, best first (errors last)
    cached: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)

    def as_dict(self, top: int | None = None) -> dict[str, Any]:
        return {
            "study": self.study.name,
            "system": self.system.name,
            "devices": self.system.num_devices,
            "rank_by": self.study.search.rank_by,
            "space": asdict(self.summary),
            "analytical_fit": sum(1 for r in self.rows if r["fits_memory_lb"]),
            "shortlisted": len(self.ranked),
            "cached_points": self.cached,
            "timings_s": self.timings_s,
            "ranked": self.ranked[:top] if top else self.ranked,
        }


def _base_row(counted: Counted, est: analytical.Analytical) -> dict[str, Any]:
    return {
        "name": counted.candidate.name,
        **counted.values(),
        **est.as_dict(),
        "stage": "analytical",
    }


def shortlist(rows: list[dict[str, Any]], study: Study) -> list[int]:
    """Indices of the top candidates by the analytical estimate (ties: by name)."""
    fit = [i for i, r in enumerate(rows) if r["fits_memory_lb"]]
    metric = study.search.rank_by

    def value(i: int) -> float:
        r = rows[i]
        return analytical.rank_value(
            metric, r["analytical_tokens_per_s"], r["analytical_mfu"], study.search.token_budget
        )

    fit.sort(key=lambda i: (-value(i), rows[i]["name"]))
    chosen = fit[: study.search.shortlist]
    picks = [check_constraint(text, "search.expert_picks") for text in study.search.expert_picks]
    for i in fit[study.search.shortlist :]:
        if any(evaluate_constraint(t, rows[i]) for t in picks):
            chosen.append(i)
    return chosen


def rank_rows(rows: list[dict[str, Any]], study: Study) -> list[dict[str, Any]]:
    def key(r: dict[str, Any]) -> tuple:
        if r.get("error") or "tokens_per_s" not in r:
            return (1, 0.0, r["name"])
        v = analytical.rank_value(
            study.search.rank_by, r["tokens_per_s"], r["mfu"], study.search.token_budget
        )
        return (0, -v, r["name"])

    ranked = sorted(rows, key=key)
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return ranked


def run_study(
    study: Study,
    executor: str = "local",
    jobs: int = 1,
    address: str | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[int], Any] | None = None,
    system: System | None = None,
) -> StudyResult:
    """Run every stage of ``study``; ``progress(total)`` returns a callable ticked per point."""
    t0 = time.perf_counter()
    system = system or load_system(study.hardware.system, nodes=study.hardware.nodes)
    counted, summary = candidates_in_budget(study)
    t1 = time.perf_counter()
    cost = CachedCostModel(RooflineModel(system.device))
    ests = [analytical.estimate(c, study, system, cost) for c in counted]
    rows = [_base_row(c, e) for c, e in zip(counted, ests, strict=True)]
    t2 = time.perf_counter()
    chosen = shortlist(rows, study)
    tasks = [PointTask(study, system, counted[i].candidate, ests[i]) for i in chosen]
    fingerprint = code_fingerprint() if cache_dir else ""
    keys = [task_key(t, fingerprint) for t in tasks]
    cache = PointCache(cache_dir)
    results: dict[int, dict[str, Any]] = {}
    for j, key in enumerate(keys):
        hit = cache.get(key)
        if hit is not None:
            results[j] = hit
    cached = len(results)
    todo = [j for j in range(len(tasks)) if j not in results]
    tick = progress(len(tasks)) if progress else None
    if tick:
        for _ in range(cached):
            tick()

    def on_result(i: int, result: dict[str, Any]) -> None:
        j = todo[i]
        results[j] = result
        if (
            "error" not in result
            or result["error"].startswith("no plan")
            or result["error"].startswith("every simulated")
        ):
            cache.put(keys[j], result)  # a crash is not cached: it is retried next run
        if tick:
            tick()

    run_tasks(evaluate_point, [tasks[j] for j in todo], executor, jobs, address, on_result)
    t3 = time.perf_counter()
    simulated = []
    for j, i in enumerate(chosen):
        rows[i].update(results[j])
        rows[i]["stage"] = "simulated"
        simulated.append(rows[i])
    ranked = rank_rows(simulated, study)
    timings = {
        "enumerate_s": t1 - t0,
        "analytical_s": t2 - t1,
        "simulate_s": t3 - t2,
        "total_s": t3 - t0,
    }
    return StudyResult(study, system, summary, rows, ranked, cached, timings)
