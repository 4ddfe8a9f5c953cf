"""``sd``: the speculative-decoding study (MoESD): SD speedup and target efficiency vs
batch size for a target and its draft (``xpusim sd``).

The study is sim/inference/sd_study.py and sim/inference/speculative.py; this module
reads the request (defaults, checks, loading) and assembles the result. Besides the
target/draft group, ``compare_dense``/``draft_dense`` add a dense pair and ``topk``
re-runs the target with other top-k (MoESD Fig. 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.api.base import as_json_dict, request_from_kwargs, require_float16
from xpusim.sim.api.infer import (
    check_moe_flags,
    check_request,
    load_model_arg,
    load_system_arg,
    resolved_dtype,
    verdict_document,
    with_stack_defaults,
)
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import check_engine_device, load_engine
from xpusim.sim.inference.first_token import refuse_generation_first_token
from xpusim.sim.inference.lowering import plan_for
from xpusim.sim.inference.routing import routing_from_text
from xpusim.sim.inference.sd_study import SdGroup, SdSetup, acceptance, sd_group, topk_targets
from xpusim.sim.inference.speculative import (
    HEAD_KINDS,
    SDRow,
    check_draft_vocab,
    check_head_devices,
    expected_tokens,
)
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.units import parse_int_list
from xpusim.sim.validation.track_record import TrackRecord, lookup, record_dict

# The batch sizes of the MoESD paper's sweeps.
PAPER_BATCHES = "1,2,4,8,12,16,20,24,28,32,36,40,44,48,52,56,60,80,100"


@dataclass(frozen=True)
class SdRequest:
    """``xpusim sd``'s flags as data."""

    # A preset name or config.json path, or a ModelSpec (what-if variations); required.
    target: str | ModelSpec | None = None
    # A draft model (name, path or ModelSpec) or a head: eagle, mtp; required.
    draft: str | ModelSpec | None = None
    system: str | System | None = None  # a profile name or path, or a System; required
    nodes: int | None = None  # default: the profile's
    devices: int | None = None  # target devices, all as TP (TP = devices); default 1
    tp: int | None = None  # target tensor-parallel size; with ep, devices = tp x ep
    ep: int = 1
    draft_devices: int = 1  # TP of a draft model (vLLM: 1)
    gamma: int = 4  # draft length
    # Acceptance per drafted token: one rate, or one per position ("a,b,c,d" or a tuple);
    # None: 0.8, unless sigma is given.
    alpha: str | float | tuple[float, ...] | None = None
    sigma: float | None = None  # MoESD's sigma instead of alpha (converted by its Eq. 5)
    batch: str | tuple[int, ...] = PAPER_BATCHES  # batch sizes, comma-separated or a tuple
    context: float = 512.0  # cached context per request (tokens)
    engine: str | None = None  # serving-engine profile, or "none"; default: the device's
    dtype: str | None = None  # default bf16, fp16 on a device without bf16 (V100, 910A)
    routing: str = "uniform"  # uniform, zipf:S or a counts file
    # The kernel of the MoE dispatch / combine under EP: collective (plain all-to-alls),
    # deepep or low-latency (sim/network/ep.py's models; sim/inference/ep_dispatch.py).
    ep_dispatch: str = "collective"
    ep_dispatch_dtype: str = "bf16"  # dispatched activations: bf16, fp16, fp8 or int8
    # The low-latency kernel's same-node copies: "nic" (NIC to NIC) or "fabric"
    # (NVLink/xGMI stores); only with ep_dispatch "low-latency" (network/ep.py LL_INTRANODE).
    ll_intranode: str = "nic"
    seed: int = 0
    compare_dense: str | ModelSpec | None = None  # a dense target to compare (e.g. opt-30b)
    draft_dense: str | ModelSpec | None = None  # its draft (e.g. opt-350m)
    topk: str | tuple[int, ...] | None = None  # also run the target with these top-k


@dataclass(frozen=True)
class SdResult:
    """The study; ``as_dict()`` is ``xpusim sd --json``. Headline fields are the first
    group's (the target with its draft)."""

    target: str
    draft: str
    system: str
    device: str
    plan: ParallelPlan  # the target's tp and ep
    engine: str
    gamma: int
    alpha: float | tuple[float, ...]
    expected_tokens: float  # tokens per request per SD round
    context: float
    peak_speedup: float
    peak_batch: int
    rows: tuple[SDRow, ...]  # the first group's, one per batch that fits
    groups: tuple[SdGroup, ...]  # the target/draft pair, then the dense pair and top-k runs

    def track_record(self) -> TrackRecord | None:
        """How far speculative-decoding predictions have been off here."""
        return lookup("sd", self.device, self.engine)

    def as_dict(self) -> dict[str, Any]:
        first = self.groups[0].as_dict()
        return as_json_dict(
            {
                **_header(self.target, self.draft, self.system, self.device, self.plan,
                          self.engine, self.gamma, self.alpha, self.expected_tokens,
                          self.context),  # fmt: skip
                "rows": first["rows"],
                "peak": first["peak"],
                "groups": [g.as_dict() for g in self.groups],
                "track_record": record_dict(self.track_record()),
            }
        )


def sd(request: SdRequest | None = None, /, **kwargs: Any) -> SdResult:
    """Run the SD study. Raises ``NegativeVerdict`` (payload: the study's JSON header with
    ``"oom": true``, the group and the memory breakdown) when a target's weights leave no
    room for a KV cache, a draft model does not fit beside it, or no batch's verification
    round fits the KV cache."""
    req = request_from_kwargs(SdRequest, request, kwargs, "xpusim.sd")
    check_request(req)
    req = with_stack_defaults(req)  # engine and dtype of the device (sim.api.infer)
    system = load_system_arg(req.system, req.nodes)
    require_float16(system.device, resolved_dtype(req), "--dtype")
    setup, tokens = _setup(req, system)
    target = load_model_arg(req.target, "--target")
    check_moe_flags(target, setup.plan, req.routing, req.ep_dispatch, req.ep_dispatch_dtype,
                    req.ll_intranode)
    draft = _draft(req.draft, "--draft")
    check_head_devices(draft, req.draft_devices)
    check_draft_vocab(target, draft)
    draft_name = draft if isinstance(draft, str) else draft.name
    header = _header(target.name, draft_name, system.name, system.device.name, setup.plan,
                     setup.engine.name, req.gamma, setup.alpha, tokens, setup.context)  # fmt: skip
    with verdict_document({**header, "group": target.name}):
        groups = [sd_group(target.name, target, draft, setup)]
    for label, t, d in _more_groups(req, target, draft):
        with verdict_document({**header, "group": label}):
            groups.append(sd_group(label, t, d, setup))
    first = groups[0]
    return SdResult(
        target=target.name,
        draft=draft_name,
        system=system.name,
        device=system.device.name,
        plan=setup.plan,
        engine=setup.engine.name,
        gamma=req.gamma,
        alpha=setup.alpha,
        expected_tokens=tokens,
        context=setup.context,
        peak_speedup=first.peak.speedup,
        peak_batch=first.peak.batch,
        rows=first.rows,
        groups=tuple(groups),
    )


def _setup(req: SdRequest, system: System) -> tuple[SdSetup, float]:
    """The shared part of every group, and the expected tokens per round."""
    if req.context < 0:
        raise InputError(f"--context must be >= 0 cached tokens per request, got {req.context:g}")
    if req.draft_devices < 1:
        raise InputError(f"--draft-devices must be >= 1, got {req.draft_devices}")
    if req.alpha is not None and req.sigma is not None:
        raise InputError("give --alpha or --sigma, not both")
    engine = load_engine(req.engine)
    check_engine_device(engine, system.device)
    refuse_generation_first_token(engine, "sd")
    plan = plan_for(req.devices, req.tp, req.ep)
    batches = _int_list(req.batch, "--batch")
    if min(batches) < 1:
        raise InputError("--batch: batch sizes must be >= 1")
    alpha = acceptance(_alpha_text(req.alpha), req.sigma, req.gamma)
    tokens = expected_tokens(alpha, req.gamma)
    routing = routing_from_text(req.routing, req.seed, req.ep_dispatch,
                                req.ep_dispatch_dtype, req.ll_intranode)
    setup = SdSetup(
        system, plan, engine, req.gamma, alpha, float(req.context), req.draft_devices,
        resolved_dtype(req), routing, tuple(batches),
    )  # fmt: skip
    return setup, tokens


def _more_groups(
    req: SdRequest, target: ModelSpec, draft: ModelSpec | str
) -> list[tuple[str, ModelSpec, ModelSpec | str]]:
    """(label, target, draft) of the dense comparison and the top-k runs."""
    out: list[tuple[str, ModelSpec, ModelSpec | str]] = []
    if req.draft_dense and not req.compare_dense:  # was ignored, even an unknown name
        raise InputError("--draft-dense is the draft of --compare-dense MODEL: add it or drop both")
    if req.compare_dense:
        if not req.draft_dense:
            raise InputError("--compare-dense needs --draft-dense (e.g. opt-350m)")
        dense = load_model_arg(req.compare_dense, "--compare-dense")
        dense_draft = _draft(req.draft_dense, "--draft-dense")
        check_draft_vocab(dense, dense_draft, "--draft-dense")
        out.append((dense.name, dense, dense_draft))
    if req.topk:
        for label, spec in topk_targets(target, _int_list(req.topk, "--topk")):
            out.append((label, spec, draft))
    return out


def _header(
    target: str, draft: str, system: str, device: str, plan: ParallelPlan, engine: str,
    gamma: int, alpha: float | tuple[float, ...], tokens: float, context: float,
) -> dict[str, Any]:  # fmt: skip
    return {
        "target": target,
        "draft": draft,
        "system": system,
        "device": device,
        "tp": plan.tp,
        "ep": plan.ep,
        "engine": engine,
        "gamma": gamma,
        "alpha": alpha,
        "expected_tokens": tokens,
        "context": context,
    }


def _draft(value: str | ModelSpec | None, flag: str) -> ModelSpec | str:
    """A head kind as is, else the draft model."""
    if isinstance(value, str) and value in HEAD_KINDS:
        return value
    return load_model_arg(value, flag)


def _alpha_text(alpha: str | float | tuple[float, ...] | None) -> str | float:
    if alpha is None:
        return 0.8
    if isinstance(alpha, tuple | list):
        return ",".join(str(a) for a in alpha)
    return alpha


def _int_list(value: str | int | tuple[int, ...] | list[int], flag: str) -> list[int]:
    if isinstance(value, str):
        return parse_int_list(value, flag)
    if isinstance(value, int):
        return [value]
    if not value or not all(type(v) is int for v in value):  # bools are not batch sizes
        raise InputError(f"{flag}: expected comma-separated integers, got {value!r}")
    return list(value)
