"""``xpusim infer``: one prefill or decode step of a model on a system, or a serving run.

The step is lowered to per-rank IR (sim/inference/lowering.py), priced by the cost
model and the network, and scheduled by the SimPy engine; the serving engine's
host overheads come from an engine profile (hwprofiles/engines/). ``--serve``
simulates continuous batching of a request stream (sim/inference/serving.py).
"""

from __future__ import annotations

import argparse
import sys

from xpusim.hwprofiles import load_system
from xpusim.sim.cli import disagg as disagg_cli
from xpusim.sim.cost.attention_impl import IMPLS, check_impl
from xpusim.sim.errors import InputError, NegativeVerdict
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.kvcache import require_kv_fit, step_kv_bytes
from xpusim.sim.inference.lowering import (
    ParallelPlan,
    StepBatch,
    StepSimulator,
    plan_for,
    require_memory,
)
from xpusim.sim.inference.routing import routing_from_text
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.speculative import HEAD_KINDS, draft_simulator, require_draft_fit
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import LengthDist, Workload, make_requests
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.report import emit_json, fmt_bytes, fmt_si, table


def add_deployment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", required=True, help="system profile name or path (e.g. hgx-a800)")
    p.add_argument("--nodes", type=int, help="nodes of the system (default: the profile's)")
    p.add_argument("--devices", type=int, help="devices used, all as tensor parallel (TP=N)")
    p.add_argument("--tp", type=int, help="tensor-parallel size (with --ep: devices = tp x ep)")
    p.add_argument("--ep", type=int, default=1, help="expert-parallel groups (MoE)")
    p.add_argument(
        "--engine",
        default="vllm-0.6",
        help="serving-engine profile name or path; 'none' for no host overheads",
    )
    p.add_argument("--dtype", default="bf16")
    p.add_argument(
        "--routing",
        default="uniform",
        help="MoE routing: uniform, zipf:S (p_i ~ i^-S) or a file of per-expert counts",
    )
    p.add_argument("--seed", type=int, default=0)


# Defaults of the speculative-decoding options of --serve (used only with --draft).
SD_DEFAULTS = {"gamma": 4, "alpha": 0.8, "draft_devices": 1}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="inference step (prefill/decode) or serving simulation")
    p.add_argument("--model", required=True, help="model preset name or HF config.json path")
    add_deployment_args(p)
    p.add_argument("--phase", choices=("prefill", "decode"), default="decode")
    p.add_argument("--batch", type=int, default=1, help="requests in the step")
    p.add_argument(
        "--context",
        type=int,
        default=1024,
        help="prompt length (prefill) or cached context per request (decode)",
    )
    p.add_argument(
        "--attention-impl",
        choices=IMPLS,
        metavar="IMPL",
        help="attention kernel: " + ", ".join(IMPLS) + " (default: the device's, docs/attention.md)",
    )
    p.add_argument("--json", action="store_true")
    s = p.add_argument_group("serving (--serve)")
    s.add_argument("--serve", action="store_true", help="simulate continuous batching of requests")
    s.add_argument("--rate", type=float, default=1.0, help="Poisson arrival rate, requests/s")
    s.add_argument("--requests", type=int, default=200, help="number of requests")
    s.add_argument("--trace", help="CSV with arrival_s,prompt_tokens,output_tokens")
    s.add_argument("--prompt-len", default="uniform:128:1024", help="N, uniform:A:B or exp:MEAN")
    s.add_argument("--output-len", default="exp:256", help="N, uniform:A:B or exp:MEAN")
    s.add_argument("--draft", help="speculative decoding: draft model name or head (eagle, mtp)")
    # The SD options default to None so that one given without --draft is caught, not
    # silently ignored; run() fills in the defaults below when --draft is set.
    s.add_argument(
        "--gamma", type=int, help=f"tokens drafted per round (default {SD_DEFAULTS['gamma']})"
    )
    s.add_argument(
        "--alpha",
        type=float,
        help=f"mean acceptance; sampled per request (default {SD_DEFAULTS['alpha']})",
    )
    s.add_argument(
        "--draft-devices",
        type=int,
        help=f"tensor-parallel size of the draft (default {SD_DEFAULTS['draft_devices']})",
    )
    s.add_argument(
        "--progress", action="store_true", help="show a progress bar (default: on a tty)"
    )
    disagg_cli.add_args(s)
    p.set_defaults(func=run)


def fill_speculative_defaults(args: argparse.Namespace) -> None:
    """Reject SD options given without --draft (they would be ignored); else default them."""
    given = [name for name in SD_DEFAULTS if getattr(args, name) is not None]
    if given and not args.draft:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise InputError(
            f"{flags} needs --draft (speculative decoding): add --draft MODEL (or eagle, mtp) "
            f"with --serve, or drop {flags}"
        )
    for name, value in SD_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def run(args: argparse.Namespace) -> int:
    fill_speculative_defaults(args)
    if disagg_cli.wants_disagg(args):
        return disagg_cli.serve_disaggregated(args)
    spec = load_model(args.model)
    system = load_system(args.system, nodes=args.nodes)
    engine = load_engine(args.engine)
    plan = plan_for(args.devices, args.tp, args.ep)
    routing = routing_from_text(args.routing, args.seed)
    memory = require_memory(spec, system, plan, engine, args.dtype)
    if args.attention_impl:
        check_impl(system.device, args.attention_impl, "--attention-impl")
    sim = StepSimulator(
        spec, system, plan, engine, args.dtype, routing, attention_impl=args.attention_impl
    )
    if args.serve:
        return _serve(args, spec, system, plan, engine, sim, memory)
    if args.batch < 1 or args.context < (1 if args.phase == "prefill" else 0):
        raise InputError("--batch must be >= 1 and --context >= 1 (prefill) or >= 0 (decode)")
    batch = StepBatch.for_phase(args.phase, args.batch, args.context)
    new_tokens = batch.tokens
    # Checked before simulating: an out-of-memory verdict, like train's.
    kv_needed = step_kv_bytes(memory, args.batch, args.context, plan.ep)
    what = f"{args.phase} of batch {args.batch} x context {args.context}"
    try:
        require_kv_fit(memory, kv_needed, what)
    except NegativeVerdict as verdict:
        # The command's JSON document for the verdict (main prints it under --json).
        raise NegativeVerdict(
            str(verdict),
            {
                "model": spec.name,
                "system": system.name,
                "tp": plan.tp,
                "ep": plan.ep,
                "devices": plan.devices,
                "phase": args.phase,
                "batch": args.batch,
                "context": args.context,
                "oom": True,
                "memory": verdict.payload,
            },
        ) from None
    result = sim.run(batch)
    payload = {
        "model": spec.name,
        "system": system.name,
        "device": system.device.name,
        "tp": plan.tp,
        "ep": plan.ep,
        "devices": plan.devices,
        "engine": engine.name,
        "phase": args.phase,
        "batch": args.batch,
        "context": args.context,
        "dtype": args.dtype,
        **result.as_dict(),
        "tokens_per_s": new_tokens / result.time_s,
        "memory": {
            **memory.as_dict(),
            "kv_needed_bytes": kv_needed,
            "fits": kv_needed <= memory.kv_cache,
        },
    }
    if args.json:
        emit_json(payload)
        return 0
    print(
        f"{spec.name} {args.phase} on {plan.devices} x {system.device.name} (tp={plan.tp}, "
        f"ep={plan.ep}, engine {engine.name}): batch {args.batch}, context {args.context}"
    )
    print(
        f"  step {fmt_si(result.time_s, 's')}  [{result.bound}-bound]  "
        f"{payload['tokens_per_s']:.1f} tokens/s"
    )
    print(
        f"  device {fmt_si(result.device_s, 's')} (compute {fmt_si(result.compute_s, 's')}, memory "
        f"{fmt_si(result.memory_s, 's')}, kernel overhead {fmt_si(result.overhead_s, 's')} over "
        f"{result.kernels} kernels), host {fmt_si(result.host_s, 's')}"
    )
    print(
        f"  weights read {fmt_bytes(result.weight_bytes_read)}, KV read "
        f"{fmt_bytes(result.kv_bytes_read)} per rank"
        + (f", experts touched per layer {result.experts_loaded:.1f}" if spec.moe else "")
    )
    rows = [
        (k, fmt_si(v, "s"), f"{v / result.time_s:.1%}")
        for k, v in sorted(result.by_kind.items(), key=lambda kv: -kv[1])
    ]
    print(table(rows, ["kind", "time", "share"]))
    print(
        f"  memory per device: weights {fmt_bytes(memory.weights)}, activations "
        f"{fmt_bytes(memory.activations)}, KV cache {fmt_bytes(memory.kv_cache)} "
        f"({memory.kv_tokens:,.0f} tokens); this batch needs {fmt_bytes(kv_needed)} of KV"
        + ("" if payload["memory"]["fits"] else "  ** does not fit **")
    )
    return 0


def check_speculative_args(gamma: int, alpha: float, draft_devices: int) -> None:
    """The --draft options of a serving run: a draft length, a probability, a TP size."""
    if gamma < 1:
        raise InputError(f"--gamma must be >= 1 (tokens drafted per round), got {gamma}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(
            f"--alpha must be in [0, 1] (mean acceptance per drafted token), got {alpha}"
        )
    if draft_devices < 1:
        raise InputError(f"--draft-devices must be >= 1, got {draft_devices}")


def _serve(args, spec, system, plan, engine, sim, memory) -> int:
    if args.draft:
        check_speculative_args(args.gamma, args.alpha, args.draft_devices)
    workload = Workload(
        args.requests,
        args.rate,
        LengthDist.parse(args.prompt_len, "--prompt-len"),
        LengthDist.parse(args.output_len, "--output-len"),
        args.seed,
        args.trace,
        args.alpha if args.draft else 0.0,
    )
    costs = StepCosts(sim)
    if args.draft:
        draft = args.draft if args.draft in HEAD_KINDS else load_model(args.draft)
        require_draft_fit(memory, draft, system, args.draft_devices, engine, args.dtype, "--draft")
        draft_sim = draft_simulator(
            spec,
            draft,
            system,
            plan,
            engine,
            args.dtype,
            sim.routing,
            ParallelPlan(tp=args.draft_devices),
        )
        costs = StepCosts(sim, draft_sim, args.gamma)
    requests = make_requests(workload)
    progress = args.progress or (sys.stderr.isatty() and not args.json)
    server = Server(
        costs, memory.kv_tokens, engine.max_num_seqs, engine.max_batched_tokens, seed=args.seed
    )
    metrics = server.run(requests, progress).metrics()
    payload = {
        "model": spec.name,
        "system": system.name,
        "tp": plan.tp,
        "ep": plan.ep,
        "engine": engine.name,
        "rate": args.rate if not args.trace else None,
        "trace": args.trace,
        "draft": args.draft,
        "gamma": args.gamma if args.draft else None,
        "alpha": args.alpha if args.draft else None,
        "seed": args.seed,
        **metrics,
    }
    if args.json:
        emit_json(payload)
        return 0
    print(
        f"serving {spec.name} on {plan.devices} x {system.device.name} ({engine.name}): "
        f"{metrics['completed']}/{metrics['requests']} requests in {metrics['makespan_s']:.2f} s"
        + (f", SD with {args.draft} gamma={args.gamma} alpha~{args.alpha}" if args.draft else "")
    )
    print(
        f"  throughput {metrics['throughput_tokens_per_s']:.1f} output tokens/s, "
        f"{metrics['throughput_requests_per_s']:.2f} requests/s; mean decode batch "
        f"{metrics['mean_decode_batch']:.1f}; {metrics['preemptions']} preemptions; KV capacity "
        f"{metrics['kv_capacity_tokens']:,.0f} tokens"
    )
    rows = []
    for key, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "latency")):
        m = metrics[key]
        rows.append([name] + [fmt_si(m[q], "s") for q in ("mean", "p50", "p90", "p99")])
    print(table(rows, ["metric", "mean", "p50", "p90", "p99"]))
    return 0
