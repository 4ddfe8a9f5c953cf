"""``serve``: a serving run, continuous batching of a request stream (``xpusim infer
--serve``), optionally with speculative decoding (``draft``) or disaggregated into a
prefill and a decode pool (``prefill_system``/``decode_system``/``prefill_devices``/
``decode_devices``).

The colocated run gives a ``ServeResult``; a disaggregated one (any pool field set) a
``DisaggServeResult`` comparing the split deployment with the colocated one of
``system``/``devices``/``tp``/``ep`` (by default as many devices as both pools).
The scheduler is sim/inference/serving.py, the split sim/inference/disagg.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.api.base import (
    as_json_dict,
    float16_default,
    request_from_kwargs,
    require_float16,
)
from xpusim.sim.api.infer import (
    Deployment,
    check_request,
    load_deployment,
    load_model_arg,
    load_system_arg,
    resolved_dtype,
    verdict_document,
    with_stack_defaults,
)
from xpusim.sim.errors import InputError
from xpusim.sim.inference.disagg import (
    DecodeOnlyCosts,
    DisaggResult,
    goodput,
    kv_path,
    run_disaggregated,
)
from xpusim.sim.inference.engine_profile import (
    EngineProfile,
    check_engine_device,
    default_engine,
    load_engine,
)
from xpusim.sim.inference.first_token import refuse_generation_first_token
from xpusim.sim.inference.graph_padding import capture_sizes
from xpusim.sim.inference.kvcache import MemoryPlan, kv_bytes_per_token, kv_cache_dtype, kv_layout
from xpusim.sim.inference.lowering import StepSimulator, plan_for, require_memory
from xpusim.sim.inference.pipeline import PipelineSimulator
from xpusim.sim.inference.pipeline_costs import PipelineCosts
from xpusim.sim.inference.routing import Routing, routing_from_text
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.serving import ServeResult as ServingRun
from xpusim.sim.inference.serving_pp import PipelineServer, check_pp_engine
from xpusim.sim.inference.serving_pp_queue import BatchQueueServer
from xpusim.sim.inference.speculative import (
    HEAD_KINDS,
    check_draft_vocab,
    check_head_devices,
    draft_simulator,
    require_draft_fit,
)
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.trtllm_bench import run_limits
from xpusim.sim.inference.workload import LengthDist, Workload, make_requests
from xpusim.sim.limits import MAX_REQUESTS, MAX_SEQ, check_int
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.validation.track_record import TrackRecord, lookup, record_dict

# Defaults of the speculative-decoding fields (used only with a draft: one given
# without a draft is refused, not silently ignored, so the fields default to None).
SD_DEFAULTS = {"gamma": 4, "alpha": 0.8, "draft_devices": 1}
POOL_FIELDS = ("prefill_system", "decode_system", "prefill_devices", "decode_devices")


@dataclass(frozen=True)
class ServeRequest:
    """``xpusim infer --serve``'s flags as data."""

    # The deployment, as InferRequest's.
    model: str | ModelSpec | None = None  # required
    system: str | System | None = None  # required
    nodes: int | None = None  # default: the profile's
    devices: int | None = None  # all as tensor parallel (TP = devices); default 1
    tp: int | None = None
    ep: int = 1
    pp: int = 1  # pipeline stages (needs tp; sim/inference/serving_pp.py)
    engine: str | None = None  # default: the device's (InferRequest.engine)
    dtype: str | None = None  # default bf16, fp16 on a device without bf16 (V100, 910A)
    routing: str = "uniform"
    # The kernel of the MoE dispatch / combine under EP: collective (plain all-to-alls),
    # deepep or low-latency (sim/network/ep.py's models; sim/inference/ep_dispatch.py).
    ep_dispatch: str = "collective"
    ep_dispatch_dtype: str = "bf16"  # dispatched activations: bf16, fp16, fp8 or int8
    # The low-latency kernel's same-node copies: "nic" (NIC to NIC) or "fabric"
    # (NVLink/xGMI stores); only with ep_dispatch "low-latency" (network/ep.py LL_INTRANODE).
    ll_intranode: str = "nic"
    seed: int = 0
    attention_impl: str | None = None  # default: the device's
    # The request stream.
    rate: float = 1.0  # Poisson arrivals, requests/s
    requests: int = 200
    trace: str | None = None  # CSV of arrival_s,prompt_tokens,output_tokens (replaces the above)
    prompt_len: str = "uniform:128:1024"  # N, uniform:A:B or exp:MEAN
    output_len: str = "exp:256"
    # Speculative decoding: a draft model (name or ModelSpec) or head (eagle, mtp).
    draft: str | ModelSpec | None = None
    gamma: int | None = None  # tokens drafted per round; default 4 (with a draft)
    alpha: float | None = None  # mean acceptance, sampled per request; default 0.8
    draft_devices: int | None = None  # tensor-parallel size of a draft model; default 1
    # Disaggregated serving: any of the four pool fields makes the run disaggregated.
    prefill_system: str | System | None = None  # default: system
    decode_system: str | System | None = None  # default: system
    prefill_devices: int | None = None  # required when disaggregated
    decode_devices: int | None = None  # required when disaggregated
    slo_ttft: float | None = None  # goodput SLO on time to first token, s
    slo_tpot: float | None = None  # goodput SLO on time per output token, s
    # The run's own scheduler limits (vLLM's --max-num-seqs / --max-num-batched-tokens,
    # trtllm-bench's --max_batch_size / --max_num_tokens): each replaces the engine
    # profile's value, or what its per-run heuristic would choose. Default: the engine's.
    max_num_seqs: int | None = None
    max_batched_tokens: int | None = None
    progress: bool = False  # progress bar on stderr

    @property
    def disaggregated(self) -> bool:
        return any(getattr(self, name) is not None for name in POOL_FIELDS)


@dataclass(frozen=True)
class ServeResult:
    """A colocated serving run; ``as_dict()`` is ``xpusim infer --serve --json``."""

    model: str
    system: str
    device: str
    plan: ParallelPlan
    engine: str
    rate: float | None  # None with a trace
    trace: str | None
    draft: str | None
    gamma: int | None  # None without a draft
    alpha: float | None
    seed: int
    throughput_tokens_per_s: float  # output tokens per second over the makespan
    throughput_requests_per_s: float
    total_tokens_per_s: float  # prompt + output tokens per second over the makespan
    ttft_mean_s: float | None  # None when no request completed
    tpot_mean_s: float | None
    metrics: dict[str, Any]  # percentiles of TTFT/TPOT/latency, steps, preemptions...
    run: ServingRun  # the requests with their times

    def track_record(self) -> TrackRecord | None:
        """How far serving predictions on this device and engine have been off."""
        return lookup("serving", self.device, self.engine)

    def as_dict(self) -> dict[str, Any]:
        return as_json_dict(
            {
                "model": self.model,
                "system": self.system,
                "tp": self.plan.tp,
                "ep": self.plan.ep,
                **({"pp": self.plan.pp} if self.plan.pp > 1 else {}),
                "engine": self.engine,
                "rate": self.rate,
                "trace": self.trace,
                "draft": self.draft,
                "gamma": self.gamma,
                "alpha": self.alpha,
                "seed": self.seed,
                **self.metrics,
                "track_record": record_dict(self.track_record()),
            }
        )


@dataclass(frozen=True)
class Pool:
    """One deployment of a disaggregated comparison."""

    system: str
    device: str
    plan: ParallelPlan

    def as_dict(self) -> dict[str, Any]:
        return {"system": self.system, "devices": self.plan.devices, "tp": self.plan.tp,
                "ep": self.plan.ep}


@dataclass(frozen=True)
class DisaggServeResult:
    """Disaggregated serving beside the colocated deployment; ``as_dict()`` is ``xpusim
    infer --serve --prefill-system ... --json``."""

    model: str
    engine: str
    dtype: str
    seed: int
    slo_ttft_s: float | None
    slo_tpot_s: float | None
    kv_bytes_per_token: float  # what crosses from prefill to decode per prompt token
    prefill: Pool
    decode: Pool
    colocated: Pool
    throughput_tokens_per_s: float  # of the split deployment
    goodput_requests_per_s: float  # of the split deployment
    colocated_throughput_tokens_per_s: float
    colocated_goodput_requests_per_s: float
    metrics: dict[str, Any]  # the split deployment's, with the KV transfer
    colocated_metrics: dict[str, Any]  # as ServeResult.metrics, plus goodput
    run: DisaggResult  # both pools' runs and the user's view of each request

    def as_dict(self) -> dict[str, Any]:
        return as_json_dict(
            {
                "model": self.model,
                "engine": self.engine,
                "dtype": self.dtype,
                "seed": self.seed,
                "slo_ttft_s": self.slo_ttft_s,
                "slo_tpot_s": self.slo_tpot_s,
                "kv_bytes_per_token": self.kv_bytes_per_token,
                "disaggregated": {
                    "prefill": self.prefill.as_dict(),
                    "decode": self.decode.as_dict(),
                    **self.metrics,
                },
                "colocated": {**self.colocated.as_dict(), **self.colocated_metrics},
            }
        )


def serve(
    request: ServeRequest | None = None, /, **kwargs: Any
) -> ServeResult | DisaggServeResult:
    """Simulate a serving run: a ``ServeResult``, or with a pool field set a
    ``DisaggServeResult``. Raises ``NegativeVerdict`` (payload: the command's JSON
    document with ``"oom": true`` and the memory breakdown) when a deployment's weights
    leave no room for a KV cache or a draft model does not fit beside its target."""
    req = request_from_kwargs(ServeRequest, request, kwargs, "xpusim.serve")
    check_request(req)
    requested_limits(req, 1, 1)  # refuse bad limits before any simulation
    if req.pp != 1 and (req.draft is not None or req.disaggregated):
        raise InputError(
            f"--pp {req.pp} with --serve runs pipeline-parallel serving without speculative "
            "decoding or disaggregated pools (neither is modelled with pipeline stages): "
            "drop --draft and the pool flags, or --pp"
        )
    gamma, alpha, draft_devices = speculative_options(req)
    for flag, v in (("--slo-ttft", req.slo_ttft), ("--slo-tpot", req.slo_tpot)):
        if v is not None and not v > 0:
            raise InputError(f"{flag} must be > 0 seconds, got {v}")
        if v is not None and not req.disaggregated:
            raise InputError(
                f"{flag} sets the goodput of disaggregated serving (--prefill-system and "
                "--decode-system); a colocated run reports no goodput: drop it or add the pools"
            )
    if req.disaggregated:
        return _serve_disaggregated(req)
    return _serve_colocated(with_stack_defaults(req), gamma, alpha, draft_devices)


def requested_limits(req: ServeRequest, seqs: int, tokens: int) -> tuple[int, int]:
    """(max_num_seqs, max_batched_tokens) of the run: the engine's ``seqs`` / ``tokens``
    unless the request sets its own, as the serving tools' flags replace the engine's
    settings (vLLM ``--max-num-seqs``, trtllm-bench ``--max_batch_size``)."""
    if req.max_num_seqs is not None:
        seqs = check_int(req.max_num_seqs, "--max-num-seqs", 1, MAX_REQUESTS)
    if req.max_batched_tokens is not None:
        tokens = check_int(req.max_batched_tokens, "--max-batched-tokens", 1, MAX_SEQ)
    return seqs, tokens


def speculative_options(req: ServeRequest) -> tuple[int, float, int]:
    """(gamma, alpha, draft_devices) with their defaults; refused without a draft."""
    given = [name for name in SD_DEFAULTS if getattr(req, name) is not None]
    if given and not req.draft:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise InputError(
            f"{flags} needs --draft (speculative decoding): add --draft MODEL (or eagle, mtp) "
            f"with --serve, or drop {flags}"
        )
    check_head_devices(req.draft, req.draft_devices)
    gamma = SD_DEFAULTS["gamma"] if req.gamma is None else req.gamma
    alpha = SD_DEFAULTS["alpha"] if req.alpha is None else req.alpha
    draft_devices = SD_DEFAULTS["draft_devices"] if req.draft_devices is None else req.draft_devices
    return int(gamma), float(alpha), int(draft_devices)


def check_speculative_args(gamma: int, alpha: float, draft_devices: int) -> None:
    """The draft options of a serving run: a draft length, a probability, a TP size."""
    if gamma < 1:
        raise InputError(f"--gamma must be >= 1 (tokens drafted per round), got {gamma}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(
            f"--alpha must be in [0, 1] (mean acceptance per drafted token), got {alpha}"
        )
    if draft_devices < 1:
        raise InputError(f"--draft-devices must be >= 1, got {draft_devices}")


def _workload(req: ServeRequest, alpha: float) -> Workload:
    return Workload(
        req.requests,
        float(req.rate),
        LengthDist.parse(req.prompt_len, "--prompt-len"),
        LengthDist.parse(req.output_len, "--output-len"),
        req.seed,
        req.trace,
        alpha,
    )


def run_kv_tokens(dep: Deployment, dtype: str, max_tokens: int, max_seqs: int) -> float:
    """The KV room of a run: the deployment's memory plan with its activation reserve at
    the run's token budget and batch limit. vLLM sizes its cache after a profiling forward
    of max_num_batched_tokens tokens and a TensorRT engine is built for max_num_tokens, so
    when trtllm-bench's heuristic or a flag sets other limits than the engine profile's,
    the reserve follows the run's, not the profile's fallbacks."""
    engine = dep.engine
    if (max_tokens, max_seqs) == (engine.max_batched_tokens, engine.max_num_seqs):
        return float(dep.memory.kv_tokens)
    engine = dataclasses.replace(engine, max_batched_tokens=max_tokens, max_num_seqs=max_seqs)
    return float(require_memory(dep.spec, dep.system, dep.plan, engine, dtype).kv_tokens)


def _serve_colocated(req: ServeRequest, gamma: int, alpha: float, draft_devices: int) -> ServeResult:
    draft_name = req.draft.name if isinstance(req.draft, ModelSpec) else req.draft
    sd = req.draft is not None

    def document(
        spec: ModelSpec, system: System, plan: ParallelPlan, engine: EngineProfile
    ) -> dict[str, Any]:
        return {
            "model": spec.name, "system": system.name, "tp": plan.tp, "ep": plan.ep,
            "engine": engine.name, "rate": None if req.trace else float(req.rate),
            "trace": req.trace, "draft": draft_name, "gamma": gamma if sd else None,
            "alpha": alpha if sd else None, "seed": req.seed,
        }  # fmt: skip

    dep = load_deployment(req, document)
    refuse_generation_first_token(dep.engine, "--serve")
    dtype = resolved_dtype(req)
    if sd:
        check_speculative_args(gamma, alpha, draft_devices)
    workload = _workload(req, alpha if sd else 0.0)
    if isinstance(dep.sim, PipelineSimulator):
        check_pp_engine(dep.engine, dep.plan.pp)
    draft_sim = None
    if req.draft is not None:
        draft = req.draft if req.draft in HEAD_KINDS else load_model_arg(req.draft, "--draft")
        check_draft_vocab(dep.spec, draft)
        with verdict_document(document(dep.spec, dep.system, dep.plan, dep.engine)):
            require_draft_fit(
                dep.memory, draft, dep.system, draft_devices, dep.engine, dtype, "--draft"
            )
        draft_sim = draft_simulator(
            dep.spec, draft, dep.system, dep.plan, dep.engine, dtype, dep.routing,
            ParallelPlan(tp=draft_devices),
        )  # fmt: skip
    requests = make_requests(workload)
    # The engine's scheduler limits: fixed, or chosen per run (trtllm-bench's heuristic).
    max_seqs, max_tokens = requested_limits(
        req, *run_limits(dep.engine, dep.spec, dep.system, dep.plan, dtype, requests)
    )
    graphs = capture_sizes(dep.engine.cuda_graph_batch_sizes, max_seqs, max_tokens)
    layout = kv_layout(dep.spec, dep.engine.sliding_window_kv)
    with verdict_document(document(dep.spec, dep.system, dep.plan, dep.engine)):
        kv_tokens = run_kv_tokens(dep, dtype, max_tokens, max_seqs)
    if isinstance(dep.sim, PipelineSimulator):
        # vLLM V1: one scheduler and a queue of batches; the others: a loop per micro-batch.
        queue = dep.engine.pp_scheduler == "batch-queue"
        server_cls = BatchQueueServer if queue else PipelineServer
        pipe = server_cls(PipelineCosts(dep.sim, graphs), kv_tokens, max_seqs, max_tokens,
                          layout=layout)
        run = pipe.run(requests, req.progress)
    else:
        costs = StepCosts(dep.sim, draft_sim, gamma if draft_sim is not None else 0,
                          graph_sizes=graphs, bonus_share=alpha**gamma if sd else 0.0)
        server = Server(costs, kv_tokens, max_seqs, max_tokens, seed=req.seed, layout=layout)
        run = server.run(requests, req.progress)
    metrics = run.metrics()
    # The limits the run scheduled under (the engine's, a flag's, or trtllm-bench's own
    # choice) and the CUDA-graph sizes its generation-only steps were padded to.
    metrics["scheduler"] = {"max_num_seqs": max_seqs, "max_batched_tokens": max_tokens,
                            "cuda_graph_batch_sizes": list(graphs)}
    return ServeResult(
        model=dep.spec.name,
        system=dep.system.name,
        device=dep.system.device.name,
        plan=dep.plan,
        engine=dep.engine.name,
        rate=None if req.trace else float(req.rate),
        trace=req.trace,
        draft=draft_name,
        gamma=gamma if sd else None,
        alpha=alpha if sd else None,
        seed=req.seed,
        throughput_tokens_per_s=metrics["throughput_tokens_per_s"],
        throughput_requests_per_s=metrics["throughput_requests_per_s"],
        total_tokens_per_s=metrics["total_tokens_per_s"],
        ttft_mean_s=metrics["ttft_s"]["mean"],
        tpot_mean_s=metrics["tpot_s"]["mean"],
        metrics=metrics,
        run=run,
    )


# --- disaggregated serving ----------------------------------------------------------------


def _serve_disaggregated(req: ServeRequest) -> DisaggServeResult:
    if req.draft is not None:
        raise InputError("--draft is not modelled with disaggregated serving; drop one")
    spec = load_model_arg(req.model, "--model")
    if req.engine is None or req.dtype is None:  # the prefill pool's device's (infer's)
        device = load_system_arg(req.prefill_system or req.system, None, "--prefill-system").device
        req = dataclasses.replace(
            req, engine=req.engine or default_engine(device),
            dtype=req.dtype or float16_default(device))
    engine = load_engine(req.engine)
    refuse_generation_first_token(engine, "--serve")
    dtype = resolved_dtype(req)
    seqs, tokens = requested_limits(req, engine.max_num_seqs, engine.max_batched_tokens)
    engine = dataclasses.replace(engine, max_num_seqs=seqs, max_batched_tokens=tokens)
    routing = routing_from_text(req.routing, req.seed, req.ep_dispatch,
                                req.ep_dispatch_dtype, req.ll_intranode)
    document = {
        "model": spec.name, "engine": engine.name, "dtype": dtype, "seed": req.seed,
        "slo_ttft_s": req.slo_ttft, "slo_tpot_s": req.slo_tpot,
    }  # fmt: skip
    pre_plan = _pool_plan(req.prefill_devices, req.ep, "--prefill-devices")
    dec_plan = _pool_plan(req.decode_devices, req.ep, "--decode-devices")
    pre_sys = _pool_system(req.prefill_system or req.system, pre_plan.devices, "--prefill-devices")
    dec_sys = _pool_system(req.decode_system or req.system, dec_plan.devices, "--decode-devices")
    check_engine_device(engine, pre_sys.device, f"the prefill pool's {pre_sys.device.name}")
    check_engine_device(engine, dec_sys.device, f"the decode pool's {dec_sys.device.name}")
    for pool in (pre_sys, dec_sys):
        require_float16(pool.device, dtype, "--dtype", f"{pool.device.name} ({pool.name})")
    pre_mem = _pool_memory(spec, pre_sys, pre_plan, engine, dtype, {**document, "pool": "prefill"})
    dec_mem = _pool_memory(spec, dec_sys, dec_plan, engine, dtype, {**document, "pool": "decode"})
    pre_sim = StepSimulator(spec, pre_sys, pre_plan, engine, dtype, routing)
    dec_sim = StepSimulator(spec, dec_sys, dec_plan, engine, dtype, routing)
    workload = _workload(req, 0.0)
    path = kv_path(pre_sys, dec_sys, pre_plan.devices, dec_plan.devices)
    kv_token = kv_bytes_per_token(spec, kv_cache_dtype(dtype), 1)
    split = run_disaggregated(
        make_requests(workload),
        _server(StepCosts(pre_sim), pre_mem.kv_tokens, engine, req.seed, spec),
        _server(DecodeOnlyCosts(dec_sim), dec_mem.kv_tokens, engine, req.seed, spec),
        kv_token,
        path,
    )
    metrics = split.metrics(req.slo_ttft, req.slo_tpot)
    both = pre_plan.devices + dec_plan.devices
    colocated, co_metrics = _colocated(req, spec, engine, routing, workload, both, document)
    return DisaggServeResult(
        model=spec.name,
        engine=engine.name,
        dtype=dtype,
        seed=req.seed,
        slo_ttft_s=req.slo_ttft,
        slo_tpot_s=req.slo_tpot,
        kv_bytes_per_token=kv_token,
        prefill=Pool(pre_sys.name, pre_sys.device.name, pre_plan),
        decode=Pool(dec_sys.name, dec_sys.device.name, dec_plan),
        colocated=colocated,
        throughput_tokens_per_s=metrics["throughput_tokens_per_s"],
        goodput_requests_per_s=metrics["goodput_requests_per_s"],
        colocated_throughput_tokens_per_s=co_metrics["throughput_tokens_per_s"],
        colocated_goodput_requests_per_s=co_metrics["goodput_requests_per_s"],
        metrics=metrics,
        colocated_metrics=co_metrics,
        run=split,
    )


def _server(
    costs: StepCosts, kv_tokens: float, engine: EngineProfile, seed: int, spec: ModelSpec
) -> Server:
    return Server(
        costs, kv_tokens, engine.max_num_seqs, engine.max_batched_tokens, seed=seed,
        layout=kv_layout(spec, engine.sliding_window_kv),
    )


def _pool_plan(devices: int | None, ep: int, flag: str) -> ParallelPlan:
    if devices is None:
        raise InputError(f"{flag} is required with --prefill-system/--decode-system")
    if devices < 1 or devices % ep:
        raise InputError(f"{flag} {devices} must be a positive multiple of --ep {ep}")
    return ParallelPlan(tp=devices // ep, ep=ep)


def _pool_system(name: str | System | None, devices: int, flag: str) -> System:
    """The pool's system with as many nodes as its instance needs (at least the
    profile's); a System object is used as given."""
    if isinstance(name, System):
        system = name
    else:
        probe = load_system_arg(name, None)
        nodes = max(probe.nodes, -(-devices // probe.devices_per_node))
        system = probe if nodes == probe.nodes else load_system_arg(name, nodes)
    if devices > system.num_devices:
        raise InputError(
            f"{flag} {devices} exceeds the {system.num_devices} devices of {system.name}"
        )
    return system


def _pool_memory(
    spec: ModelSpec,
    system: System,
    plan: ParallelPlan,
    engine: EngineProfile,
    dtype: str,
    document: dict[str, Any],
) -> MemoryPlan:
    """The pool's memory plan; an out-of-memory verdict names the pool."""
    where = {"system": system.name, "devices": plan.devices, "tp": plan.tp, "ep": plan.ep}
    with verdict_document({**document, **where}):
        return require_memory(spec, system, plan, engine, dtype)


def _colocated(
    req: ServeRequest,
    spec: ModelSpec,
    engine: EngineProfile,
    routing: Routing,
    workload: Workload,
    pool_devices: int,
    document: dict[str, Any],
) -> tuple[Pool, dict[str, Any]]:
    """The colocated baseline and its metrics: ``system`` with ``devices``/``tp``
    (default: both pools' devices), serving the same requests."""
    system = load_system_arg(req.system, req.nodes)
    if req.devices is None and req.tp is None:
        plan = ParallelPlan(tp=pool_devices // req.ep, ep=req.ep)
    else:
        plan = plan_for(req.devices, req.tp, req.ep)
    memory = _pool_memory(spec, system, plan, engine, resolved_dtype(req), {**document, "pool": "colocated"})
    sim = StepSimulator(spec, system, plan, engine, resolved_dtype(req), routing)
    requests = make_requests(workload)
    run = _server(StepCosts(sim), memory.kv_tokens, engine, req.seed, spec).run(requests)
    metrics = run.metrics()
    metrics["goodput_requests_per_s"] = goodput(
        requests, metrics["makespan_s"], req.slo_ttft, req.slo_tpot
    )
    return Pool(system.name, system.device.name, plan), metrics
