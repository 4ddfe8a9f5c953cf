"""``xpusim infer --serve --prefill-system A --decode-system B``: disaggregated serving
(sim/inference/disagg.py) beside the colocated deployment of ``--system``.

Not a command of its own: ``infer`` calls ``serve_disaggregated`` when a pool flag is
given. Each pool is one instance of ``--prefill-devices`` / ``--decode-devices`` devices
(TP = devices / EP, with ``--ep`` shared by both pools); the colocated baseline is the
usual ``--system`` / ``--devices`` / ``--tp`` / ``--ep`` deployment, by default with
as many devices as the two pools together.
"""

from __future__ import annotations

import argparse

from xpusim.hwprofiles import load_system
from xpusim.sim.errors import InputError
from xpusim.sim.inference.disagg import DecodeOnlyCosts, goodput, kv_path, run_disaggregated
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.kvcache import kv_bytes_per_token
from xpusim.sim.inference.lowering import ParallelPlan, StepSimulator, plan_for, require_memory
from xpusim.sim.inference.routing import routing_from_text
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import LengthDist, Workload, make_requests
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.report import emit_json, fmt_bytes, fmt_si, table


def add_args(s: argparse._ArgumentGroup) -> None:
    """The disaggregation flags (in infer's serving group)."""
    s.add_argument("--prefill-system", help="disaggregated serving: system of the prefill pool")
    s.add_argument("--decode-system", help="disaggregated serving: system of the decode pool")
    s.add_argument("--prefill-devices", type=int, help="devices of the prefill instance")
    s.add_argument("--decode-devices", type=int, help="devices of the decode instance")
    s.add_argument("--slo-ttft", type=float, help="goodput SLO on time to first token, s")
    s.add_argument("--slo-tpot", type=float, help="goodput SLO on time per output token, s")


def wants_disagg(args: argparse.Namespace) -> bool:
    return any(getattr(args, n, None) is not None for n in (
        "prefill_system", "decode_system", "prefill_devices", "decode_devices"))


def _pool_plan(devices: int | None, ep: int, flag: str) -> ParallelPlan:
    if devices is None:
        raise InputError(f"{flag} is required with --prefill-system/--decode-system")
    if devices < 1 or devices % ep:
        raise InputError(f"{flag} {devices} must be a positive multiple of --ep {ep}")
    return ParallelPlan(tp=devices // ep, ep=ep)


def _pool_system(name: str, devices: int):
    """The pool's system with as many nodes as its instance needs (at least the profile's)."""
    probe = load_system(name)
    nodes = max(probe.nodes, -(-devices // probe.devices_per_node))
    return probe if nodes == probe.nodes else load_system(name, nodes=nodes)


def serve_disaggregated(args: argparse.Namespace) -> int:
    if not args.serve:
        raise InputError("--prefill-system/--decode-system need --serve")
    if args.draft:
        raise InputError("--draft is not modelled with disaggregated serving; drop one")
    for flag, v in (("--slo-ttft", args.slo_ttft), ("--slo-tpot", args.slo_tpot)):
        if v is not None and not v > 0:
            raise InputError(f"{flag} must be > 0 seconds, got {v}")
    spec = load_model(args.model)
    engine = load_engine(args.engine)
    routing = routing_from_text(args.routing, args.seed)
    ep = args.ep or 1
    pre_plan = _pool_plan(args.prefill_devices, ep, "--prefill-devices")
    dec_plan = _pool_plan(args.decode_devices, ep, "--decode-devices")
    pre_sys = _pool_system(args.prefill_system or args.system, pre_plan.devices)
    dec_sys = _pool_system(args.decode_system or args.system, dec_plan.devices)
    for system, plan, flag in ((pre_sys, pre_plan, "--prefill-devices"),
                               (dec_sys, dec_plan, "--decode-devices")):
        if plan.devices > system.num_devices:
            raise InputError(f"{flag} {plan.devices} exceeds the {system.num_devices} devices "
                             f"of {system.name}")
    pre_mem = require_memory(spec, pre_sys, pre_plan, engine, args.dtype)
    dec_mem = require_memory(spec, dec_sys, dec_plan, engine, args.dtype)
    pre_sim = StepSimulator(spec, pre_sys, pre_plan, engine, args.dtype, routing)
    dec_sim = StepSimulator(spec, dec_sys, dec_plan, engine, args.dtype, routing)
    workload = Workload(
        args.requests, args.rate, LengthDist.parse(args.prompt_len, "--prompt-len"),
        LengthDist.parse(args.output_len, "--output-len"), args.seed, args.trace, 0.0,
    )
    path = kv_path(pre_sys, dec_sys, pre_plan.devices, dec_plan.devices)
    kv_token = kv_bytes_per_token(spec, args.dtype, 1)
    split = run_disaggregated(
        make_requests(workload),
        Server(StepCosts(pre_sim), pre_mem.kv_tokens, engine.max_num_seqs,
               engine.max_batched_tokens, seed=args.seed),
        Server(DecodeOnlyCosts(dec_sim), dec_mem.kv_tokens, engine.max_num_seqs,
               engine.max_batched_tokens, seed=args.seed),
        kv_token, path,
    )
    m_split = split.metrics(args.slo_ttft, args.slo_tpot)
    # The colocated baseline: --system with --devices/--tp (default: both pools' devices).
    co_sys = load_system(args.system, nodes=args.nodes)
    if args.devices is None and args.tp is None:
        co_plan = ParallelPlan(tp=(pre_plan.devices + dec_plan.devices) // ep, ep=ep)
    else:
        co_plan = plan_for(args.devices, args.tp, ep)
    co_mem = require_memory(spec, co_sys, co_plan, engine, args.dtype)
    co_sim = StepSimulator(spec, co_sys, co_plan, engine, args.dtype, routing)
    co_reqs = make_requests(workload)
    co = Server(StepCosts(co_sim), co_mem.kv_tokens, engine.max_num_seqs,
                engine.max_batched_tokens, seed=args.seed).run(co_reqs)
    m_co = co.metrics()
    m_co["goodput_requests_per_s"] = goodput(co_reqs, m_co["makespan_s"], args.slo_ttft,
                                             args.slo_tpot)
    payload = {
        "model": spec.name, "engine": engine.name, "dtype": args.dtype, "seed": args.seed,
        "slo_ttft_s": args.slo_ttft, "slo_tpot_s": args.slo_tpot,
        "kv_bytes_per_token": kv_token,
        "disaggregated": {
            "prefill": {"system": pre_sys.name, "devices": pre_plan.devices, "tp": pre_plan.tp,
                        "ep": pre_plan.ep},
            "decode": {"system": dec_sys.name, "devices": dec_plan.devices, "tp": dec_plan.tp,
                       "ep": dec_plan.ep},
            **m_split,
        },
        "colocated": {"system": co_sys.name, "devices": co_plan.devices, "tp": co_plan.tp,
                      "ep": co_plan.ep, **m_co},
    }
    if args.json:
        emit_json(payload)
        return 0
    kv = m_split["kv_transfer"]
    print(
        f"disaggregated serving of {spec.name} ({engine.name}, {args.dtype}): prefill on "
        f"{pre_plan.devices} x {pre_sys.device.name} ({pre_sys.name}, tp={pre_plan.tp} "
        f"ep={pre_plan.ep}), decode on {dec_plan.devices} x {dec_sys.device.name} "
        f"({dec_sys.name}, tp={dec_plan.tp} ep={dec_plan.ep})"
    )
    print(
        f"  KV transfer over {kv['via']}: {fmt_si(kv['bandwidth_bytes_per_s'], 'B/s')} "
        f"+ {fmt_si(kv['latency_s'], 's')}, {fmt_bytes(kv_token)} per prompt token, "
        f"{fmt_bytes(kv['bytes_total'])} in all, mean {fmt_si(kv['time_mean_s'], 's')} per "
        "request (queue included)"
    )
    rows = []
    for name, m, dev in (("disaggregated", m_split, pre_plan.devices + dec_plan.devices),
                         (f"colocated ({co_sys.name})", m_co, co_plan.devices)):
        rows.append([
            name, dev, f"{m['throughput_tokens_per_s']:.1f}",
            f"{m['throughput_tokens_per_s'] / dev:.1f}",
            fmt_si(m["ttft_s"]["mean"], "s"), fmt_si(m["ttft_s"]["p90"], "s"),
            fmt_si(m["tpot_s"]["mean"], "s"), fmt_si(m["tpot_s"]["p90"], "s"),
            f"{m['goodput_requests_per_s']:.2f}",
        ])
    print(table(rows, ["deployment", "devices", "tokens/s", "per device", "TTFT mean",
                       "TTFT p90", "TPOT mean", "TPOT p90", "goodput req/s"]))
    slo = []
    if args.slo_ttft is not None:
        slo.append(f"TTFT <= {args.slo_ttft:g} s")
    if args.slo_tpot is not None:
        slo.append(f"TPOT <= {args.slo_tpot:g} s")
    print("  goodput: completed requests/s " + (
        "meeting " + " and ".join(slo) if slo else "(no SLO given: every completed request)"))
    return 0
