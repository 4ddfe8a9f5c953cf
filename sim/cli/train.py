"""``xpusim train``: simulate one training step of a model on a cluster under a parallel plan."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path

from xpusim.hwprofiles import load_system
from xpusim.sim.cost.attention_impl import IMPLS, check_impl
from xpusim.sim.errors import InputError, NegativeVerdict
from xpusim.sim.ir import BYTES_PER_DTYPE, is_low_precision
from xpusim.sim.limits import check_ranks, check_train_work
from xpusim.sim.parallel import ParallelPlan, load_plan_file, validate_plan
from xpusim.sim.report import (
    check_output_file,
    check_plot_path,
    emit_json,
    fmt_bytes,
    fmt_si,
    table,
)
from xpusim.sim.training.memory import format_breakdown
from xpusim.sim.training.simulate import TrainingOptions, estimate_memory
from xpusim.sim.training.steady import simulate_training, simulated_microbatches
from xpusim.sim.units import parse_int_list

_INT_FLAGS = ("tp", "pp", "vpp", "dp", "ep", "cp", "mbs", "gbs", "seq", "zero", "seed")
_BOOL_FLAGS = (
    "sequence_parallel",
    "hierarchical_ep",
    "overlap_ep",
    "overlap_dp",
    "overlap_tp",
    "tp_extend_ep",
    "grad_accum_fusion",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="simulate a training step (step time, MFU, memory, bubble)",
        description=__doc__,
    )
    p.add_argument("--model", help="preset name or Hugging Face config.json path")
    p.add_argument("--system", help="system profile name or path (default atlas-800t-a2)")
    p.add_argument("--nodes", type=int, help="number of nodes (default: the plan's devices)")
    p.add_argument("--plan", help="plan TOML file ([plan] table; flags override it)")
    for name in _INT_FLAGS:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)
    p.add_argument("--dtype", help="training dtype (default bf16)")
    p.add_argument(
        "--recompute",
        choices=("auto", "none", "selective", "full"),
        help="activation recompute; auto (default) picks the lightest that fits memory",
    )
    p.add_argument(
        "--recompute-modules", help="comma list for selective: norm,attn,act,experts,mlp"
    )
    p.add_argument("--schedule", choices=("auto", "1f1b", "interleaved"))
    p.add_argument(
        "--dropout",
        type=float,
        help="attention and hidden dropout rate of the recipe (Megatron-LM GPT: 0.1; "
        "default 0): keeps masks and, for unfused attention, the dropped scores",
    )
    p.add_argument(
        "--framework",
        choices=("eager", "cuda-graphs"),
        help="host side: eager PyTorch dispatch per op (default) or CUDA graphs (none)",
    )
    p.add_argument("--order", help="rank order innermost first (default tp-cp-ep-dp-pp)")
    p.add_argument("--moe-routing", help="uniform | zipf:S | hist:c1,c2,... (seeded by --seed)")
    p.add_argument(
        "--layer-split",
        help="uneven pipeline split: model slots (layers, then MTP) per virtual stage, "
        "pp*vpp comma-separated counts in virtual-stage order (default: equal, no-op padded)",
    )
    for name in _BOOL_FLAGS:
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            action=argparse.BooleanOptionalAction,
            default=None,
        )
    p.add_argument(
        "--full-ranks",
        action="store_true",
        help="simulate every rank instead of one per stage (small jobs: the check)",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="simulate every op of every micro-batch (default: simulate two micro-batch "
        "counts past the pipeline warm-up and extend the steady state; same result within "
        "0.5%%, far faster for many micro-batches)",
    )
    p.add_argument("--trace", help="write a Chrome trace (Perfetto) of one rank per stage here")
    p.add_argument("--timeline", help="write a PNG timeline of one rank per stage here")
    p.add_argument(
        "--attention-impl",
        choices=IMPLS,
        metavar="IMPL",
        help="attention kernel: " + ", ".join(IMPLS) + " (default: the device's, docs/attention.md)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--explain",
        action="store_true",
        help="print each term of the step (compute by phase and kind, host dispatch, "
        "optimizer, exposed communication, bubble), its share and its source",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=run)


# Mixed-precision training computes in these; int8/int4 are inference weight formats.
TRAIN_DTYPES = ("bf16", "fp16", "fp32", "fp8", "mxfp8", "hif8")


def require_native_dtype(system, dtype: str, flag: str) -> None:
    """A low-precision recipe needs a matrix unit that runs the format: FP8 GEMMs on a
    910B would otherwise be priced at an unrelated (int8) rate."""
    if is_low_precision(dtype) and not system.device.runs_natively(dtype):
        native = sorted(d for d in system.device.matrix_peak if is_low_precision(d))
        raise InputError(
            f"{flag} {dtype}: {system.device.name} ({system.name}) has no {dtype} matrix "
            f"path (its low-precision formats: {', '.join(native) or 'none'}); pass "
            "--dtype bf16 or a system whose device runs it"
        )


def _load_model(name: str | None):
    if not name:
        raise InputError(
            "--model is required (a preset such as pangu-ultra-moe, or a config.json "
            "path), on the command line or as `model = ...` in the plan file"
        )
    from xpusim.sim.models.hf_config import load_model

    return load_model(name)


def build_plan(args: argparse.Namespace) -> tuple[ParallelPlan, dict]:
    """Plan from the file (if any), then every flag the user gave on top."""
    values: dict = {}
    extra: dict = {}
    if args.plan:
        values = load_plan_file(args.plan)
        extra = values.pop("_extra")
    for name in _INT_FLAGS + _BOOL_FLAGS + (
        "dtype", "schedule", "order", "moe_routing", "dropout", "framework"
    ):
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    dtype = values.get("dtype", "bf16")
    # An unknown name gets the plan check's message (sim.parallel); a known inference-only
    # format (int8, int4, ...) gets this one.
    if dtype in BYTES_PER_DTYPE and dtype not in TRAIN_DTYPES:
        where = "--dtype" if args.dtype is not None else f"{args.plan}: dtype"
        raise InputError(
            f"{where} '{dtype}': training computes in {', '.join(TRAIN_DTYPES)} "
            "(integer formats are inference-only); pass one of those"
        )
    if args.recompute is not None:
        values["recompute"] = args.recompute
    if args.layer_split:
        values["layer_split"] = tuple(parse_int_list(args.layer_split, "--layer-split"))
    if args.recompute_modules:
        values["recompute_modules"] = tuple(m.strip() for m in args.recompute_modules.split(","))
    values.setdefault("recompute", "auto")
    if "sequence_parallel" not in values:
        # Megatron-Core requires sequence parallelism for MoE with TP, and it is the
        # usual choice for dense models too: on whenever TP > 1 unless --no-sequence-parallel.
        values["sequence_parallel"] = values.get("tp", 1) > 1
    known = {f.name for f in fields(ParallelPlan)}
    return ParallelPlan(
        **{k: v for k, v in values.items() if k in known and k != "recompute"},
        recompute="none" if values["recompute"] == "auto" else values["recompute"],
    ), {"recompute": values["recompute"], **extra}


def choose_recompute(spec, system, plan: ParallelPlan) -> tuple[ParallelPlan, list]:
    """The lightest recompute policy whose memory fits (none, then selective, then full)."""
    mems: list = []
    for policy in ("none", "selective", "full"):
        candidate = replace(plan, recompute=policy)
        mems = estimate_memory(spec, system, candidate)
        if not any(m.oom for m in mems):
            return candidate, mems
    return candidate, mems


def run(args: argparse.Namespace) -> int:
    if args.trace:
        check_output_file(args.trace, "--trace")
    if args.timeline:
        check_plot_path(args.timeline, "--timeline")
    plan, extra = build_plan(args)
    spec = _load_model(args.model or extra.get("model"))
    system_name = args.system or extra.get("system") or "atlas-800t-a2"
    if args.nodes is not None and args.nodes < 1:
        raise InputError(f"--nodes must be >= 1, got {args.nodes}")
    nodes = args.nodes or extra.get("nodes")
    if nodes is None:
        probe = load_system(system_name)
        per_node = probe.devices_per_node
        world = plan.tp * plan.cp * plan.pp * max(plan.dp, 1)
        nodes = max(1, -(-world // per_node))
    system = load_system(system_name, nodes=int(nodes))
    require_native_dtype(system, plan.dtype, "--dtype")
    if args.attention_impl:
        check_impl(system.device, args.attention_impl, "--attention-impl")
        if hasattr(plan, "attention_impl"):  # the plan also carries it (memory of unfused scores)
            plan = replace(plan, attention_impl=args.attention_impl)
    check_ranks(system.num_devices, f"{system.num_devices:,} devices", "pass fewer --nodes")
    plan = validate_plan(spec, plan, system.num_devices)
    exact = bool(args.exact or args.trace or args.timeline)
    check_train_work(
        system.num_devices,
        plan.pp,
        simulated_microbatches(plan, exact, args.full_ranks),
        spec.layers,
        args.full_ranks,
        exact=exact,
        vpp=plan.vpp,
    )
    if extra["recompute"] == "auto":
        plan, mems = choose_recompute(spec, system, plan)
    else:
        mems = estimate_memory(spec, system, plan)
    worst = max(mems, key=lambda m: m.total)
    if worst.oom:
        payload = {
            "model": spec.name,
            "system": system.name,
            "plan": plan.as_dict(),
            "oom": True,
            "memory_per_device_bytes": worst.total,
            "memory": worst.as_dict(),
            "memory_by_stage": [m.as_dict() for m in mems],
        }
        if args.json:
            emit_json(payload)
        raise NegativeVerdict(
            f"out of memory: {format_breakdown(worst)}; try --recompute full, "
            "a higher --zero, more --pp/--tp, or a smaller --mbs",
            payload,
        )
    result = simulate_training(
        spec,
        system,
        plan,
        TrainingOptions(
            full_ranks=args.full_ranks,
            progress=not args.quiet,
            attention_impl=args.attention_impl,
            # Traces and timelines draw every op, so they need the full simulation.
            exact=bool(args.exact or args.trace or args.timeline),
        ),
    )
    reps = {s.rank: f"stage {s.stage} (rank {s.rank})" for s in result.stages}
    if args.trace:
        from xpusim.sim.trace import write_chrome_trace

        write_chrome_trace(result.sim, args.trace, reps.keys(), reps)
    if args.timeline:
        from xpusim.sim.trace import render_timeline

        render_timeline(
            result.sim,
            args.timeline,
            sorted(reps),
            reps,
            title=f"{spec.name} on {system.num_devices} x {system.device.name}",
        )
    payload = result.as_dict()
    if args.trace:
        payload["trace"] = str(Path(args.trace))
    if args.json:
        emit_json(payload)
        return 0
    _print(result, payload)
    if args.explain:
        _print_explain(result)
    return 0


def _print_explain(result) -> None:
    from xpusim.sim.training.simulate import explain_terms

    terms = explain_terms(result)
    print()
    print(f"why {result.step_time_s:.3f} s (mean stage; shares of the step):")
    print(table(
        [(name, f"{t:.3f}", f"{t / result.step_time_s:.1%}", src) for name, t, src in terms],
        ("term", "seconds", "share", "source"),
    ))
    plan = result.plan
    print(
        f"recipe: dtype {plan.dtype}, attention {plan.attention_impl}, dropout {plan.dropout}, "
        f"grad accumulation fusion {plan.grad_accum_fusion}, framework {plan.framework}, "
        f"recompute {plan.recompute}"
        + (f" ({','.join(plan.recompute_modules)})" if plan.recompute == "selective" else "")
    )


def _print(result, d: dict) -> None:
    plan = result.plan
    print(
        f"{d['model']} on {d['devices']} x {d['system']}: tp={plan.tp} pp={plan.pp} "
        f"vpp={plan.vpp} dp={plan.dp} ep={plan.ep} cp={plan.cp} mbs={plan.mbs} gbs={plan.gbs} "
        f"seq={plan.seq} recompute={plan.recompute} sp={plan.sequence_parallel} zero={plan.zero}"
    )
    peaks = ", ".join(
        f"{v:.1%} of {name} peak ({fmt_si(result.peaks[name], 'FLOP/s')})"
        for name, v in d["mfu_by_peak"].items()
    )
    rows = [
        ("step time", fmt_si(d["step_time_s"], "s")),
        ("tokens/s", f"{d['tokens_per_s']:,.0f} ({d['tokens_per_s_per_device']:.1f} per device)"),
        ("MFU", peaks),
        (
            "memory/device",
            f"{fmt_bytes(d['memory_per_device_bytes'])} "
            f"(stage {d['memory']['stage']}, oom={d['oom']})",
        ),
        (
            "bubble",
            f"{d['bubble_fraction']:.1%} of the step simulated (idle pipeline time); the "
            f"textbook (p-1)/(m*v) gives {d['bubble_closed_form']:.1%} of the bubble-free step",
        ),
        ("exposed comm", fmt_si(d["exposed_comm_s"], "s")),
    ]
    print(table(rows, ("quantity", "value")))
    print()
    print(
        "mean busy time per stage (s; streams overlap, so the parts can sum to more "
        "than the step):"
    )
    print(table([(k, f"{v:.3f}") for k, v in d["breakdown_s"].items()], ("part", "seconds")))
    print()
    print("memory: " + format_breakdown(result.peak_memory))
