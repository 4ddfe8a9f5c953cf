"""``xpusim attention``: blockwise (FastAttention) versus standard attention by sequence length.

Prints per sequence length the predicted time of both kernels, the speedup, the
memory each needs, what bounds each, and whether standard attention's S x S
tensors fit in device memory (docs/attention.md explains the model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xpusim.sim.api.attention import AttentionRequest, AttentionResult, attention
from xpusim.sim.api.base import request_from_args
from xpusim.sim.errors import InputError
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
    p = sub.add_parser("attention", help="FastAttention vs standard attention by sequence length")
    p.add_argument("--device", help="device name or profile path (default ascend-910b2)")
    p.add_argument("--calibration", help="calibration overlay TOML")
    p.add_argument(
        "--seq",
        help="sequence lengths: a list or FIRST,SECOND,...,LAST (default 1024,2048,...,65536)",
    )
    p.add_argument("--batch", type=int, help="default 1")
    p.add_argument("--heads", type=int, help="default 32")
    p.add_argument("--head-dim", type=int, help="default 128")
    p.add_argument("--causal", action="store_true", default=None,
                   help="causal mask: blocks above the diagonal are skipped (default off)")
    p.add_argument("--dtype", help="fp16 (default), bf16 or fp32")
    p.add_argument(
        "--outer-block",
        type=int,
        help="keys per Cube->Vector hand-off (default: largest that fits L1/UB)",
    )
    p.add_argument(
        "--sync-us",
        type=float,
        help="Cube<->Vector synchronisation per outer block in us (default: estimate)",
    )
    p.add_argument(
        "--tp",
        type=int,
        help="also simulate tiling-AllReduce: TP attention + W_o over this many devices "
        "(default 1: not)",
    )
    p.add_argument("--system", help="system profile for --tp (default atlas-800t-a2)")
    p.add_argument("--blocks", help="sequence blocks for --tp (default 1,2,4,8,16)")
    p.add_argument("--plot", help="write a PNG/SVG of times and speedup vs seq to this path")
    p.add_argument("--csv", help="write the rows as CSV to this path")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_args(args)
    if (args.tp or 1) == 1 and (args.system or args.blocks):  # were silently ignored
        raise InputError(
            "--system/--blocks set the tiling-AllReduce study: add --tp N (N > 1) or drop them"
        )
    result = attention(request_from_args(AttentionRequest, args))
    if args.csv:
        flat = [{k: v for k, v in r.items() if not isinstance(v, dict)} for r in result.rows]
        write_csv(args.csv, flat)
    if args.plot:
        plot(result, args.plot)
    written = [p for p in (args.csv, args.plot) if p]
    if args.json:
        emit_json({**result.as_dict(), "files": written})
        return 0
    for path in written:
        print(f"wrote {path}")
    _print(result)
    if record := result.track_record():
        print(describe(record))
    return 0


def _print(result: AttentionResult) -> None:
    print(
        f"attention on {result.device}: batch {result.batch}, {result.heads} heads, "
        f"head_dim {result.head_dim}, {result.dtype}{', causal' if result.causal else ''}"
    )
    body = []
    for r in result.rows:
        std_time = fmt_si(r["standard_time_s"], "s") + ("" if r["standard_fits"] else " (OOM)")
        body.append(
            [
                r["seq"],
                std_time,
                fmt_si(r["fast_time_s"], "s"),
                f"{r['speedup']:.2f}x",
                fmt_bytes(r["standard_memory_bytes"]),
                fmt_bytes(r["fast_memory_bytes"]),
                r["standard_bound"],
                r["fast_bound"],
            ]
        )
    header = ["seq", "standard", "fast", "speedup", "std mem", "fast mem", "std bound", "fast bound"]
    print(table(body, header))
    if result.system is not None:
        _print_tiling(result)
    if not all(result.standard_fits):
        print(
            "(OOM: standard attention's score tensors exceed device memory; its time is "
            "what it would take with enough memory)"
        )


def _print_tiling(result: AttentionResult) -> None:
    print(
        f"\ntiling-AllReduce on {result.system} (TP {result.tp}; attention + W_o, "
        "all-reduce per sequence block overlapped with the next block)"
    )
    body = [
        [
            r["seq"],
            r["blocks"],
            fmt_si(r["serial_time_s"], "s"),
            fmt_si(r["tiled_time_s"], "s"),
            fmt_si(r["blocks_no_overlap_time_s"], "s"),
            f"{r['speedup']:.2f}x",
            fmt_si(r["compute_s"], "s"),
            fmt_si(r["comm_s"], "s"),
            fmt_si(r["exposed_comm_s"], "s"),
        ]
        for r in result.tiling_allreduce
    ]
    header = [
        "seq",
        "blocks",
        "one block",
        "tiled",
        "no overlap",
        "speedup",
        "compute",
        "comm",
        "exposed comm",
    ]
    print(table(body, header))


def plot(result: AttentionResult, path: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    seqs = [r["seq"] for r in rows]
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(10, 4))
    ax_t.loglog(seqs, [r["standard_time_s"] for r in rows], "o-", label="standard")
    ax_t.loglog(seqs, [r["fast_time_s"] for r in rows], "s-", label="FastAttention (blockwise)")
    oom = [r for r in rows if not r["standard_fits"]]
    if oom:
        ax_t.loglog(
            [r["seq"] for r in oom],
            [r["standard_time_s"] for r in oom],
            "x",
            color="red",
            markersize=10,
            label="standard: does not fit",
        )
    ax_t.set_xlabel("sequence length")
    ax_t.set_ylabel("time (s)")
    ax_t.legend()
    ax_t.grid(True, which="both", alpha=0.3)
    ax_s.semilogx(seqs, [r["speedup"] for r in rows], "o-")
    ax_s.set_xlabel("sequence length")
    ax_s.set_ylabel("speedup (standard / fast)")
    ax_s.grid(True, which="both", alpha=0.3)
    causal = ", causal" if result.causal else ""
    fig.suptitle(
        f"{result.device}: B={result.batch} H={result.heads} "
        f"d={result.head_dim} {result.dtype}{causal}"
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=120)  # atomic: temp file, then rename
    plt.close(fig)
    return out
