"""``xpusim whatif SAVED.toml --vary FIELD=V1,V2``: hardware/model sensitivity of a saved command."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tqdm import tqdm
from xpusim.sim.report import (
    check_output_args,
    emit_json,
    table,
    write_csv,
)
from xpusim.sim.studies import plots
from xpusim.sim.studies.whatif import load_saved, parse_vary, run_whatif


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("whatif", help="what-if hardware study: elasticity of a saved command")
    p.add_argument("saved", help="saved command TOML (command = 'train' | 'ep' | 'infer' | 'sd' + [args])")
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="FIELD=V1,V2,...",
        help="e.g. device.hbm_bandwidth=0.5x,1x,2x; system.inter_node_bandwidth=..., "
        "model.hidden=...; repeatable",
    )
    p.add_argument(
        "--metric",
        help="result field to study (train: tokens_per_s, mfu, step_time_s; ep: total_time_s; "
        "infer: tokens_per_s, time_s; sd: peak_speedup, peak_target_efficiency, peak_batch)",
    )
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--address", help="Ray cluster address (auto or HOST:PORT)")
    p.add_argument("--plot", help="tornado plot path (default out/whatif/<name>_tornado.png)")
    p.add_argument("--csv", help="write every evaluated point as CSV")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_args(args)
    saved = load_saved(args.saved)
    texts = args.vary or list(saved.vary)
    variations = [parse_vary(t) for t in texts]
    total = 1 + sum(len(v.values) for v in variations)
    bar = tqdm(total=total, desc="what-if points", file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        result = run_whatif(
            saved,
            variations,
            args.metric,
            args.executor,
            args.jobs,
            args.address,
            on_result=lambda i, r: bar.update(1),
        )
    finally:
        bar.close()
    name = Path(args.saved).stem
    plot = Path(args.plot) if args.plot else Path("out") / "whatif" / f"{name}_tornado.png"
    ok = [s for s in result.sensitivity if not math.isnan(s["elasticity"])]
    files = {}
    if ok:
        files["tornado"] = str(plots.tornado(ok, result.metric, result.base_metric, plot))
    if args.csv:
        files["csv"] = str(write_csv(args.csv, result.points))
    if args.json:
        emit_json({**result.as_dict(), "files": files})
        return 0
    m = result.metric
    base = result.base_metric
    shown = f"{base:,.0f}" if abs(base) >= 1e4 else f"{base:.4g}"
    print(f"{result.command} {name}: base {m} = {shown}")
    rows = [
        [
            s["field"],
            f"{s['elasticity']:+.3f}",
            f"{s['low_label']} -> {s['low_metric']:.4g}",
            f"{s['high_label']} -> {s['high_metric']:.4g}",
            s["errors"],
        ]
        for s in result.sensitivity
    ]
    print(
        table(rows, ["field", f"elasticity d ln({m})/d ln(field)", "lowest", "highest", "errors"])
    )
    for p in result.points:
        if p["error"]:
            print(f"  {p['field']}={p['value']}: {p['error']}")
    for path in files.values():
        print(f"wrote {path}")
    return 0
