"""``xpusim collective KIND``: the time and bandwidth of one collective, or a size sweep.

Bandwidths follow nccl-tests: algbw = bytes / time, busbw = algbw x the kind's bus
factor (2(n-1)/n for all-reduce, (n-1)/n for all-gather / reduce-scatter /
all-to-all, 1 otherwise), so busbw compares directly with link peaks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from xpusim.sim.api.base import request_from_args
from xpusim.sim.api.collective import (
    ALGORITHM_CHOICES,
    DEFAULT_SWEEP,
    KINDS,
    PROTOCOL_CHOICES,
    CollectiveRequest,
    CollectiveResult,
    CollectiveSweepResult,
    collective,
    collective_sweep,
)
from xpusim.sim.errors import InputError
from xpusim.sim.network.api import BACKENDS
from xpusim.sim.network.call_timing import TIMINGS
from xpusim.sim.network.copy import APIS
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
    p = sub.add_parser("collective", help="cost of one collective (or a size sweep)")
    p.add_argument("kind", metavar="KIND", choices=KINDS, help=", ".join(KINDS))
    p.add_argument("--system", help="system profile name or path (default dgx-h100)")
    p.add_argument("--ranks", type=int, help="group size (default: one node's devices)")
    p.add_argument(
        "--nodes", type=int, help="nodes in the cluster (default: as many as --ranks needs)"
    )
    p.add_argument(
        "--bytes", help="per-rank buffer (sim.ir.Collective.bytes; default 1GiB)"
    )
    p.add_argument("--algorithm", choices=ALGORITHM_CHOICES, help="default auto")
    p.add_argument(
        "--protocol",
        choices=PROTOCOL_CHOICES,
        help="NCCL protocol (LL, LL128, Simple); auto (default) = the cheapest, as NCCL picks",
    )
    p.add_argument("--backend", choices=BACKENDS, help="default analytical")
    p.add_argument(
        "--api",
        choices=APIS,
        help="send-recv as the collective library runs it (library, default: ncclSend/"
        "ncclRecv, HCCL) or as a direct copy-engine copy (memcpy: cudaMemcpy peer, "
        "nvbandwidth CE, aclrtMemcpy)",
    )
    p.add_argument(
        "--timing",
        choices=TIMINGS,
        help="how the time is measured: device (default; calls back to back, as "
        "nccl-tests) or host (one torch.distributed call on an idle device: adds "
        "PyTorch's per-call host overhead, sim/data/call_timing.toml)",
    )
    p.add_argument(
        "--sweep",
        nargs="?",
        const=DEFAULT_SWEEP,
        metavar="MIN:MAX",
        help=f"sizes doubling from MIN to MAX (default {DEFAULT_SWEEP})",
    )
    p.add_argument("--plot", help="sweep plot path (default out/collective_<kind>.png)")
    p.add_argument("--csv", help="write the sweep as CSV")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _check_mode(args)
    check_output_args(args)
    request = request_from_args(CollectiveRequest, args)
    if args.sweep:
        return _sweep(args, collective_sweep(request))
    result = collective(request)
    if args.json:
        emit_json(result.as_dict())
        return 0
    _note(result.note)
    _print(result)
    if record := result.track_record():
        print(describe(record))
    return 0


def _check_mode(args: argparse.Namespace) -> None:
    """Flags of the other mode were dropped silently: ``--csv``/``--plot`` without
    ``--sweep`` wrote nothing (exit 0), ``--bytes`` with ``--sweep`` priced the range."""
    if not args.sweep and (args.csv or args.plot):
        raise InputError(
            "--csv/--plot write a size sweep: add --sweep [MIN:MAX], or drop them "
            "(--json prints one size's result)"
        )
    if args.sweep and args.bytes is not None:
        raise InputError(
            f"--bytes {args.bytes} prices one size, --sweep {args.sweep} a range of sizes: "
            "give one of them"
        )


def _note(note: str) -> None:
    if note:
        sys.stderr.write(f"xpusim: note: {note}\n")


def _print(r: CollectiveResult) -> None:
    res = r.network
    print(
        f"{r.kind} of {fmt_bytes(r.bytes)} over {r.ranks} ranks of {r.system} "
        f"({r.nodes} node(s)), {res.algorithm}/{res.protocol} [{res.backend}]"
    )
    print(
        f"  time {fmt_si(r.time_s, 's')}   algbw {fmt_si(r.algbw_bytes_per_s, 'B/s')}   "
        f"busbw {fmt_si(r.busbw_bytes_per_s, 'B/s')}"
    )
    if r.host_call_s:
        print(f"  of which host per call (--timing host): {fmt_si(r.host_call_s, 's')}")
    for cls, b in res.link_bytes.items():
        print(f"  {cls:11s} {fmt_bytes(b)} crossed")
    for ph in res.phases:
        print(
            f"  phase {ph['name']}: {fmt_si(ph['time_s'], 's')} "
            f"(transfer {fmt_si(ph['transfer_s'], 's')}, latency {fmt_si(ph['latency_s'], 's')})"
        )
    # One rank moves nothing: say so rather than "algbw 0 B/s" over a blank bottleneck.
    print(f"  bottleneck: {res.bottleneck or 'none (one rank: no data crosses a link)'}")


def _sweep(args: argparse.Namespace, result: CollectiveSweepResult) -> int:
    rows = result.rows()
    plot = Path(args.plot or f"out/collective_{result.kind}.png")
    title = f"{result.kind}, {result.ranks} ranks, {result.system}"
    plot_sweep(rows, plot, title, list(result.measured))
    if args.csv:
        write_csv(args.csv, rows)
    if args.json:
        emit_json({**result.as_dict(), "plot": str(plot)})
        return 0
    _note(result.note)
    print(
        table(
            [
                [
                    fmt_bytes(r["bytes"]),
                    f"{r['time_s'] * 1e6:.2f}",
                    f"{r['algorithm_bandwidth'] / 1e9:.2f}",
                    f"{r['bus_bandwidth'] / 1e9:.2f}",
                    r["algorithm"],
                    r["protocol"],
                ]
                for r in rows
            ],
            ["size", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "algorithm", "protocol"],
        )
    )
    if result.measured:
        print(f"measured (validation corpus): {len(result.measured)} point(s) overlaid")
    print(f"plot: {plot}")
    return 0


def plot_sweep(
    rows: list[dict[str, Any]],
    path: Path,
    title: str,
    measured: list[dict[str, Any]] | None = None,
) -> Path:
    import matplotlib  # imported here so the CLI starts fast when no plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = [r["bytes"] for r in rows]
    ax.plot(sizes, [r["bus_bandwidth"] / 1e9 for r in rows], marker="o", label="busbw")
    ax.plot(sizes, [r["algorithm_bandwidth"] / 1e9 for r in rows], marker=".", label="algbw")
    if measured:
        ax.scatter(
            [m["bytes"] for m in measured],
            [m["bus_bandwidth"] / 1e9 for m in measured],
            marker="x",
            color="black",
            zorder=3,
            label="busbw measured (validation corpus)",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per rank")
    ax.set_ylabel("GB/s")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)  # atomic: temp file, then rename
    plt.close(fig)
    return path
