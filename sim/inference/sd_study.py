"""The speculative-decoding study (MoESD) on a given ``System``: what ``xpusim sd`` computes.

Per batch size: the target's plain decode step (t_ar_s), one SD round and its parts
(gamma draft steps, the gamma+1-token verification, rejection), the expected
tokens per round from the acceptance, speedup = tokens x t_ar / t_round and
target efficiency = t_ar / t_verify. Optional groups: a dense target/draft pair
(``compare_dense``/``draft_dense``) and the target re-run with other top-k
(``topk``, MoESD Fig. 4).

Memory: every batch is checked against the target's KV cache with the rule ``xpusim
infer`` uses (``xpusim.sim.inference.kvcache.require_kv_fit``): a verification round keeps
each request's context plus the gamma drafted tokens plus the bonus token, i.e.
``batch x (context + gamma + 1)`` tokens (split over the EP groups). Batches that do
not fit are left out of the sweep (no speedup is computed for them) and listed under
the group's ``oom_rows`` with ``fits: false``; when no batch of a group fits, the
study is an out-of-memory verdict (exit 3), as in ``xpusim infer``. (The draft's own
KV cache is not counted: a head's is tiny, and a draft model runs on its own
``--draft-devices``.)

The study takes the ``System`` as an argument (the CLI loads it from a profile name;
``xpusim whatif`` passes a varied copy), and ``args`` is any object with the
``xpusim sd`` option names as attributes (an ``argparse.Namespace``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import EngineProfile, load_engine
from xpusim.sim.inference.kvcache import MemoryPlan, require_kv_fit, step_kv_bytes
from xpusim.sim.inference.lowering import ParallelPlan, plan_for, require_memory
from xpusim.sim.inference.routing import Routing, routing_from_text
from xpusim.sim.inference.speculative import (
    HEAD_KINDS,
    SpeculativeModel,
    band_width,
    expected_tokens,
    peak,
    require_draft_fit,
    sigma_to_alpha,
)
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.units import parse_int_list


def acceptance(alpha: str | float, sigma: float | None, gamma: int) -> float | tuple[float, ...]:
    """Acceptance per drafted token: ``sigma`` (MoESD Eq. 5) or ``alpha`` ("0.8" or "a,b,c,d")."""
    if sigma is not None:
        return sigma_to_alpha(sigma, gamma)
    try:
        values = tuple(float(x) for x in str(alpha).split(",") if x.strip())
    except ValueError:
        raise InputError(
            f"--alpha: expected a rate or comma-separated rates, got '{alpha}'"
        ) from None
    if len(values) == 1:
        return values[0]
    return values


def _group(
    label: str,
    target: ModelSpec,
    draft: ModelSpec | str,
    args: Any,
    system: System,
    plan: ParallelPlan,
    engine: EngineProfile,
    alpha: float | tuple[float, ...],
    batches: list[int],
    routing: Routing,
) -> dict:
    """One target/draft pair swept over ``batches``: rows, peak and the peak/sqrt(2) band."""
    memory = require_memory(target, system, plan, engine, args.dtype)
    require_draft_fit(memory, draft, system, args.draft_devices, engine, args.dtype, label)
    fitting, oom_rows = _kv_fit(label, memory, batches, args, plan)
    model = SpeculativeModel(
        target,
        draft,
        system,
        plan,
        args.gamma,
        alpha,
        engine,
        args.context,
        ParallelPlan(tp=args.draft_devices),
        args.dtype,
        routing,
    )
    rows = model.sweep(fitting)
    best = peak(rows)
    lo, hi = band_width(rows)
    return {
        "label": label,
        "target": target.name,
        "draft": draft if isinstance(draft, str) else draft.name,
        "top_k": target.moe.top_k if target.moe else None,
        "num_experts": target.moe.num_experts if target.moe else None,
        "rows": [r.as_dict() for r in rows],
        "peak": {"batch": best.batch, "speedup": best.speedup},
        "band_sqrt2": {"min_batch": lo, "max_batch": hi},
        "kv_cache_bytes": memory.kv_cache,
        "oom_rows": oom_rows,
    }


def _kv_fit(
    label: str, memory: MemoryPlan, batches: list[int], args: Any, plan: ParallelPlan
) -> tuple[list[int], list[dict]]:
    """(batches whose verification round fits the KV cache, rows for those that do not).

    Raises the out-of-memory verdict (exit 3) of the smallest batch when none fits.
    """
    cached = args.context + args.gamma  # + the bonus token: step_kv_bytes adds one
    fitting, oom_rows = [], []
    for b in batches:
        needed = step_kv_bytes(memory, b, cached, plan.ep)
        if needed <= memory.kv_cache:
            fitting.append(b)
        else:
            oom_rows.append({"batch": b, "kv_needed_bytes": needed, "fits": False})
    if not fitting:
        b = min(batches)
        require_kv_fit(
            memory,
            step_kv_bytes(memory, b, cached, plan.ep),
            f"{label}: SD verification of batch {b} x (context {args.context:g} + "
            f"gamma {args.gamma} + 1) tokens",
        )
    return fitting, oom_rows


def _draft(name: str) -> ModelSpec | str:
    return name if name in HEAD_KINDS else load_model(name)


def sd_payload(args: Any, system: System, target: ModelSpec | None = None) -> dict:
    """The study's result (the ``xpusim sd --json`` payload) on ``system``.

    ``target`` replaces the model named by ``args.target`` (whatif varies model fields).
    """
    if args.context < 0:
        raise InputError(f"--context must be >= 0 cached tokens per request, got {args.context:g}")
    if args.draft_devices < 1:
        raise InputError(f"--draft-devices must be >= 1, got {args.draft_devices}")
    engine = load_engine(args.engine)
    plan = plan_for(args.devices, args.tp, args.ep)
    batches = parse_int_list(args.batch, "--batch")
    if min(batches) < 1:
        raise InputError("--batch: batch sizes must be >= 1")
    alpha = acceptance(args.alpha, args.sigma, args.gamma)
    tokens = expected_tokens(alpha, args.gamma)
    routing = routing_from_text(args.routing, args.seed)
    target = target if target is not None else load_model(args.target)
    draft = _draft(args.draft)
    common = (args, system, plan, engine, alpha, batches, routing)
    groups = [_group(target.name, target, draft, *common)]
    if args.compare_dense:
        if not args.draft_dense:
            raise InputError("--compare-dense needs --draft-dense (e.g. opt-350m)")
        dense = load_model(args.compare_dense)
        groups.append(_group(dense.name, dense, _draft(args.draft_dense), *common))
    if args.topk:
        if target.moe is None:
            raise InputError(f"--topk needs an MoE target; {target.name} is dense")
        for k in parse_int_list(args.topk, "--topk"):
            if not 1 <= k <= target.moe.num_experts:
                raise InputError(f"--topk {k}: must be in 1..{target.moe.num_experts}")
            tk = replace(target, name=f"{target.name} top-{k}", moe=replace(target.moe, top_k=k))
            groups.append(_group(f"top-{k}", tk, draft, *common))
    return {
        "target": target.name,
        "draft": groups[0]["draft"],
        "system": system.name,
        "device": system.device.name,
        "tp": plan.tp,
        "ep": plan.ep,
        "engine": engine.name,
        "gamma": args.gamma,
        "alpha": alpha,
        "expected_tokens": tokens,
        "context": args.context,
        "rows": groups[0]["rows"],
        "peak": groups[0]["peak"],
        "groups": groups,
    }
