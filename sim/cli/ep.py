"""``xpusim ep``: expert-parallel dispatch/combine cost of one MoE layer (study 3).

Reports dispatch and combine time, inter-/intra-node bytes, the slowest rank, the
bottleneck link, the share hidden behind ``--overlap-compute-s`` of expert compute,
and the dedup analysis (predicted vs simulated flat/hierarchical inter-node bytes).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from xpusim.hwprofiles import load_system
from xpusim.sim.errors import InputError
from xpusim.sim.ir import dtype_bytes
from xpusim.sim.models import load_model
from xpusim.sim.network.api import BACKENDS
from xpusim.sim.network.ep import DISPATCH_MODES, EPConfig, EPResult, simulate_ep, system_for_ep
from xpusim.sim.report import (
    check_output_file,
    check_plot_path,
    emit_json,
    fmt_bytes,
    fmt_si,
    save_figure,
    table,
    write_csv,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ep", help="expert-parallel all-to-all (dispatch/combine) study")
    p.add_argument("--model", help="model preset or config.json (gives hidden, top-k, experts)")
    p.add_argument("--hidden", type=int, help="hidden size (overrides the model)")
    p.add_argument("--top-k", type=int, help="routed experts per token")
    p.add_argument("--experts", type=int, help="routed experts per MoE layer")
    p.add_argument(
        "--shared-experts",
        type=int,
        help="shared experts (computed locally: no EP traffic; reported only)",
    )
    p.add_argument("--dtype", default="bf16", help="dtype of dispatched activations")
    p.add_argument("--system", default="atlas-800t-a2")
    p.add_argument("--nodes", type=int, help="nodes (default: ceil(ep / devices per node))")
    p.add_argument("--ep", type=int, default=8, help="expert-parallel group size")
    p.add_argument("--tokens-per-device", type=int, default=4096)
    p.add_argument(
        "--dispatch", default="flat", help=f"{'|'.join(DISPATCH_MODES)}; a comma list compares them"
    )
    p.add_argument("--routing", default="uniform", help="uniform | zipf:S | hist:FILE")
    p.add_argument("--capacity-factor", type=float, help="drop-and-pad capacity (default dropless)")
    p.add_argument(
        "--overlap-compute-s",
        type=float,
        default=0.0,
        help="expert compute available to hide dispatch+combine behind",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Zipf expert permutation")
    p.add_argument("--backend", default="analytical", choices=BACKENDS)
    p.add_argument("--sweep", help="e.g. ep=8,16,32,64")
    p.add_argument("--plot", help="sweep plot path (default out/ep_sweep.png)")
    p.add_argument("--csv", help="write the rows as CSV")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def base_config(args: argparse.Namespace) -> tuple[EPConfig, dict]:
    hidden, top_k, experts, shared, name = None, None, None, None, None
    if args.model:
        spec = load_model(args.model)
        if spec.moe is None:
            raise InputError(f"--model {args.model} is dense (no experts); pick an MoE model")
        hidden, top_k, experts = spec.hidden, spec.moe.top_k, spec.moe.num_experts
        shared, name = spec.moe.shared_experts, spec.name
    # A flag the user gave (even 0) replaces the model's value; None means "not given".
    given = (("--hidden", args.hidden), ("--top-k", args.top_k), ("--experts", args.experts))
    for flag, value in given:
        if value is not None and value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    if args.shared_experts is not None and args.shared_experts < 0:
        raise InputError(f"--shared-experts must be >= 0, got {args.shared_experts}")
    hidden = args.hidden if args.hidden is not None else hidden
    top_k = args.top_k if args.top_k is not None else top_k
    experts = args.experts if args.experts is not None else experts
    shared = args.shared_experts if args.shared_experts is not None else (shared or 0)
    missing = [
        f
        for f, v in (("--hidden", hidden), ("--top-k", top_k), ("--experts", experts))
        if v is None
    ]
    if missing:
        raise InputError(f"give --model NAME or {', '.join(missing)}")
    if args.overlap_compute_s < 0:
        raise InputError("--overlap-compute-s must be >= 0")
    cfg = EPConfig(
        hidden=hidden,
        top_k=top_k,
        experts=experts,
        ep=args.ep,
        tokens_per_device=args.tokens_per_device,
        dtype_bytes=dtype_bytes(args.dtype),
        routing=args.routing,
        capacity_factor=args.capacity_factor,
        overlap_compute_s=args.overlap_compute_s,
        seed=args.seed,
    )
    return cfg, {"model": name, "shared_experts": shared, "dtype": args.dtype}


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in DISPATCH_MODES]
    if bad or not modes:
        raise InputError(f"--dispatch {text}: choose from {', '.join(DISPATCH_MODES)}")
    return modes


def _sweep_values(text: str) -> list[int]:
    key, sep, values = text.partition("=")
    if key.strip() != "ep" or not sep:
        raise InputError(f"--sweep {text}: expected ep=8,16,32,64")
    try:
        out = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--sweep {text}: EP sizes must be integers") from None
    if not out:
        raise InputError(f"--sweep {text}: no EP sizes")
    return out


def _one(cfg: EPConfig, args: argparse.Namespace) -> tuple[EPResult, str]:
    system, note = system_for_ep(load_system(args.system), cfg.ep, args.nodes)
    return simulate_ep(cfg, system, args.backend), note


def run(args: argparse.Namespace) -> int:
    if args.plot:
        check_plot_path(args.plot)
    if args.csv:
        check_output_file(args.csv, "--csv")
    cfg, extra = base_config(args)
    modes = _modes(args.dispatch)
    if args.sweep:
        return _sweep(args, cfg, extra, modes)
    results = []
    for mode in modes:
        res, note = _one(replace(cfg, dispatch=mode), args)
        results.append(
            {
                **extra,
                "system": args.system,
                "backend": args.backend,
                **({"note": note} if note else {}),
                **res.as_dict(),
            }
        )
    if args.csv:
        write_csv(
            args.csv,
            [{k: v for k, v in r.items() if not isinstance(v, dict | list)} for r in results],
        )
    if args.json:
        emit_json(results[0] if len(results) == 1 else {"results": results})
        return 0
    for r in results:
        _print(r)
    return 0


def _print(r: dict) -> None:
    total = r["dispatch_time_s"] + r["combine_time_s"]
    print(
        f"EP{r['ep']} {r['dispatch']} dispatch on {r['system']} ({r['nodes']} node(s)), "
        f"{r['tokens_per_device']} tokens/device, top-{r['top_k']} of {r['experts']}, "
        f"routing {r['routing']}" + (f"  [{r['note']}]" if r.get("note") else "")
    )
    print(
        f"  dispatch {fmt_si(r['dispatch_time_s'], 's')}   combine "
        f"{fmt_si(r['combine_time_s'], 's')}   inter-node {fmt_bytes(r['inter_node_bytes'])}   "
        f"intra-node {fmt_bytes(r['intra_node_bytes'])}"
    )
    print(
        f"  slowest rank {r['slowest_rank']}: receives {fmt_bytes(r['slowest_rank_recv_bytes'])}"
        f" ({r['imbalance']:.2f}x the mean)"
    )
    print(f"  bottleneck: {r['bottleneck']}")
    if r["overlap_compute_s"]:
        print(
            f"  overlap with {fmt_si(r['overlap_compute_s'], 's')} of expert compute: "
            f"{r['hidden_share']:.0%} of {fmt_si(total, 's')} hidden, "
            f"{fmt_si(r['exposed_s'], 's')} exposed"
        )
    if r["dropped_fraction"]:
        print(
            f"  capacity factor {r['capacity_factor']}: {r['dropped_fraction']:.1%} of "
            "routed copies dropped"
        )
    d = r["dedup"]
    if d["nodes"] > 1:
        line = (
            f"  dedup: flat sends {d['flat_inter_copies_per_token']:.2f} inter-node copies "
            f"per token, hierarchical {d['hierarchical_inter_copies_per_token']:.2f}: "
            f"predicted flat/hierarchical = {d['predicted_flat_over_hierarchical']:.3f}"
        )
        if r["dispatch"] != "flat" and d.get("simulated_flat_over_this"):
            line += f", simulated {d['simulated_flat_over_this']:.3f}"
        print(line + f" ({d['valid_for']})")


def _sweep(args: argparse.Namespace, cfg: EPConfig, extra: dict, modes: list[str]) -> int:
    rows = []
    for ep in _sweep_values(args.sweep):
        for mode in modes:
            res, _ = _one(replace(cfg, ep=ep, dispatch=mode), args)
            d = res.as_dict()
            rows.append(
                {
                    "ep": ep,
                    "nodes": res.nodes,
                    "dispatch": mode,
                    "dispatch_time_s": d["dispatch_time_s"],
                    "combine_time_s": d["combine_time_s"],
                    "inter_node_bytes": d["inter_node_bytes"],
                    "intra_node_bytes": d["intra_node_bytes"],
                    "slowest_rank": d["slowest_rank"],
                    "imbalance": d["imbalance"],
                    "hidden_share": d["hidden_share"],
                    "bottleneck": d["bottleneck"],
                }
            )
    plot = Path(args.plot or "out/ep_sweep.png")
    plot_ep_sweep(
        rows,
        plot,
        f"EP dispatch+combine, {args.system}, "
        f"{cfg.tokens_per_device} tokens/device, routing {cfg.routing}",
    )
    if args.csv:
        write_csv(args.csv, rows)
    if args.json:
        emit_json({**extra, "system": args.system, "plot": str(plot), "sweep": rows})
        return 0
    print(
        table(
            [
                [
                    r["ep"],
                    r["nodes"],
                    r["dispatch"],
                    f"{r['dispatch_time_s'] * 1e3:.2f}",
                    f"{r['combine_time_s'] * 1e3:.2f}",
                    fmt_bytes(r["inter_node_bytes"]),
                    fmt_bytes(r["intra_node_bytes"]),
                    r["slowest_rank"],
                    f"{r['imbalance']:.2f}",
                ]
                for r in rows
            ],
            [
                "ep",
                "nodes",
                "dispatch",
                "dispatch(ms)",
                "combine(ms)",
                "inter-node",
                "intra-node",
                "slowest",
                "imbalance",
            ],
        )
    )
    print(f"plot: {plot}")
    sys.stdout.flush()
    return 0


def plot_ep_sweep(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib  # imported here so the CLI starts fast when no plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in dict.fromkeys(r["dispatch"] for r in rows):
        sel = [r for r in rows if r["dispatch"] == mode]
        eps = [r["ep"] for r in sel]
        ax_t.plot(
            eps,
            [(r["dispatch_time_s"] + r["combine_time_s"]) * 1e3 for r in sel],
            marker="o",
            label=mode,
        )
        ax_b.plot(eps, [r["inter_node_bytes"] / 1e9 for r in sel], marker="o", label=mode)
    for ax, label in ((ax_t, "dispatch + combine (ms)"), (ax_b, "inter-node bytes, dispatch (GB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("EP size")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)  # atomic: temp file, then rename
    plt.close(fig)
    return path
