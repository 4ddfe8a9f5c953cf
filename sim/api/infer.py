"""``infer``: one prefill or decode step of a model on a deployment (``xpusim infer``
without ``--serve``; the serving run is ``xpusim.sim.api.serve``).

The step is lowered to per-rank IR (sim/inference/lowering.py), priced by the cost model
and the network, and scheduled by the engine; the serving engine's host overheads come
from an engine profile (hwprofiles/engines/). The deployment fields (``model`` ...
``attention_impl``) are shared with ``serve``: ``load_deployment`` builds what both run on.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import System
from xpusim.sim.api.base import (
    as_json_dict,
    float16_default,
    request_from_kwargs,
    require_float16,
)
from xpusim.sim.cost.attention_impl import check_impl
from xpusim.sim.errors import InputError, NegativeVerdict
from xpusim.sim.inference.engine_profile import (
    EngineProfile,
    check_engine_device,
    default_engine,
    load_engine,
)
from xpusim.sim.inference.first_token import (
    FirstTokenStep,
    first_token_step,
    from_generation,
    refuse_pipeline,
)
from xpusim.sim.inference.kvcache import (
    MemoryPlan,
    require_kv_fit,
    stage_memory,
    step_kv_bytes,
)
from xpusim.sim.inference.lowering import (
    StepBatch,
    StepResult,
    StepSimulator,
    check_plan,
    plan_for,
    require_memory,
)
from xpusim.sim.inference.pipeline import PipelineSimulator, PipelineStep
from xpusim.sim.inference.routing import Routing, routing_from_text
from xpusim.sim.limits import check_namespace
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.validation.track_record import TrackRecord, lookup, record_dict

PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class InferRequest:
    """``xpusim infer``'s flags (without ``--serve``) as data."""

    # A preset name or Hugging Face config.json path, or a ModelSpec (what-if variations).
    model: str | ModelSpec | None = None  # required
    # A profile name or path, or a System (what-if variations); required.
    system: str | System | None = None
    nodes: int | None = None  # default: the profile's
    devices: int | None = None  # all as tensor parallel (TP = devices); default 1
    tp: int | None = None  # tensor-parallel size; devices = tp x pp x ep
    ep: int = 1  # expert-parallel groups (MoE)
    pp: int = 1  # pipeline stages (vLLM 0.6's layer split; needs tp)
    # Serving-engine profile name or path; "none": no host work. Default (None): the
    # device's, vllm-0.6 or on Ascend vllm-ascend-0.9 (engine_profile.default_engine).
    engine: str | None = None
    dtype: str | None = None  # default bf16, fp16 on a device without bf16 (V100, 910A)
    routing: str = "uniform"  # MoE routing: uniform, zipf:S or a file of per-expert counts
    # The kernel of the MoE dispatch / combine under EP: collective (plain all-to-alls),
    # deepep or low-latency (sim/network/ep.py's models; sim/inference/ep_dispatch.py).
    ep_dispatch: str = "collective"
    ep_dispatch_dtype: str = "bf16"  # dispatched activations: bf16, fp16, fp8 or int8
    # The low-latency kernel's same-node copies: "nic" (NIC to NIC) or "fabric"
    # (NVLink/xGMI stores); only with ep_dispatch "low-latency" (network/ep.py LL_INTRANODE).
    ll_intranode: str = "nic"
    seed: int = 0
    attention_impl: str | None = None  # default: the device's (docs/attention.md)
    phase: str = "decode"  # prefill | decode
    batch: int = 1  # requests in the step
    context: int = 1024  # prompt length (prefill) or cached context per request (decode)


@dataclass(frozen=True)
class InferResult:
    """One simulated step; ``as_dict()`` is ``xpusim infer --json``."""

    model: str
    system: str
    device: str  # the device's name (e.g. "A100-SXM4-80GB")
    plan: ParallelPlan  # tp, pp and ep of the deployment (devices = tp x pp x ep)
    engine: str
    phase: str
    batch: int
    context: int
    dtype: str
    time_s: float  # the step, host work included
    tokens_per_s: float  # new tokens of the step per second
    bound: str  # the largest term: compute, memory, kernel overhead, communication, host
    step: StepResult  # the full step: time by kind, bytes read, kernels
    memory: MemoryPlan  # per-device memory of the deployment
    kv_needed_bytes: float  # KV cache this step keeps on one device
    spec: ModelSpec  # the model simulated
    # With pp > 1: each stage's times, and each stage's memory (``memory`` is the stage
    # that caches the fewest tokens, which sizes every stage's cache).
    pipeline: PipelineStep | None = None
    stage_memory: tuple[MemoryPlan, ...] = ()
    # A prefill with an engine whose first token comes from a generation step (TurboMind
    # 0.1): the context decode and the first generation step that ``step`` composes.
    first_token: FirstTokenStep | None = None

    def track_record(self) -> TrackRecord | None:
        """How far predictions of this phase on this device and engine have been off."""
        return lookup(self.phase, self.device, self.engine)

    def as_dict(self) -> dict[str, Any]:
        return as_json_dict(
            {
                "model": self.model,
                "system": self.system,
                "device": self.device,
                "tp": self.plan.tp,
                "pp": self.plan.pp,
                "ep": self.plan.ep,
                "devices": self.plan.devices,
                "engine": self.engine,
                "phase": self.phase,
                "batch": self.batch,
                "context": self.context,
                "dtype": self.dtype,
                **self.step.as_dict(),
                "tokens_per_s": self.tokens_per_s,
                "memory": {
                    **self.memory.as_dict(),
                    "kv_needed_bytes": self.kv_needed_bytes,
                    "fits": self.kv_needed_bytes <= self.memory.kv_cache,
                },
                **({"pipeline": self._pipeline_dict()} if self.pipeline else {}),
                **({"first_token": self.first_token.as_dict()} if self.first_token else {}),
                "track_record": record_dict(self.track_record()),
            }
        )

    def _pipeline_dict(self) -> dict[str, Any]:
        assert self.pipeline is not None
        out = self.pipeline.as_dict()
        for stage, memory in zip(out["stages"], self.stage_memory, strict=True):
            stage["memory"] = memory.as_dict()
        return out


def infer(request: InferRequest | None = None, /, **kwargs: Any) -> InferResult:
    """Simulate one prefill or decode step. Raises ``NegativeVerdict`` (payload: the
    command's JSON document with ``"oom": true`` and the memory breakdown) when the
    weights leave no room for a KV cache, or when this step's KV cache does not fit."""
    req = request_from_kwargs(InferRequest, request, kwargs, "xpusim.infer")
    check_request(req)  # the flags' limits (--nodes among them) before the system loads
    req = with_stack_defaults(req)

    def verdict(
        spec: ModelSpec, system: System, plan: ParallelPlan, engine: EngineProfile
    ) -> dict[str, Any]:
        return _verdict_header(spec, system, plan, req)

    dep = load_deployment(req, verdict)
    refuse_pipeline(dep.engine, dep.plan.pp)
    if req.phase not in PHASES:
        raise InputError(f"--phase '{req.phase}': choose prefill or decode")
    if req.batch < 1 or req.context < (1 if req.phase == "prefill" else 0):
        raise InputError("--batch must be >= 1 and --context >= 1 (prefill) or >= 0 (decode)")
    batch = StepBatch.for_phase(req.phase, req.batch, req.context)
    # Checked before simulating: an out-of-memory verdict, like train's.
    kv_needed = step_kv_bytes(dep.memory, req.batch, req.context, dep.plan.ep)
    with verdict_document(verdict(dep.spec, dep.system, dep.plan, dep.engine)):
        require_kv_fit(
            dep.memory, kv_needed, f"{req.phase} of batch {req.batch} x context {req.context}"
        )
    pipeline: PipelineStep | None = None
    first: FirstTokenStep | None = None
    if isinstance(dep.sim, PipelineSimulator):
        pipeline = dep.sim.run(batch)
        step = pipeline.step
    elif req.phase == "prefill" and from_generation(dep.engine):
        first = first_token_step(dep.sim, req.batch, req.context)
        step = first.step
    else:
        step = dep.sim.run(batch)
    return InferResult(
        model=dep.spec.name,
        system=dep.system.name,
        device=dep.system.device.name,
        plan=dep.plan,
        engine=dep.engine.name,
        phase=req.phase,
        batch=req.batch,
        context=req.context,
        dtype=resolved_dtype(req),
        time_s=step.time_s,
        tokens_per_s=batch.tokens / step.time_s,
        bound=step.bound,
        step=step,
        memory=dep.memory,
        kv_needed_bytes=kv_needed,
        spec=dep.spec,
        pipeline=pipeline,
        stage_memory=dep.stage_memory,
        first_token=first,
    )


def _verdict_header(
    spec: ModelSpec, system: System, plan: ParallelPlan, req: InferRequest
) -> dict[str, Any]:
    """The step's identity in the document of an out-of-memory verdict."""
    return {
        "model": spec.name,
        "system": system.name,
        "tp": plan.tp,
        "pp": plan.pp,
        "ep": plan.ep,
        "devices": plan.devices,
        "phase": req.phase,
        "batch": req.batch,
        "context": req.context,
    }


# --- what infer and serve share ---------------------------------------------------------


class DeploymentFields(Protocol):
    """The request fields of a deployment (``InferRequest`` and ``ServeRequest``)."""

    @property
    def model(self) -> str | ModelSpec | None: ...
    @property
    def system(self) -> str | System | None: ...
    @property
    def nodes(self) -> int | None: ...
    @property
    def devices(self) -> int | None: ...
    @property
    def tp(self) -> int | None: ...
    @property
    def ep(self) -> int: ...
    @property
    def pp(self) -> int: ...
    @property
    def engine(self) -> str | None: ...
    @property
    def dtype(self) -> str | None: ...
    @property
    def routing(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def ep_dispatch(self) -> str: ...
    @property
    def ep_dispatch_dtype(self) -> str: ...
    @property
    def ll_intranode(self) -> str: ...
    @property
    def attention_impl(self) -> str | None: ...


@dataclass(frozen=True)
class Deployment:
    """A model on a system under a plan with an engine: what a step or a run simulates."""

    spec: ModelSpec
    system: System
    plan: ParallelPlan
    engine: EngineProfile
    routing: Routing
    memory: MemoryPlan
    sim: StepSimulator | PipelineSimulator  # the latter with pp > 1
    stage_memory: tuple[MemoryPlan, ...] = ()  # each stage's, with pp > 1


def check_request(request: Any) -> None:
    """The flags' limits (``xpusim.sim.limits``) hold for a request as on the command line."""
    check_namespace(argparse.Namespace(**vars(request)))


VerdictDocument = Callable[[ModelSpec, System, ParallelPlan, EngineProfile], dict[str, Any]]


def load_deployment(req: DeploymentFields, verdict: VerdictDocument) -> Deployment:
    """The deployment a request names. ``verdict`` gives the command's document for an
    out-of-memory verdict (the weights leave no room for a KV cache)."""
    spec = load_model_arg(req.model, "--model")
    system = load_system_arg(req.system, req.nodes)
    engine = load_engine(req.engine or default_engine(system.device))
    check_engine_device(engine, system.device)
    dtype = req.dtype or float16_default(system.device)
    require_float16(system.device, dtype, "--dtype")
    plan = plan_for(req.devices, req.tp, req.ep, req.pp)
    routing = routing_from_text(req.routing, req.seed, req.ep_dispatch,
                                req.ep_dispatch_dtype, req.ll_intranode)
    check_moe_flags(spec, plan, req.routing, req.ep_dispatch, req.ep_dispatch_dtype,
                    req.ll_intranode)
    check_plan(spec, system, plan)  # a bad --pp or device count before the memory plan
    with verdict_document(verdict(spec, system, plan, engine)):
        memory = require_memory(spec, system, plan, engine, dtype)
    if req.attention_impl:
        check_impl(system.device, req.attention_impl, "--attention-impl")
    if plan.pp > 1:
        stages = stage_memory(spec, system.device.hbm_capacity, plan.tp, plan.ep, plan.pp,
                              dtype, engine.memory_utilization, engine.max_batched_tokens,
                              vocab=engine.vocab_layout(), max_num_seqs=engine.max_num_seqs)
        pipe = PipelineSimulator(spec, system, plan, engine, dtype, routing,
                                 req.attention_impl)
        return Deployment(spec, system, plan, engine, routing, memory, pipe, tuple(stages))
    sim = StepSimulator(
        spec, system, plan, engine, dtype, routing, attention_impl=req.attention_impl
    )
    return Deployment(spec, system, plan, engine, routing, memory, sim)


def check_moe_flags(
    spec: ModelSpec, plan: ParallelPlan, routing: str, ep_dispatch: str, ep_dispatch_dtype: str,
    ll_intranode: str,
) -> None:
    """MoE-only flags on a step that has no experts, or no EP all-to-all, were ignored
    (infer, serve and sd)."""
    given = {"--routing": routing != "uniform", "--ep-dispatch": ep_dispatch != "collective",
             "--ep-dispatch-dtype": ep_dispatch_dtype != "bf16",
             "--ll-intranode": ll_intranode != "nic"}
    if not spec.moe and any(given.values()):
        flags = ", ".join(flag for flag, on in given.items() if on)
        raise InputError(f"{flags}: {spec.name} is dense (no experts to route); drop "
                         + ("them" if "," in flags else "it"))
    if plan.ep == 1 and (given["--ep-dispatch"] or given["--ep-dispatch-dtype"]):
        raise InputError("--ep-dispatch/--ep-dispatch-dtype/--ll-intranode price the "
                         "expert-parallel all-to-alls, which --ep 1 has none of; give --ep > 1 "
                         "or drop them")


@contextmanager
def verdict_document(document: dict[str, Any]) -> Iterator[None]:
    """Re-raise an out-of-memory verdict from below (whose payload is the memory
    breakdown) with the command's whole JSON document: ``document``, ``"oom": true`` and
    the breakdown under ``"memory"``."""
    try:
        yield
    except NegativeVerdict as verdict:
        raise NegativeVerdict(
            str(verdict), {**document, "oom": True, "memory": verdict.payload}
        ) from None


def load_model_arg(value: str | ModelSpec | None, flag: str) -> ModelSpec:
    """A model field: a ModelSpec as is, else a preset name or config.json path."""
    if isinstance(value, ModelSpec):
        return value
    if not value:
        raise InputError(
            f"{flag} is required: a preset such as llama-2-7b, or a config.json path"
        )
    return load_model(value)


class StackFields(Protocol):
    """The request fields ``with_stack_defaults`` reads (infer, serve and sd requests)."""

    @property
    def system(self) -> str | System | None: ...
    @property
    def nodes(self) -> int | None: ...
    @property
    def engine(self) -> str | None: ...
    @property
    def dtype(self) -> str | None: ...


Req = TypeVar("Req", bound=StackFields)


def with_stack_defaults(req: Req) -> Req:
    """``engine`` and ``dtype`` left None take the system's device's: its arch's engine
    (``default_engine``) and 16-bit format (``float16_default``). The system is loaded once
    here and passed on as a System, so nothing loads it twice."""
    if req.engine is not None and req.dtype is not None:
        return req
    system = load_system_arg(req.system, req.nodes)
    return replace(  # type: ignore[type-var]
        req,
        system=system,
        nodes=None,
        engine=default_engine(system.device) if req.engine is None else req.engine,
        dtype=float16_default(system.device) if req.dtype is None else req.dtype,
    )


def resolved_dtype(req: StackFields) -> str:
    """``req.dtype`` after ``with_stack_defaults`` (never None there)."""
    if req.dtype is None:
        raise ValueError("resolve the request's defaults first (with_stack_defaults)")
    return req.dtype


def load_system_arg(value: str | System | None, nodes: int | None, flag: str = "--system") -> System:
    """A system field: a System as is (its node count is used), else a profile name or
    path with ``nodes`` nodes (default: the profile's)."""
    if isinstance(value, System):
        if nodes is not None and nodes != value.nodes:
            raise InputError(
                f"nodes={nodes} beside a System of {value.nodes} nodes: build the System "
                "with the node count wanted, or pass the system by name"
            )
        return value
    if not value:
        raise InputError(f"{flag} is required: a system profile name or path (e.g. hgx-a800)")
    return load_system(value, nodes=nodes)
