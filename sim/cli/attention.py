"""``xpusim attention``: blockwise (FastAttention) versus standard attention by sequence length.

Prints per sequence length the predicted time of both kernels, the speedup, the
memory each needs, what bounds each, and whether standard attention's S x S
tensors fit in device memory (docs/attention.md explains the model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xpusim.hwprofiles import load_device, load_system
from xpusim.sim.attention_model import compare, tiling_allreduce_cost
from xpusim.sim.errors import InputError
from xpusim.sim.limits import MAX_SEQ, check_int
from xpusim.sim.report import (
    check_output_args,
    emit_json,
    fmt_bytes,
    fmt_si,
    save_figure,
    table,
    write_csv,
)
from xpusim.sim.units import parse_int_list

KERNEL_DTYPES = ("fp16", "bf16", "fp32")  # what kernels/attention.py runs
MAX_SEQ_POINTS = 1000  # rows of one study


def parse_seq_list(text: str) -> list[int]:
    """'1024,2048,4096' or a geometric range '1024,2048,...,65536' (ratio of the first two)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if "..." not in parts:
        values = parse_int_list(text, "--seq")
    else:
        if len(parts) != 4 or parts[2] != "...":
            raise InputError(
                "--seq: a range is written FIRST,SECOND,...,LAST, e.g. 1024,2048,...,65536"
            )
        first, second, last = (
            parse_int_list(p, "--seq")[0] for p in (parts[0], parts[1], parts[3])
        )
        if not 0 < first < second <= last or second % first:
            raise InputError(
                "--seq: range needs 0 < FIRST < SECOND <= LAST with SECOND a multiple "
                "of FIRST, e.g. 1024,2048,...,65536"
            )
        ratio = second // first
        values = [first]
        while values[-1] * ratio <= last:
            values.append(values[-1] * ratio)
    if min(values) < 1:
        raise InputError(f"--seq: every length must be >= 1, got {min(values)}")
    for v in values:  # sim.limits: a length above 2^24 tokens would run for minutes
        check_int(v, "--seq", 1, MAX_SEQ)
    if len(values) > MAX_SEQ_POINTS:
        raise InputError(f"--seq: {len(values)} lengths, more than {MAX_SEQ_POINTS}; pass fewer")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attention", help="FastAttention vs standard attention by sequence length")
    p.add_argument("--device", default="ascend-910b2", help="device name or profile path")
    p.add_argument("--calibration", help="calibration overlay TOML")
    p.add_argument(
        "--seq",
        default="1024,2048,...,65536",
        help="sequence lengths: a list or FIRST,SECOND,...,LAST (default %(default)s)",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--dtype", default="fp16", help="fp16, bf16 or fp32 (default %(default)s)")
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
        default=1,
        help="also simulate tiling-AllReduce: TP attention + W_o over this many devices",
    )
    p.add_argument("--system", default="atlas-800t-a2", help="system profile for --tp")
    p.add_argument("--blocks", default="1,2,4,8,16", help="sequence blocks for --tp")
    p.add_argument("--plot", help="write a PNG/SVG of times and speedup vs seq to this path")
    p.add_argument("--csv", help="write the rows as CSV to this path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def study(args: argparse.Namespace) -> dict:
    """The study as plain data (the Python API of the command)."""
    for name in ("batch", "heads", "head_dim"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")
    if args.dtype not in KERNEL_DTYPES:
        raise InputError(
            f"--dtype {args.dtype}: the attention kernels run {', '.join(KERNEL_DTYPES)}"
        )
    if args.sync_us is not None and args.sync_us < 0:
        raise InputError("--sync-us must be >= 0")
    device = load_device(args.device, calibration=args.calibration)
    if args.tp < 1:
        raise InputError("--tp must be >= 1")
    sync_s = None if args.sync_us is None else args.sync_us * 1e-6
    seqs = parse_seq_list(args.seq)
    rows = [
        compare(
            device,
            args.batch,
            args.heads,
            s,
            args.head_dim,
            args.causal,
            args.dtype,
            args.outer_block,
            sync_s,
        )
        for s in seqs
    ]
    result = {
        "device": device.name,
        "batch": args.batch,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "causal": args.causal,
        "dtype": args.dtype,
        "rows": rows,
    }
    if args.tp > 1:
        system = load_system(args.system)
        result["system"] = system.name
        result["tiling_allreduce"] = [
            tiling_allreduce_cost(
                system,
                args.batch,
                args.heads,
                s,
                args.head_dim,
                args.tp,
                n,
                args.causal,
                args.dtype,
            )
            for s in seqs
            for n in parse_int_list(args.blocks, "--blocks")
        ]
    return result


def run(args: argparse.Namespace) -> int:
    check_output_args(args)
    result = study(args)
    rows = result["rows"]
    if args.csv:
        flat = [{k: v for k, v in r.items() if not isinstance(v, dict)} for r in rows]
        write_csv(args.csv, flat)
    if args.plot:
        plot(result, args.plot)
    written = [p for p in (args.csv, args.plot) if p]
    if args.json:
        emit_json({**result, "files": written})
        return 0
    for path in written:
        print(f"wrote {path}")
    print(
        f"attention on {result['device']}: batch {args.batch}, {args.heads} heads, "
        f"head_dim {args.head_dim}, {args.dtype}{', causal' if args.causal else ''}"
    )
    body = []
    for r in rows:
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
    print(
        table(
            body,
            [
                "seq",
                "standard",
                "fast",
                "speedup",
                "std mem",
                "fast mem",
                "std bound",
                "fast bound",
            ],
        )
    )
    if "tiling_allreduce" in result:
        print(
            f"\ntiling-AllReduce on {result['system']} (TP {args.tp}; attention + W_o, "
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
            for r in result["tiling_allreduce"]
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
    if not all(r["standard_fits"] for r in rows):
        print(
            "(OOM: standard attention's score tensors exceed device memory; its time is "
            "what it would take with enough memory)"
        )
    return 0


def plot(result: dict, path: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
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
    causal = ", causal" if result["causal"] else ""
    fig.suptitle(
        f"{result['device']}: B={result['batch']} H={result['heads']} "
        f"d={result['head_dim']} {result['dtype']}{causal}"
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=120)  # atomic: temp file, then rename
    plt.close(fig)
    return out
