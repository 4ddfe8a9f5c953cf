"""``xpusim bench``: the project's performance figures, each with its unit and target.

Each figure runs in a fresh process (sim.bench.figures) that reports its value, wall
and CPU seconds and peak resident memory; a figure that fails is reported as
unavailable rather than skipped silently. On a shared machine compare the CPU column:
wall time includes waiting for the cores.
"""

from __future__ import annotations

import argparse
import subprocess

from xpusim.sim.bench.figures import FIGURES, measure
from xpusim.sim.report import emit_json, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="the project's performance figures")
    p.add_argument("--only", action="append", choices=sorted(FIGURES),
                   help="run only this figure (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = {}
    for name in args.only or FIGURES:
        _, unit, target, ok = FIGURES[name]
        try:
            r = measure(name)
            results[name] = {"value": r["value"], "unit": unit, "target": target,
                             "ok": ok(r["value"]), "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                             "peak_mb": r["peak_mb"], "detail": r["detail"]}
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            results[name] = {"value": None, "unit": unit, "target": target, "ok": None,
                             "wall_s": None, "cpu_s": None, "peak_mb": None,
                             "detail": f"unavailable: {exc}"}
    if args.json:
        emit_json({"figures": results})
        return 0
    rows = []
    for name, r in results.items():
        value = "-" if r["value"] is None else f"{r['value']:,.3g}"
        status = {True: "ok", False: "MISSED", None: "n/a"}[r["ok"]]
        cpu = "-" if r["cpu_s"] is None else f"{r['cpu_s']:.2f}"
        peak = "-" if r["peak_mb"] is None else f"{r['peak_mb']:,.0f}"
        rows.append([name, value, r["unit"], r["target"], status, cpu, peak, r["detail"]])
    print(table(rows, ["figure", "value", "unit", "target", "status", "cpu s", "peak MB",
                       "detail"]))
    return 0
