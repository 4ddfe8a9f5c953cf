"""``xpusim ep``: expert-parallel dispatch/combine cost of one MoE layer (study 3).

Reports dispatch and combine time, inter-/intra-node bytes, the slowest rank, the
bottleneck link, the share hidden behind ``--overlap-compute-s`` of expert compute,
and the dedup analysis (predicted vs simulated flat/hierarchical inter-node bytes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from xpusim.sim.api.base import request_from_args
from xpusim.sim.api.ep import EpRequest, EpSweepResult, ep, ep_sweep
from xpusim.sim.network.api import BACKENDS
from xpusim.sim.network.ep import DISPATCH_MODES
from xpusim.sim.report import (
    check_output_args,
    emit_json,
    fmt_bytes,
    fmt_si,
    save_figure,
    table,
    write_csv,
)
from xpusim.sim.validation.track_record import describe


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
    p.add_argument("--dtype", help="dtype of dispatched activations (default bf16)")
    p.add_argument("--system", help="system profile name or path (default atlas-800t-a2)")
    p.add_argument("--nodes", type=int, help="nodes (default: ceil(ep / devices per node))")
    p.add_argument("--ep", type=int, help="expert-parallel group size (default 8)")
    p.add_argument("--tokens-per-device", type=int, help="default 4096")
    p.add_argument(
        "--dispatch",
        help=f"{'|'.join(DISPATCH_MODES)} (default flat); a comma list compares them",
    )
    p.add_argument(
        "--ll-intranode",
        help="low-latency dispatch: path of copies between devices of one node, "
        "nic (NIC to NIC, pure RDMA: DeepEP V1 as launched; default) or fabric "
        "(NVLink/xGMI stores beside the RDMA: DeepEP's allow_nvlink_for_low_latency_mode, "
        "UCCL-EP); docs/ep.md",
    )
    p.add_argument("--routing", help="uniform (default) | zipf:S | hist:FILE")
    p.add_argument("--capacity-factor", type=float, help="drop-and-pad capacity (default dropless)")
    p.add_argument(
        "--overlap-compute-s",
        type=float,
        help="expert compute available to hide dispatch+combine behind (default 0)",
    )
    p.add_argument("--seed", type=int, help="seed of the Zipf expert permutation (default 0)")
    p.add_argument("--backend", choices=BACKENDS, help="default analytical")
    p.add_argument("--sweep", help="e.g. ep=8,16,32,64")
    p.add_argument("--plot", help="sweep plot path (default out/ep_sweep.png)")
    p.add_argument("--csv", help="write the rows as CSV")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_args(args)
    request = request_from_args(EpRequest, args)
    if args.sweep:
        return _sweep(args, ep_sweep(request))
    result = ep(request)
    docs = result.documents()
    if args.csv:
        write_csv(args.csv, [{k: v for k, v in d.items() if not isinstance(v, dict | list)} for d in docs])
    if args.json:
        emit_json(result.as_dict())
        return 0
    for d in docs:
        _print(d)
    if record := result.track_record():
        print(describe(record))
    return 0


def _print(r: dict[str, Any]) -> None:
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


SWEEP_COLUMNS = (
    ("ep", "ep", str),
    ("nodes", "nodes", str),
    ("dispatch", "dispatch", str),
    ("dispatch(ms)", "dispatch_time_s", lambda v: f"{v * 1e3:.2f}"),
    ("combine(ms)", "combine_time_s", lambda v: f"{v * 1e3:.2f}"),
    ("inter-node", "inter_node_bytes", fmt_bytes),
    ("intra-node", "intra_node_bytes", fmt_bytes),
    ("slowest", "slowest_rank", str),
    ("imbalance", "imbalance", lambda v: f"{v:.2f}"),
)


def _sweep(args: argparse.Namespace, result: EpSweepResult) -> int:
    rows = result.rows()
    plot = Path(args.plot or "out/ep_sweep.png")
    plot_ep_sweep(
        rows,
        plot,
        f"EP dispatch+combine, {result.system}, "
        f"{result.tokens_per_device} tokens/device, routing {result.routing}",
    )
    if args.csv:
        write_csv(args.csv, rows)
    if args.json:
        emit_json({**result.as_dict(), "plot": str(plot)})
        return 0
    print(
        table(
            [[fmt(r[key]) for _, key, fmt in SWEEP_COLUMNS] for r in rows],
            [title for title, _, _ in SWEEP_COLUMNS],
        )
    )
    print(f"plot: {plot}")
    sys.stdout.flush()
    return 0


def plot_ep_sweep(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
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
