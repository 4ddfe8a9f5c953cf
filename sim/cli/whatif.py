"""``xpusim whatif SAVED.toml --vary FIELD=V1,V2``: hardware/model sensitivity of a saved command.

Parse -> ``WhatIfRequest`` -> ``xpusim.sim.api.whatif`` -> render (the elasticity table).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from xpusim.sim.api.base import request_from_args
from xpusim.sim.api.whatif import WhatIfRequest, WhatIfResult, whatif
from xpusim.sim.report import emit_json, table
from xpusim.sim.studies.executors import EXECUTORS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("whatif", help="what-if hardware study: elasticity of a saved command")
    p.add_argument("saved", help="saved command TOML (command = 'train' | 'ep' | 'infer' | 'sd' + [args])")
    p.add_argument(
        "--vary",
        action="append",
        metavar="FIELD=V1,V2,...",
        help="e.g. device.hbm_bandwidth=0.5x,1x,2x; system.inter_node_bandwidth=..., "
        "model.hidden=...; repeatable (default: the file's whatif.vary)",
    )
    p.add_argument(
        "--metric",
        help="result field to study (train: tokens_per_s, mfu, step_time_s; ep: total_time_s; "
        "infer: tokens_per_s, time_s; sd: peak_speedup, peak_target_efficiency, peak_batch)",
    )
    p.add_argument("--jobs", type=int, help="parallel workers (default 1)")
    p.add_argument("--executor", choices=EXECUTORS, help="local (default) or ray")
    p.add_argument("--address", help="Ray cluster address (auto or HOST:PORT)")
    p.add_argument("--plot", help="tornado plot path (default out/whatif/<name>_tornado.png)")
    p.add_argument("--csv", help="write every evaluated point as CSV")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    request = request_from_args(WhatIfRequest, args)
    if args.vary:
        request = replace(request, vary=tuple(args.vary))
    result = whatif(replace(request, progress=True))  # the bar is on stderr, also under --json
    if args.json:
        emit_json(result.as_dict())
        return 0
    _print(result, Path(args.saved).stem)
    return 0


def _print(result: WhatIfResult, name: str) -> None:
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
    for path in result.files.values():
        print(f"wrote {path}")
