"""``train``: one training step of a model on a cluster under a parallel plan.

The request's plan fields (``tp`` ... ``grad_accum_fusion``) left at ``None`` come from
the plan file (``plan=``), else from ``ParallelPlan``'s defaults, with two derived
defaults owned here: ``recompute="auto"`` (the cheapest policy that fits memory) and
sequence parallelism on whenever ``tp > 1`` (Megatron-Core requires it for MoE with TP
and it is the usual choice for dense models).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import System
from xpusim.sim.api.base import (
    as_json_dict,
    float16_default,
    request_from_kwargs,
    require_native_dtype,
)
from xpusim.sim.cost.attention_blackwell import check_trainable
from xpusim.sim.cost.attention_impl import check_impl
from xpusim.sim.errors import InputError, NegativeVerdict
from xpusim.sim.gcpause import gc_paused
from xpusim.sim.ir import BYTES_PER_DTYPE
from xpusim.sim.limits import MAX_RANKS, check_int, check_ranks, check_train_work
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan, validate_plan
from xpusim.sim.plan_file import load_plan_file
from xpusim.sim.training.memory import MemoryBreakdown, format_breakdown
from xpusim.sim.training.recompute_choice import choose_recompute
from xpusim.sim.training.simulate import (
    StepCache,
    TrainingOptions,
    TrainingResult,
    estimate_memory,
)
from xpusim.sim.training.steady import (
    LoweredTraining,
    lower_training,
    price_training,
    simulated_microbatches,
)
from xpusim.sim.units import parse_int_list, split_list
from xpusim.sim.validation.track_record import TrackRecord, lookup, record_dict

DEFAULT_SYSTEM = "atlas-800t-a2"
# Mixed-precision training computes in these; int8/int4 are inference weight formats.
TRAIN_DTYPES = ("bf16", "fp16", "fp32", "fp8", "mxfp8", "hif8", "nvfp4")
RECOMPUTE_CHOICES = ("auto", "none", "selective", "full")
PLAN_FIELDS = (
    "tp", "pp", "vpp", "dp", "ep", "cp", "mbs", "gbs", "seq", "zero", "seed",
    "sequence_parallel", "hierarchical_ep", "overlap_ep", "overlap_dp", "overlap_tp",
    "tp_extend_ep", "moe_fold", "grad_accum_fusion",
    "dtype", "fp8_scaling", "schedule", "order", "moe_routing", "moe_dispatcher", "dropout",
    "framework",
    "pad_layers", "grad_reduce_dtype", "fragmentation", "runtime_reserved_gib",
    "tp_overlap_chunks", "recompute_every", "per_node", "cpu_offload_layers",
    "bf16_layers_at_start", "bf16_layers_at_end",
)  # fmt: skip


@dataclass(frozen=True)
class TrainRequest:
    """``xpusim train``'s flags as data (``None``: the plan file's value, else the default)."""

    # A preset name or Hugging Face config.json path, or a ModelSpec (what-if variations).
    model: str | ModelSpec | None = None
    # A profile name or path (default atlas-800t-a2), or a System whose node count is used.
    system: str | System | None = None
    nodes: int | None = None  # default: as many as the plan's devices need
    # Run on the first N devices of the system (contiguous block; with it, nodes
    # defaults to the profile's); default: all of them.
    devices: int | None = None
    # With devices: use the first K devices of each node (a scheduler's segments);
    # default: all of each node's (one contiguous block).
    per_node: int | None = None
    plan: str | None = None  # plan TOML file ([plan] table; fields here override it)
    tp: int | None = None
    pp: int | None = None
    vpp: int | None = None
    dp: int | None = None
    ep: int | None = None
    cp: int | None = None
    mbs: int | None = None
    gbs: int | None = None
    seq: int | None = None
    zero: int | None = None
    seed: int | None = None
    dtype: str | None = None  # default bf16 (fp16 on a device without bf16: V100, 910A)
    fp8_scaling: str | None = None  # delayed | current (dtype fp8 only); default delayed
    recompute: str | None = None  # auto | none | selective | full; default auto
    recompute_modules: str | tuple[str, ...] | None = None  # default ("core_attn",); any of "norm,attn,act,experts,mlp,core_attn"
    recompute_every: int | None = None  # k: recompute every k-th layer only; default 1
    cpu_offload_layers: int | None = None  # N: offload layers 0..N-1's activations; default 0
    bf16_layers_at_start: int | None = None  # first N layers' linears in bf16; default 0
    bf16_layers_at_end: int | None = None  # last N layers' linears in bf16; default 0
    schedule: str | None = None  # auto | 1f1b | interleaved
    dropout: float | None = None
    framework: str | None = None  # eager | cuda-graphs
    order: str | None = None  # rank order innermost first; default tp-cp-ep-dp-pp
    moe_routing: str | None = None  # uniform | zipf:S | hist:c1,c2,...
    moe_dispatcher: str | None = None  # alltoall (default) | flex
    layer_split: str | tuple[int, ...] | None = None  # model slots per virtual stage
    sequence_parallel: bool | None = None  # default: tp > 1
    hierarchical_ep: bool | None = None
    overlap_ep: bool | None = None
    overlap_dp: bool | None = None
    overlap_tp: bool | None = None
    tp_extend_ep: bool | None = None
    moe_fold: bool | None = None  # expert groups over TP x CP x DP (Megatron-Core >= 0.10)
    grad_accum_fusion: bool | None = None
    # Plan fields with no flag (plan files and the Python API set them).
    pad_layers: int | None = None
    grad_reduce_dtype: str | None = None
    fragmentation: float | None = None
    runtime_reserved_gib: float | None = None
    tp_overlap_chunks: int | None = None
    attention_impl: str | None = None  # default: the device's (docs/attention.md)
    full_ranks: bool = False  # simulate every rank instead of one per stage
    exact: bool = False  # every op of every micro-batch (traces and timelines need it)
    progress: bool = False  # progress bar on stderr


@dataclass(frozen=True)
class TrainResult:
    """One simulated step; ``as_dict()`` is ``xpusim train --json``."""

    model: str
    system: str
    device: str  # the device's name (e.g. "Ascend 910B")
    devices: int  # the job's: tp*cp*dp*pp, the system's first devices
    plan: ParallelPlan
    step_time_s: float
    tokens_per_s: float
    mfu: float
    memory_per_device_bytes: float
    simulation: TrainingResult  # the full result: stages, breakdowns, the engine's records
    system_devices: int = 0  # the system's (more than ``devices`` with --devices N)
    # What the command says on stderr beside the result (a --seq past the model's positions)
    notes: tuple[str, ...] = ()

    def track_record(self) -> TrackRecord | None:
        """How far training predictions on this device have been off (track_record.py)."""
        return lookup("training", self.device)

    def as_dict(self) -> dict[str, Any]:
        return as_json_dict({**self.simulation.as_dict(), "system_devices": self.system_devices,
                             "track_record": record_dict(self.track_record())})


@dataclass(frozen=True)
class TrainSetup:
    """A request resolved: the model, the sized system and the plan that fits (recompute
    chosen), ready to lower and price."""

    spec: ModelSpec
    system: System
    plan: ParallelPlan
    options: TrainingOptions
    # The memory estimate's chunks by plan (``estimate_memory``'s store), for the lowering.
    chunks: dict[ParallelPlan, StepCache] = field(default_factory=dict, compare=False,
                                                  repr=False)


def train(request: TrainRequest | None = None, /, **kwargs: Any) -> TrainResult:
    """Simulate one training step. Raises ``NegativeVerdict`` (payload: the memory
    breakdown) when the plan does not fit in device memory under any allowed recompute."""
    setup = prepare_train(request_from_kwargs(TrainRequest, request, kwargs, "xpusim.train"))
    # A step's task graph stays reachable until it is priced: the cyclic collector's
    # passes over it free nothing (sim/gcpause.py), so it is paused for the simulation.
    with gc_paused():
        return priced_result(setup, lower_train(setup))


def prepare_train(req: TrainRequest) -> TrainSetup:
    """Every check and default of ``train`` up to the simulation (plan, memory fit)."""
    plan, recompute, extra, dtype_given = build_plan(req)
    spec = _load_model(req.model or extra.get("model"))
    devices = _devices_asked(req, extra)
    system = _load_system(req, plan, extra, devices)
    if not dtype_given:  # the default follows the device (sim.api.base.float16_default)
        plan = replace(plan, dtype=float16_default(system.device))  # fp16 on a V100 / 910A
    require_native_dtype(system.device, plan.dtype, "--dtype",
                         f"{system.device.name} ({system.name})")
    plan = _apply_impl(system, plan, req.attention_impl)
    check_ranks(system.num_devices, f"{system.num_devices:,} devices", "pass fewer --nodes")
    if devices is not None:
        check_devices(plan, devices, system)
    elif plan.per_node not in (0, system.devices_per_node):
        raise InputError(
            f"--per-node {plan.per_node} needs --devices N (the job's size): with "
            "--per-node the job leaves devices of every node idle"
        )
    plan = validate_plan(spec, plan, system.num_devices if devices is None else devices)
    _check_dense_moe_flags(spec, plan)  # after validate_plan: a malformed value names itself
    check_train_work(
        plan.world,
        plan.pp,
        simulated_microbatches(plan, req.exact, req.full_ranks),
        spec.layers,
        req.full_ranks,
        exact=req.exact,
        vpp=plan.vpp,
    )
    chunks: dict[ParallelPlan, StepCache] = {}
    plan, _ = fit_memory(spec, system, plan, recompute, chunks)
    options = TrainingOptions(
        full_ranks=req.full_ranks,
        progress=req.progress,
        attention_impl=req.attention_impl,
        exact=req.exact,
    )
    return TrainSetup(spec, system, plan, options, chunks)


def lower_train(setup: TrainSetup) -> LoweredTraining:
    """The step's unpriced graphs (what a hardware what-if prices again)."""
    return lower_training(setup.spec, setup.system, setup.plan, setup.options, setup.chunks)


def priced_result(setup: TrainSetup, lowered: LoweredTraining) -> TrainResult:
    """``lowered`` priced on ``setup.system``: a system of the lowering's shape (devices,
    devices per node, default attention kernel) with other figures prices the same graphs;
    another shape raises InputError (lower it again)."""
    result = price_training(lowered, setup.system)
    return TrainResult(
        model=result.model,
        system=result.system,
        device=setup.system.device.name,
        devices=result.devices,
        plan=result.plan,
        step_time_s=result.step_time_s,
        tokens_per_s=result.tokens_per_s,
        mfu=result.mfu,
        memory_per_device_bytes=result.peak_memory.total,
        simulation=result,
        system_devices=setup.system.num_devices,
        notes=tuple(n for n in [past_positions_note(setup.spec, setup.plan.seq)] if n),
    )


def past_positions_note(spec: ModelSpec, seq: int) -> str | None:
    """A sequence past the model's ``max_position_embeddings`` is priced as asked (the step's
    cost does not depend on the positions' count), but is not what the checkpoint runs:
    a learned position table (GPT-3 / OPT format) has no row past it, so a run at this length
    trains a model whose table is extended (from scratch, or rows added: the parameter count
    here keeps the preset's table); a RoPE model computes any position, but past its trained
    context a checkpoint needs position scaling (a long-context fine-tune). docs/training.md."""
    if seq <= spec.max_seq:
        return None
    if spec.learned_positions:
        return (f"--seq {seq:,} is past {spec.name}'s {spec.max_seq:,} learned positions "
                "(max_position_embeddings): its position table has no rows beyond them, so "
                "this trains a model with the table extended (from scratch, or rows added to "
                "a checkpoint); priced as asked, the parameter count keeping the preset's table")
    if spec.alibi:
        return (f"--seq {seq:,} is past {spec.name}'s {spec.max_seq:,}-token training length: "
                "ALiBi's linear bias is defined at any distance (it extrapolates; Press et al. "
                "2022), so no table grows; priced as asked")
    return (f"--seq {seq:,} is past {spec.name}'s {spec.max_seq:,} trained positions "
            "(max_position_embeddings): rotary positions run at any length, but a checkpoint "
            "needs position scaling beyond its trained context (a long-context fine-tune); "
            "priced as asked")


def build_plan(req: TrainRequest) -> tuple[ParallelPlan, str, dict[str, Any], bool]:
    """The plan from the file (if any) with every field the request sets on top; the
    recompute policy asked for ("auto" included); the file's other keys (model, system...);
    whether the request or the file gave the dtype (else the device's default, set later)."""
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if req.plan:
        values = load_plan_file(req.plan)
        extra = values.pop("_extra")
        _check_plan_extra(req.plan, extra)
    for name in PLAN_FIELDS:
        v = getattr(req, name)
        if v is not None:
            values[name] = v
    _check_train_dtype(values.get("dtype", "bf16"), req)
    recompute = req.recompute or values.pop("recompute", None) or "auto"
    values.pop("recompute", None)
    if recompute not in RECOMPUTE_CHOICES:
        raise InputError(
            f"--recompute '{recompute}': choose one of {', '.join(RECOMPUTE_CHOICES)}"
        )
    if values.get("recompute_every", 1) != 1 and recompute == "none":
        raise InputError(
            "--recompute-every needs a policy to apply to every k-th layer: add "
            "--recompute full (torchtitan's selective layer AC) or --recompute selective"
        )
    if req.recompute_modules is not None and recompute in ("none", "full"):  # was ignored
        raise InputError(
            f"--recompute-modules lists what selective recompute recomputes; with --recompute "
            f"{recompute} nothing uses it: pass --recompute selective (or auto), or drop it"
        )
    if req.layer_split is not None:
        values["layer_split"] = _int_tuple(req.layer_split, "--layer-split")
    if req.recompute_modules is not None:
        values["recompute_modules"] = _str_tuple(req.recompute_modules, "--recompute-modules")
    if "sequence_parallel" not in values:
        values["sequence_parallel"] = values.get("tp", 1) > 1
    known = {f.name for f in fields(ParallelPlan)}
    plan = ParallelPlan(
        **{k: v for k, v in values.items() if k in known},
        recompute="none" if recompute == "auto" else recompute,
    )
    plan = _resolve_ep_overlap(plan, values.get("overlap_ep"), req)
    return plan, recompute, extra, "dtype" in values


def _check_plan_extra(path: str, extra: dict[str, Any]) -> None:
    """The plan file's keys above [plan] (sim.plan_file.PLAN_EXTRA) have the flags' types."""
    for key in ("model", "system"):  # a name or a path, as the --model/--system flags
        if key in extra and (not isinstance(extra[key], str) or not extra[key].strip()):
            raise InputError(f"plan file {path}: {key} = {extra[key]!r} must be a name or path")
    if "nodes" in extra:
        check_int(extra["nodes"], f"plan file {path}: nodes", 1, MAX_RANKS)


def _resolve_ep_overlap(plan: ParallelPlan, asked: bool | None, req: TrainRequest) -> ParallelPlan:
    """EP overlap merges a forward and a backward of different micro-batches, which the
    frameworks schedule only without pipelining or on the interleaved schedule
    (``ParallelPlan.fb_mergeable``). By default it follows that rule (off on plain 1F1B
    with PP > 1); asked for explicitly on such a plan it is an error, not silently dropped."""
    if plan.fb_mergeable or not plan.overlap_ep:
        return plan
    if asked:
        where = "--overlap-ep" if req.overlap_ep else f"{req.plan}: overlap_ep = true"
        raise InputError(
            f"{where} with pp={plan.pp} on the non-interleaved 1F1B schedule: merged "
            "forward/backward EP overlap needs pp = 1 or the interleaved schedule "
            "(Megatron-Core asserts virtual_pipeline_model_parallel_size when PP > 1; "
            "MindSpeed's --moe-fb-overlap runs on VPP, DualPipeV or no PP); pass --vpp > 1 "
            "or --no-overlap-ep"
        )
    return replace(plan, overlap_ep=False)


def fit_memory(
    spec: ModelSpec, system: System, plan: ParallelPlan, recompute: str,
    store: dict[ParallelPlan, StepCache] | None = None,
) -> tuple[ParallelPlan, list[MemoryBreakdown]]:
    """The plan with the recompute policy that fits (``auto``: the cheapest that fits,
    ``sim.training.recompute_choice``), and its
    per-stage memory; ``NegativeVerdict`` with the breakdown when nothing fits.
    ``store``: the estimates' chunks by plan (``estimate_memory``)."""
    if recompute == "auto":
        plan, mems = choose_recompute(spec, system, plan, store)
    else:
        mems = estimate_memory(spec, system, plan, store)
    worst = max(mems, key=lambda m: m.total)
    if worst.oom:
        raise NegativeVerdict(
            f"out of memory: {format_breakdown(worst)}; try "
            + ("more --cpu-offload-layers (it excludes recompute), " if plan.cpu_offload_layers
               else "--recompute full, ")
            + "a higher --zero, more --pp/--tp, or a smaller --mbs",
            {
                "model": spec.name,
                "system": system.name,
                "plan": plan.as_dict(),
                "oom": True,
                "memory_per_device_bytes": worst.total,
                "memory": worst.as_dict(),
                "memory_by_stage": [m.as_dict() for m in mems],
            },
        )
    return plan, mems


def _check_train_dtype(dtype: str, req: TrainRequest) -> None:
    # An unknown name gets the plan check's message (sim.parallel); a known inference-only
    # format (int8, int4, ...) gets this one.
    if dtype in BYTES_PER_DTYPE and dtype not in TRAIN_DTYPES:
        where = "--dtype" if req.dtype is not None else f"{req.plan}: dtype"
        raise InputError(
            f"{where} '{dtype}': training computes in {', '.join(TRAIN_DTYPES)} "
            "(integer formats are inference-only); pass one of those"
        )


def _check_dense_moe_flags(spec: ModelSpec, plan: ParallelPlan) -> None:
    """MoE-only options on a dense model were ignored silently (infer and sd refuse
    their --routing / --ep-dispatch there)."""
    given = [flag for flag, on in (("--moe-routing", plan.moe_routing != "uniform"),
                                   ("--moe-dispatcher", plan.moe_dispatcher != "alltoall"),
                                   ("--moe-fold", plan.moe_fold)) if on]
    if given and not spec.moe:
        raise InputError(f"{', '.join(given)}: {spec.name} is dense (no experts to route); "
                         f"drop {'them' if len(given) > 1 else 'it'}")


def _load_model(name: str | ModelSpec | None) -> ModelSpec:
    if isinstance(name, ModelSpec):
        return name
    if not name:
        raise InputError(
            "--model is required (a preset such as pangu-ultra-moe, or a config.json "
            "path), on the command line or as `model = ...` in the plan file"
        )
    from xpusim.sim.models.hf_config import load_model

    return load_model(name)


def _devices_asked(req: TrainRequest, extra: dict[str, Any]) -> int | None:
    """``devices`` from the request, else from the plan file (beside ``nodes``)."""
    value: Any = req.devices if req.devices is not None else extra.get("devices")
    if value is None:
        return None
    where = "--devices" if req.devices is not None else f"{req.plan}: devices"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(
            f"{where} must be an integer >= 1 (the first N devices of the system), "
            f"got {value!r}"
        )
    return value


def check_devices(plan: ParallelPlan, devices: int, system: System) -> None:
    """``devices`` (the first N of ``system``) must fit the system and be the plan's
    world size tp*cp*dp*pp (or, with dp unset, a multiple of tp*cp*pp)."""
    k: object = plan.per_node  # checked in sim.placement.check_per_node
    per_node = k if isinstance(k, int) and k > 0 else 0
    room = system.nodes * (min(per_node, system.devices_per_node) or system.devices_per_node)
    if devices > room:
        need = -(-devices // (per_node or system.devices_per_node))
        used = f"{per_node} used per node" if per_node else f"{system.devices_per_node} each"
        raise InputError(
            f"--devices {devices} exceeds the {room} devices of system '{system.name}' "
            f"({system.nodes} node(s), {used}): pass --nodes {need} or --devices <= {room}"
        )
    degrees: tuple[object, ...] = (plan.tp, plan.cp, plan.pp, plan.dp)
    if not all(isinstance(d, int) for d in degrees):
        return  # validate_plan names the bad degree
    per = plan.tp * plan.cp * plan.pp
    if plan.dp and plan.world != devices:
        raise InputError(
            f"--devices {devices} != tp*cp*dp*pp = {plan.tp}*{plan.cp}*{plan.dp}*{plan.pp} "
            f"= {plan.world}: change --dp (or leave it out: dp = devices / (tp*cp*pp)) "
            "or --devices"
        )
    if not plan.dp and per >= 1 and devices % per:
        raise InputError(
            f"--devices {devices} is not a multiple of tp*cp*pp = {per}: change "
            "--devices or --tp/--cp/--pp"
        )


def _load_system(
    req: TrainRequest, plan: ParallelPlan, extra: dict[str, Any], devices: int | None
) -> System:
    name = req.system or extra.get("system") or DEFAULT_SYSTEM
    if req.nodes is not None and req.nodes < 1:
        raise InputError(f"--nodes must be >= 1, got {req.nodes}")
    if isinstance(name, System):
        if req.nodes is not None and req.nodes != name.nodes:
            raise InputError(
                f"nodes={req.nodes} beside a System of {name.nodes} nodes: build the "
                "System with the node count wanted, or pass the system by name"
            )
        return name
    nodes = req.nodes or extra.get("nodes")
    if nodes is None and devices is not None:
        nodes = load_system(name).nodes  # --devices N of the profile's system
    if nodes is None:
        per_node = load_system(name).devices_per_node
        world = plan.tp * plan.cp * plan.pp * max(plan.dp, 1)
        nodes = max(1, -(-world // per_node))
    return load_system(name, nodes=int(nodes))


def _apply_impl(system: System, plan: ParallelPlan, impl: str | None) -> ParallelPlan:
    if not impl:
        return plan
    check_impl(system.device, impl, "--attention-impl")
    check_trainable(impl)
    # The plan carries it too: unfused attention keeps its scores for backward.
    return replace(plan, attention_impl=impl)


def _int_tuple(value: str | tuple[int, ...], flag: str) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(parse_int_list(value, flag))
    return tuple(int(v) for v in value)


def _str_tuple(value: str | tuple[str, ...], flag: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(split_list(value, flag))
    return tuple(value)
