"""The speculative-decoding study (MoESD) on a given ``System``: what ``xpusim sd`` computes.

Per batch size: the target's plain decode step (t_ar_s), one SD round and its parts
(gamma draft steps, the gamma+1-token verification, rejection), the expected
tokens per round from the acceptance, speedup = tokens x t_ar / t_round and
target efficiency = t_ar / t_verify. A study has one group (the target and its draft)
and optionally more: a dense target/draft pair and the target re-run with other top-k
(``topk_targets``, MoESD Fig. 4). ``xpusim.sim.api.sd`` reads the request into an
``SdSetup`` and runs ``sd_group`` per group.

Memory: every batch is checked against the target's KV cache with the rule ``xpusim
infer`` uses (``xpusim.sim.inference.kvcache.require_kv_fit``): a verification round keeps
each request's context plus the gamma drafted tokens plus the bonus token, i.e.
``batch x (context + gamma + 1)`` tokens (split over the EP groups). Batches that do
not fit are left out of the sweep (no speedup is computed for them) and listed under
the group's ``oom_rows`` with ``fits: false``; when no batch of a group fits, the
study is an out-of-memory verdict (exit 3), as in ``xpusim infer``. (The draft's own
KV cache is not counted: a head's is tiny, and a draft model runs on its own
``--draft-devices``.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import EngineProfile
from xpusim.sim.inference.kvcache import MemoryPlan, require_kv_fit, step_kv_bytes
from xpusim.sim.inference.lowering import require_memory
from xpusim.sim.inference.routing import Routing
from xpusim.sim.inference.speculative import (
    SDRow,
    SpeculativeModel,
    band_width,
    peak,
    require_draft_fit,
    sigma_to_alpha,
)
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.units import split_list


def acceptance(alpha: str | float | None, sigma: float | None, gamma: int) -> float | tuple[float, ...]:
    """Acceptance per drafted token: ``sigma`` (MoESD Eq. 5) or ``alpha`` ("0.8" or "a,b,c,d")."""
    if sigma is not None:
        return sigma_to_alpha(sigma, gamma)
    try:
        values = tuple(float(x) for x in split_list(str(alpha), "--alpha"))
    except ValueError:
        raise InputError(
            f"--alpha: expected a rate or comma-separated rates, got '{alpha}'"
        ) from None
    if len(values) == 1:
        return values[0]
    return values


@dataclass(frozen=True)
class SdSetup:
    """What every group of a study shares: the deployment and the SD parameters."""

    system: System
    plan: ParallelPlan  # the target's
    engine: EngineProfile
    gamma: int
    alpha: float | tuple[float, ...]
    context: float  # cached tokens per request
    draft_devices: int  # tensor-parallel size of a draft model
    dtype: str
    routing: Routing
    batches: tuple[int, ...]


@dataclass(frozen=True)
class SdGroup:
    """One target/draft pair swept over the batches: rows, peak and the peak/sqrt(2) band."""

    label: str
    target: ModelSpec
    draft: str  # the draft model's name, or the head kind
    rows: tuple[SDRow, ...]  # the batches that fit
    peak: SDRow
    band: tuple[int, int]  # smallest and largest batch with speedup >= peak / sqrt(2)
    kv_cache_bytes: float  # per device, for the target
    oom_rows: tuple[dict[str, Any], ...]  # batches whose verification does not fit

    def as_dict(self) -> dict[str, Any]:
        moe = self.target.moe
        return {
            "label": self.label,
            "target": self.target.name,
            "draft": self.draft,
            "top_k": moe.top_k if moe else None,
            "num_experts": moe.num_experts if moe else None,
            "rows": [r.as_dict() for r in self.rows],
            "peak": {"batch": self.peak.batch, "speedup": self.peak.speedup},
            "band_sqrt2": {"min_batch": self.band[0], "max_batch": self.band[1]},
            "kv_cache_bytes": self.kv_cache_bytes,
            "oom_rows": list(self.oom_rows),
        }


def sd_group(label: str, target: ModelSpec, draft: ModelSpec | str, setup: SdSetup) -> SdGroup:
    """Sweep one target/draft pair over the setup's batches (those whose KV fits)."""
    s = setup
    memory = require_memory(target, s.system, s.plan, s.engine, s.dtype)
    require_draft_fit(memory, draft, s.system, s.draft_devices, s.engine, s.dtype, label)
    fitting, oom_rows = _kv_fit(label, memory, s)
    model = SpeculativeModel(
        target,
        draft,
        s.system,
        s.plan,
        s.gamma,
        s.alpha,
        s.engine,
        s.context,
        ParallelPlan(tp=s.draft_devices),
        s.dtype,
        s.routing,
    )
    rows = model.sweep(fitting)
    return SdGroup(
        label=label,
        target=target,
        draft=draft if isinstance(draft, str) else draft.name,
        rows=tuple(rows),
        peak=peak(rows),
        band=band_width(rows),
        kv_cache_bytes=memory.kv_cache,
        oom_rows=tuple(oom_rows),
    )


def _kv_fit(label: str, memory: MemoryPlan, s: SdSetup) -> tuple[list[int], list[dict]]:
    """(batches whose verification round fits the KV cache, rows for those that do not).

    Raises the out-of-memory verdict (exit 3) of the smallest batch when none fits.
    """
    cached = s.context + s.gamma  # + the bonus token: step_kv_bytes adds one
    fitting, oom_rows = [], []
    for b in s.batches:
        needed = step_kv_bytes(memory, b, cached, s.plan.ep)
        if needed <= memory.kv_cache:
            fitting.append(b)
        else:
            oom_rows.append({"batch": b, "kv_needed_bytes": needed, "fits": False})
    if not fitting:
        b = min(s.batches)
        require_kv_fit(
            memory,
            step_kv_bytes(memory, b, cached, s.plan.ep),
            f"{label}: SD verification of batch {b} x (context {s.context:g} + "
            f"gamma {s.gamma} + 1) tokens",
        )
    return fitting, oom_rows


def topk_targets(target: ModelSpec, topk: list[int]) -> list[tuple[str, ModelSpec]]:
    """(label "top-<k>", the target with that top-k named "<target> top-<k>") for each
    k (MoESD Fig. 4)."""
    if target.moe is None:
        raise InputError(f"--topk needs an MoE target; {target.name} is dense")
    out = []
    for k in topk:
        if not 1 <= k <= target.moe.num_experts:
            raise InputError(f"--topk {k}: must be in 1..{target.moe.num_experts}")
        spec = replace(target, name=f"{target.name} top-{k}", moe=replace(target.moe, top_k=k))
        out.append((f"top-{k}", spec))
    return out
