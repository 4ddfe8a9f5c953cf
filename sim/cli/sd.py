"""``xpusim sd``: the speculative-decoding study (MoESD) — speedup and target efficiency vs batch.

Per batch size: the target's plain decode step (t_ar_s), one SD round and its parts
(gamma draft steps, the gamma+1-token verification, rejection), the expected
tokens per round from the acceptance, speedup = tokens x t_ar / t_round and
target efficiency = t_ar / t_verify. ``--compare-dense`` adds a dense
target/draft pair, ``--topk`` re-runs the target with other top-k (MoESD Fig. 4).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from hwprofiles import load_system
from sim.cli.infer import parallel_plan, parse_routing
from sim.errors import InputError
from sim.inference.engine_profile import load_engine
from sim.inference.kvcache import plan_memory, require_fit
from sim.inference.lowering import ParallelPlan
from sim.inference.speculative import (
    HEAD_KINDS,
    SpeculativeModel,
    band_width,
    expected_tokens,
    peak,
    sigma_to_alpha,
)
from sim.models.hf_config import load_model
from sim.report import emit_json, table, write_csv
from sim.units import parse_int_list

PAPER_BATCHES = "1,2,4,8,12,16,20,24,28,32,36,40,44,48,52,56,60,80,100"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sd", help="speculative-decoding study: speedup and target efficiency vs batch"
    )
    p.add_argument("--target", required=True, help="target model preset or config.json")
    p.add_argument("--draft", required=True, help="draft model preset, or a head: eagle, mtp")
    p.add_argument("--system", required=True)
    p.add_argument("--nodes", type=int, help="nodes of the system (default: the profile's)")
    p.add_argument(
        "--devices", type=int, help="target devices (TP=N); the draft model uses --draft-devices"
    )
    p.add_argument("--tp", type=int)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--draft-devices", type=int, default=1, help="TP of a draft model (vLLM: 1)")
    p.add_argument("--gamma", type=int, default=4, help="draft length")
    acc = p.add_mutually_exclusive_group()
    acc.add_argument(
        "--alpha",
        default="0.8",
        help="acceptance per drafted token: one rate, or one per position (a,b,c,d)",
    )
    acc.add_argument(
        "--sigma", type=float, help="MoESD's sigma instead of alpha (converted by its Eq. 5)"
    )
    p.add_argument("--batch", default=PAPER_BATCHES, help="batch sizes, comma-separated")
    p.add_argument(
        "--context", type=float, default=512.0, help="cached context per request (tokens)"
    )
    p.add_argument("--engine", default="vllm-0.6", help="serving-engine profile or 'none'")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--routing", default="uniform", help="uniform, zipf:S or a counts file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compare-dense", metavar="MODEL", help="dense target to compare (e.g. opt-30b)"
    )
    p.add_argument(
        "--draft-dense", metavar="MODEL", help="draft of the dense target (e.g. opt-350m)"
    )
    p.add_argument("--topk", help="also run the target with these top-k values, e.g. 1,2,4,8,16")
    p.add_argument("--json", action="store_true")
    p.add_argument("--csv", help="write all rows to this CSV file")
    p.add_argument("--plot", help="write speedup and target efficiency vs batch to this PNG/SVG")
    p.set_defaults(func=run)


def _alpha(args: argparse.Namespace) -> float | tuple[float, ...]:
    if args.sigma is not None:
        return sigma_to_alpha(args.sigma, args.gamma)
    try:
        values = tuple(float(x) for x in str(args.alpha).split(",") if x.strip())
    except ValueError:
        raise InputError(
            f"--alpha: expected a rate or comma-separated rates, got '{args.alpha}'"
        ) from None
    if len(values) == 1:
        return values[0]
    return values


def _group(label: str, target, draft, args, system, plan, engine, alpha, batches, routing) -> dict:
    memory = plan_memory(
        target,
        system.device.hbm_capacity,
        plan.tp,
        plan.ep,
        args.dtype,
        engine.memory_utilization,
        engine.max_batched_tokens,
    )
    require_fit(memory, f"{target.name} on {plan.devices} x {system.device.name}")
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
    rows = model.sweep(batches)
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
    }


def run(args: argparse.Namespace) -> int:
    system = load_system(args.system, nodes=args.nodes)
    engine = load_engine(args.engine)
    plan = parallel_plan(args)
    batches = parse_int_list(args.batch, "--batch")
    if min(batches) < 1:
        raise InputError("--batch: batch sizes must be >= 1")
    alpha = _alpha(args)
    tokens = expected_tokens(alpha, args.gamma)
    routing = parse_routing(args.routing, args.seed)
    target = load_model(args.target)
    draft = args.draft if args.draft in HEAD_KINDS else load_model(args.draft)
    groups = [
        _group(target.name, target, draft, args, system, plan, engine, alpha, batches, routing)
    ]
    if args.compare_dense:
        if not args.draft_dense:
            raise InputError("--compare-dense needs --draft-dense (e.g. opt-350m)")
        dense = load_model(args.compare_dense)
        ddraft = (
            args.draft_dense if args.draft_dense in HEAD_KINDS else load_model(args.draft_dense)
        )
        groups.append(
            _group(dense.name, dense, ddraft, args, system, plan, engine, alpha, batches, routing)
        )
    if args.topk:
        if target.moe is None:
            raise InputError(f"--topk needs an MoE target; {target.name} is dense")
        for k in parse_int_list(args.topk, "--topk"):
            if not 1 <= k <= target.moe.num_experts:
                raise InputError(f"--topk {k}: must be in 1..{target.moe.num_experts}")
            tk = replace(target, name=f"{target.name} top-{k}", moe=replace(target.moe, top_k=k))
            groups.append(
                _group(f"top-{k}", tk, draft, args, system, plan, engine, alpha, batches, routing)
            )
    payload = {
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
    if args.csv:
        write_csv(args.csv, [{"group": g["label"], **r} for g in groups for r in g["rows"]])
    if args.plot:
        plot_sweep(
            groups,
            args.plot,
            f"{system.name} x{plan.devices}, gamma={args.gamma}, E[tokens]={tokens:.2f}",
        )
    if args.json:
        emit_json(payload)
        return 0
    print(
        f"SD on {plan.devices} x {system.device.name} ({engine.name}): gamma={args.gamma}, "
        f"alpha={alpha}, {tokens:.2f} tokens/round, context {args.context:g}"
    )
    for g in groups:
        print(
            f"\n{g['label']} (draft {g['draft']}): peak {g['peak']['speedup']:.2f}x at batch "
            f"{g['peak']['batch']}; speedup >= peak/sqrt2 for batch {g['band_sqrt2']['min_batch']}"
            f"..{g['band_sqrt2']['max_batch']}"
        )
        rows = [
            (
                r["batch"],
                f"{r['t_ar_s'] * 1e3:.2f}",
                f"{r['t_draft_s'] * 1e3:.2f}",
                f"{r['t_verify_s'] * 1e3:.2f}",
                f"{r['t_reject_s'] * 1e3:.2f}",
                f"{r['speedup']:.3f}",
                f"{r['target_efficiency']:.3f}",
                f"{r['experts_loaded_ar']:.1f}->{r['experts_loaded']:.1f}" if g["top_k"] else "-",
            )
            for r in g["rows"]
        ]
        print(
            table(
                rows,
                [
                    "batch",
                    "t_ar ms",
                    "t_draft ms",
                    "t_verify ms",
                    "t_reject ms",
                    "speedup",
                    "target eff",
                    "experts ar->sd",
                ],
            )
        )
    for path in (args.csv, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


def plot_sweep(groups: list[dict], path: str, title: str) -> Path:
    import matplotlib  # noqa: PLC0415 - plotting only when asked

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for g in groups:
        b = [r["batch"] for r in g["rows"]]
        ax1.plot(b, [r["speedup"] for r in g["rows"]], marker="o", ms=3, label=g["label"])
        ax2.plot(b, [r["target_efficiency"] for r in g["rows"]], marker="o", ms=3, label=g["label"])
    ax1.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("SD speedup")
    ax2.set_xlabel("batch size")
    ax2.set_ylabel("target efficiency T(B,1)/T(B,verify)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
