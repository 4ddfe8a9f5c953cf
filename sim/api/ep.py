"""``ep``: expert-parallel dispatch/combine cost of one MoE layer (study 3, docs/ep.md).

Dispatch and combine time, inter-/intra-node bytes, the slowest rank, the bottleneck
link, the share hidden behind ``overlap_compute_s`` of expert compute, and the dedup
analysis (predicted vs simulated flat/hierarchical inter-node bytes), for each dispatch
mode asked for (``dispatch="flat,hierarchical"`` compares them).

The layer's shape comes from ``model`` (hidden size, top-k, routed and shared experts);
``hidden``, ``top_k``, ``experts`` and ``shared_experts`` given replace the model's (or
stand alone without one). ``ep_sweep()`` runs the same study over EP sizes
(``xpusim ep --sweep ep=8,16,32``); it is a separate function so each returns one typed
result.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any

from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import System
from xpusim.sim.api.base import as_json_dict, request_from_kwargs
from xpusim.sim.errors import InputError
from xpusim.sim.ir import dtype_bytes
from xpusim.sim.limits import check_namespace
from xpusim.sim.models import load_model
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.network.api import BACKENDS
from xpusim.sim.network.ep import DISPATCH_MODES, EPConfig, EPResult, simulate_ep, system_for_ep
from xpusim.sim.units import split_list
from xpusim.sim.validation.track_record import TrackRecord, lookup, record_dict, system_device


@dataclass(frozen=True)
class EpRequest:
    """``xpusim ep``'s flags as data (``None``: from the model, or derived as noted)."""

    # A preset name or config.json path, or a ModelSpec (what-if variations): an MoE model
    # gives hidden, top_k, experts and shared_experts.
    model: str | ModelSpec | None = None
    hidden: int | None = None  # default: the model's
    top_k: int | None = None  # routed experts per token; default: the model's
    experts: int | None = None  # routed experts per MoE layer; default: the model's
    shared_experts: int | None = None  # default: the model's, else 0 (reported only)
    dtype: str = "bf16"  # dtype of the dispatched activations
    # A profile name or path, or a System (sized for the EP group like a loaded profile).
    system: str | System = "atlas-800t-a2"
    nodes: int | None = None  # default: ceil(ep / devices per node)
    ep: int = 8  # expert-parallel group size
    tokens_per_device: int = 4096
    # flat | hierarchical | deepep | low-latency; a comma list (or tuple) compares them.
    dispatch: str | tuple[str, ...] = "flat"
    routing: str = "uniform"  # uniform | zipf:S | hist:FILE
    capacity_factor: float | None = None  # drop-and-pad capacity; None: dropless
    overlap_compute_s: float = 0.0  # expert compute to hide dispatch + combine behind
    seed: int = 0  # seed of the Zipf expert permutation
    # Low-latency mode: same-node copies "nic" (NIC to NIC, pure RDMA) or "fabric"
    # (NVLink/xGMI stores beside the RDMA); network/ep.py LL_INTRANODE, docs/ep.md.
    ll_intranode: str = "nic"
    backend: str = "analytical"  # analytical | flow
    sweep: str | None = None  # "ep=8,16,32,64": ep_sweep() only


@dataclass(frozen=True)
class EpRun:
    """One dispatch mode at one EP size."""

    dispatch: str
    ep: int
    nodes: int
    dispatch_time_s: float
    combine_time_s: float
    total_time_s: float
    inter_node_bytes: float  # dispatch: bytes that crossed NICs
    intra_node_bytes: float  # dispatch: bytes on server fabric and die-to-die links
    note: str  # how the node count was derived ("" when given)
    simulation: EPResult  # the full study: per-rank bytes, bottleneck, dedup, phases


@dataclass(frozen=True)
class EpResult:
    """The study for each dispatch mode asked for; ``as_dict()`` is ``xpusim ep --json``:
    the run's document for one mode, ``{"results": [...]}`` for several."""

    model: str | None  # the model's name (None: shape given by flags alone)
    system: str  # as given: the profile name or path (a System: its name)
    backend: str
    dtype: str
    shared_experts: int
    runs: tuple[EpRun, ...]  # one per dispatch mode, in the order asked

    # The first (with one mode: the only) run's headline numbers.
    @property
    def total_time_s(self) -> float:
        return self.runs[0].total_time_s

    @property
    def dispatch_time_s(self) -> float:
        return self.runs[0].dispatch_time_s

    @property
    def combine_time_s(self) -> float:
        return self.runs[0].combine_time_s

    def documents(self) -> list[dict[str, Any]]:
        """Each run's document (as printed, without ``schema_version``)."""
        extra = {"model": self.model, "shared_experts": self.shared_experts, "dtype": self.dtype}
        return [
            {
                **extra,
                "system": self.system,
                "backend": self.backend,
                **({"note": run.note} if run.note else {}),
                **run.simulation.as_dict(),
            }
            for run in self.runs
        ]

    def track_record(self) -> TrackRecord | None:
        """How far expert-parallel predictions on this system's device have been off."""
        return lookup("ep", system_device(self.system))

    def as_dict(self) -> dict[str, Any]:
        docs = self.documents()
        record = {"track_record": record_dict(self.track_record())}
        return as_json_dict({**docs[0], **record} if len(docs) == 1
                            else {"results": docs, **record})


SWEEP_FIELDS = (
    "dispatch_time_s",
    "combine_time_s",
    "inter_node_bytes",
    "intra_node_bytes",
    "slowest_rank",
    "imbalance",
    "hidden_share",
    "bottleneck",
)


@dataclass(frozen=True)
class EpSweepResult:
    """The study over EP sizes; ``as_dict()`` is ``xpusim ep --sweep ... --json`` with
    ``plot`` None (the command fills in the picture it wrote)."""

    model: str | None
    system: str
    dtype: str
    shared_experts: int
    tokens_per_device: int
    routing: str
    runs: tuple[EpRun, ...]  # per EP size, each dispatch mode in the order asked

    def rows(self) -> list[dict[str, Any]]:
        """One row per run as the JSON, CSV and table show them."""
        rows = []
        for run in self.runs:
            d = run.simulation.as_dict()
            rows.append(
                {
                    "ep": run.ep,
                    "nodes": run.nodes,
                    "dispatch": run.dispatch,
                    **{k: d[k] for k in SWEEP_FIELDS},
                }
            )
        return rows

    def as_dict(self) -> dict[str, Any]:
        extra = {"model": self.model, "shared_experts": self.shared_experts, "dtype": self.dtype}
        return as_json_dict({**extra, "system": self.system, "plot": None, "sweep": self.rows()})


def ep(request: EpRequest | None = None, /, **kwargs: Any) -> EpResult:
    """The EP dispatch/combine study of one MoE layer, for each dispatch mode asked for."""
    req = request_from_kwargs(EpRequest, request, kwargs, "xpusim.ep")
    if req.sweep is not None:
        raise InputError(
            f"sweep={req.sweep!r}: xpusim.ep runs one EP size; call xpusim.ep_sweep "
            "for a sweep"
        )
    cfg, model, shared = _config(req)
    modes = dispatch_modes(req.dispatch)
    system = _system(req.system)
    runs = tuple(_run(replace(cfg, dispatch=mode), system, req) for mode in modes)
    return EpResult(
        model=model,
        system=_system_label(req.system),
        backend=req.backend,
        dtype=req.dtype,
        shared_experts=shared,
        runs=runs,
    )


def ep_sweep(request: EpRequest | None = None, /, **kwargs: Any) -> EpSweepResult:
    """The study at each EP size of ``sweep`` ("ep=8,16,32"), each dispatch mode."""
    req = request_from_kwargs(EpRequest, request, kwargs, "xpusim.ep_sweep")
    if req.sweep is None:
        raise InputError("xpusim.ep_sweep needs sweep='ep=8,16,32,64' (the EP sizes)")
    cfg, model, shared = _config(req)
    modes = dispatch_modes(req.dispatch)
    sizes = sweep_values(req.sweep)
    system = _system(req.system)
    runs = tuple(
        _run(replace(cfg, ep=size, dispatch=mode), system, req) for size in sizes for mode in modes
    )
    return EpSweepResult(
        model=model,
        system=_system_label(req.system),
        dtype=req.dtype,
        shared_experts=shared,
        tokens_per_device=req.tokens_per_device,
        routing=cfg.routing,
        runs=runs,
    )


def _run(cfg: EPConfig, system: System, req: EpRequest) -> EpRun:
    sized, note = system_for_ep(system, cfg.ep, req.nodes)
    res = simulate_ep(cfg, sized, req.backend)
    return EpRun(
        dispatch=cfg.dispatch,
        ep=cfg.ep,
        nodes=res.nodes,
        dispatch_time_s=res.dispatch_time_s,
        combine_time_s=res.combine_time_s,
        total_time_s=res.dispatch_time_s + res.combine_time_s,
        inter_node_bytes=res.inter_node_bytes,
        intra_node_bytes=res.intra_node_bytes,
        note=note,
        simulation=res,
    )


def _config(req: EpRequest) -> tuple[EPConfig, str | None, int]:
    """The layer's EP config from the model and the flags; the model's name and the
    shared experts (reported only)."""
    check_namespace(argparse.Namespace(**vars(req)))  # the flags' limits hold here too
    hidden, top_k, experts, shared, name = _model_shape(req.model)
    # A field given (even 0) replaces the model's value; None means "not given".
    given = (("--hidden", req.hidden), ("--top-k", req.top_k), ("--experts", req.experts))
    for flag, value in given:
        if value is not None and value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    if req.shared_experts is not None and req.shared_experts < 0:
        raise InputError(f"--shared-experts must be >= 0, got {req.shared_experts}")
    hidden = req.hidden if req.hidden is not None else hidden
    top_k = req.top_k if req.top_k is not None else top_k
    experts = req.experts if req.experts is not None else experts
    shared = req.shared_experts if req.shared_experts is not None else (shared or 0)
    if hidden is None or top_k is None or experts is None:
        flags = ("--hidden", "--top-k", "--experts")
        missing = [f for f, v in zip(flags, (hidden, top_k, experts), strict=True) if v is None]
        raise InputError(f"give --model NAME or {', '.join(missing)}")
    if req.overlap_compute_s < 0:
        raise InputError("--overlap-compute-s must be >= 0")
    if req.backend not in BACKENDS:
        raise InputError(f"--backend {req.backend!r}: choose one of {', '.join(BACKENDS)}")
    cfg = EPConfig(
        hidden=hidden,
        top_k=top_k,
        experts=experts,
        ep=req.ep,
        tokens_per_device=req.tokens_per_device,
        dtype_bytes=dtype_bytes(req.dtype),
        routing=req.routing,
        capacity_factor=req.capacity_factor,
        overlap_compute_s=req.overlap_compute_s,
        seed=req.seed,
        ll_intranode=req.ll_intranode,
    )
    return cfg, name, shared


def _model_shape(
    model: str | ModelSpec | None,
) -> tuple[int | None, int | None, int | None, int | None, str | None]:
    """(hidden, top_k, experts, shared experts, name) of an MoE model; all None without one."""
    if not model:
        return None, None, None, None, None
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    if spec.moe is None:
        shown = model if isinstance(model, str) else spec.name
        raise InputError(f"--model {shown} is dense (no experts); pick an MoE model")
    return spec.hidden, spec.moe.top_k, spec.moe.num_experts, spec.moe.shared_experts, spec.name


def dispatch_modes(value: str | tuple[str, ...]) -> list[str]:
    """The dispatch modes of "flat,hierarchical" (or a tuple of names), checked."""
    text = value if isinstance(value, str) else ",".join(value)
    modes = split_list(text, "--dispatch")
    bad = [m for m in modes if m not in DISPATCH_MODES]
    if bad or not modes:
        raise InputError(f"--dispatch {text}: choose from {', '.join(DISPATCH_MODES)}")
    return modes


def sweep_values(text: str) -> list[int]:
    """The EP sizes of "ep=8,16,32,64"."""
    key, sep, values = text.partition("=")
    if key.strip() != "ep" or not sep:
        raise InputError(f"--sweep {text}: expected ep=8,16,32,64")
    items = split_list(values, f"--sweep {text}: EP sizes")
    try:
        return [int(v) for v in items]
    except ValueError:
        raise InputError(f"--sweep {text}: EP sizes must be integers") from None


def _system(system: str | System) -> System:
    return system if isinstance(system, System) else load_system(system)


def _system_label(system: str | System) -> str:
    return system if isinstance(system, str) else system.name
