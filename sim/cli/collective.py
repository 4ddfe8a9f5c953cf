"""``xpusim collective KIND``: the time and bandwidth of one collective, or a size sweep.

Bandwidths follow nccl-tests: algbw = bytes / time, busbw = algbw x the kind's bus
factor (2(n-1)/n for all-reduce, (n-1)/n for all-gather / reduce-scatter /
all-to-all, 1 otherwise), so busbw compares directly with link peaks.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import System
from xpusim.sim.errors import InputError
from xpusim.sim.ir import CollectiveKind
from xpusim.sim.network import cost_collective
from xpusim.sim.network.algorithms import ALGORITHMS
from xpusim.sim.network.api import BACKENDS, MAX_RANKS
from xpusim.sim.network.protocols import PROTOCOLS
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
from xpusim.sim.units import parse_size

DEFAULT_SWEEP = "1KiB:4GiB"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collective", help="cost of one collective (or a size sweep)")
    p.add_argument(
        "kind",
        metavar="KIND",
        choices=[k.value for k in CollectiveKind],
        help=", ".join(k.value for k in CollectiveKind),
    )
    p.add_argument("--system", default="dgx-h100", help="system profile name or path")
    p.add_argument("--ranks", type=int, help="group size (default: one node's devices)")
    p.add_argument(
        "--nodes", type=int, help="nodes in the cluster (default: as many as --ranks needs)"
    )
    p.add_argument("--bytes", default="1GiB", help="per-rank buffer (sim.ir.Collective.bytes)")
    p.add_argument("--algorithm", default="auto", choices=("auto", *ALGORITHMS))
    p.add_argument(
        "--protocol",
        default="auto",
        choices=("auto", *PROTOCOLS),
        help="NCCL protocol (LL, LL128, Simple); auto = the cheapest, as NCCL picks",
    )
    p.add_argument("--backend", default="analytical", choices=BACKENDS)
    p.add_argument(
        "--sweep",
        nargs="?",
        const=DEFAULT_SWEEP,
        metavar="MIN:MAX",
        help=f"sizes doubling from MIN to MAX (default {DEFAULT_SWEEP})",
    )
    p.add_argument("--plot", help="sweep plot path (default out/collective_<kind>.png)")
    p.add_argument("--csv", help="write the sweep as CSV")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def sized_system(name: str, ranks: int | None, nodes: int | None) -> tuple[System, int, str]:
    """Load the system and size it for ``ranks``; returns (system, ranks, note)."""
    system = load_system(name)
    dpn = system.devices_per_node
    given_ranks = ranks
    ranks = ranks if ranks is not None else dpn * (nodes or 1)
    if ranks < 1:
        raise InputError(f"--ranks must be >= 1, got {ranks}")
    if ranks > MAX_RANKS:
        flag = "--ranks" if given_ranks is not None else "--nodes"
        given = f"--ranks {ranks}" if given_ranks is not None else f"--nodes {nodes} x {dpn}"
        raise InputError(
            f"{given}: {ranks:,} ranks is above the limit of {MAX_RANKS:,} (2^17, more "
            "than the largest clusters built; the ring/tree pricing grows with every rank): "
            f"pass fewer {flag}"
        )
    need = -(-ranks // dpn)
    note = ""
    if nodes is None:
        nodes = need
        if need > 1:
            note = (
                f"{ranks} ranks need {need} nodes of {dpn} devices "
                f"(ceil({ranks}/{dpn})); using --nodes {need}"
            )
    elif nodes < need:
        raise InputError(
            f"--ranks {ranks} needs {need} nodes of {dpn} devices; got --nodes "
            f"{nodes}: pass --nodes {need} or fewer ranks"
        )
    if nodes < 1:
        raise InputError(f"--nodes must be >= 1, got {nodes}")
    return replace(system, nodes=nodes), ranks, note


def sweep_sizes(spec: str) -> list[float]:
    lo_text, sep, hi_text = spec.partition(":")
    if not sep:
        raise InputError(f"--sweep {spec}: expected MIN:MAX, e.g. 8B:8GiB")
    lo, hi = parse_size(lo_text, "--sweep MIN"), parse_size(hi_text, "--sweep MAX")
    if lo <= 0 or hi < lo:
        raise InputError(f"--sweep {spec}: need 0 < MIN <= MAX")
    sizes = []
    size = lo
    while size <= hi * (1 + 1e-9):
        sizes.append(size)
        size *= 2
    return sizes


def run(args: argparse.Namespace) -> int:
    if args.plot:
        check_plot_path(args.plot)
    if args.csv:
        check_output_file(args.csv, "--csv")
    system, ranks, note = sized_system(args.system, args.ranks, args.nodes)
    if note and not args.json:
        sys.stderr.write(f"xpusim: note: {note}\n")
    group = tuple(range(ranks))
    header = {"kind": args.kind, "system": system.name, "ranks": ranks, "nodes": system.nodes}
    if note:
        header["note"] = note
    if args.sweep:
        return _sweep(args, system, group, header)
    nbytes = parse_size(args.bytes, "--bytes")
    res = cost_collective(
        system, args.kind, group, nbytes, args.algorithm, args.backend, args.protocol
    )
    payload = {**header, "bytes": nbytes, **res.as_dict()}
    if args.json:
        emit_json(payload)
        return 0
    print(
        f"{args.kind} of {fmt_bytes(nbytes)} over {ranks} ranks of {system.name} "
        f"({system.nodes} node(s)), {res.algorithm}/{res.protocol} [{res.backend}]"
    )
    print(
        f"  time {fmt_si(res.time_s, 's')}   algbw {fmt_si(res.algorithm_bandwidth, 'B/s')}   "
        f"busbw {fmt_si(res.bus_bandwidth, 'B/s')}"
    )
    for cls, b in res.link_bytes.items():
        print(f"  {cls:11s} {fmt_bytes(b)} crossed")
    for ph in res.phases:
        print(
            f"  phase {ph['name']}: {fmt_si(ph['time_s'], 's')} "
            f"(transfer {fmt_si(ph['transfer_s'], 's')}, latency {fmt_si(ph['latency_s'], 's')})"
        )
    print(f"  bottleneck: {res.bottleneck}")
    return 0


def _sweep(args: argparse.Namespace, system: System, group: tuple[int, ...], header: dict) -> int:
    rows = []
    for size in sweep_sizes(args.sweep):
        res = cost_collective(
            system, args.kind, group, size, args.algorithm, args.backend, args.protocol
        )
        rows.append(
            {
                "bytes": size,
                "time_s": res.time_s,
                "algbw": res.algorithm_bandwidth,
                "algorithm_bandwidth": res.algorithm_bandwidth,  # the older name, kept
                "bus_bandwidth": res.bus_bandwidth,
                "algorithm": res.algorithm,
                "protocol": res.protocol,
            }
        )
    plot = Path(args.plot or f"out/collective_{args.kind}.png")
    measured = measured_points(args.kind, args.system, system.name, len(group), system.nodes)
    plot_sweep(rows, plot, f"{args.kind}, {len(group)} ranks, {system.name}", measured)
    if args.csv:
        write_csv(args.csv, rows)
    if args.json:
        emit_json(
            {
                **header,
                "backend": args.backend,
                "plot": str(plot),
                "measured": measured,
                "sweep": rows,
            }
        )
        return 0
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
    if measured:
        print(f"measured (validation corpus): {len(measured)} point(s) overlaid")
    print(f"plot: {plot}")
    return 0


def measured_points(kind: str, system_arg: str, system_name: str, ranks: int, nodes: int) -> list[dict]:
    """Published busbw points of the validation corpus for this kind, system, ranks and
    nodes (category "collective", metric busbw, check and fit rows alike): the measured
    curve the sweep plot overlays. Empty when the corpus has none (or is absent)."""
    try:
        from xpusim.sim.validation.corpus import load_corpus
    except ImportError:
        return []
    try:
        rows = load_corpus()
    except (InputError, OSError):
        return []
    out = []
    for row in rows:
        a = row.args
        if row.category != "collective" or row.metric != "busbw" or row.unsupported:
            continue
        if a.get("kind") != kind or a.get("system") not in (system_arg, system_name):
            continue
        dpn_nodes = int(a.get("nodes", 1))
        if int(a.get("ranks", 0)) != ranks or dpn_nodes != nodes:
            continue
        if a.get("algorithm", "auto") != "auto" or "bytes" not in a:
            continue  # the sweep shows the library's own choice
        try:
            size = parse_size(str(a["bytes"]), "bytes")
        except InputError:
            continue
        out.append({"id": row.id, "bytes": size, "bus_bandwidth": row.measured * 1e9})
    return sorted(out, key=lambda r: r["bytes"])


def plot_sweep(rows: list[dict], path: Path, title: str, measured: list[dict] | None = None) -> Path:
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
