"""``xpusim bench``: the project's performance figures, each with its unit and target.

Each figure is measured by a function next to the code it measures; figures whose
subsystem is missing are reported as unavailable rather than skipped silently.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable

from sim.bench.engine_bench import bench_engine
from sim.report import emit_json, table


def _engine() -> dict:
    r = bench_engine()
    return {"value": r["ops_per_s"], "unit": "simulated ops/s (one core)",
            "target": ">= 250,000", "ok": r["ops_per_s"] >= 250_000,
            "detail": f"{r['tasks']:.0f} tasks in {r['wall_s']:.2f} s"}


def _wall(module: str, func: str, target_s: float, unit: str) -> Callable[[], dict]:
    def run() -> dict:
        fn = getattr(importlib.import_module(module), func)
        start = time.perf_counter()
        out = fn()
        wall = out if isinstance(out, float) else time.perf_counter() - start
        return {"value": wall, "unit": unit, "target": f"< {target_s:g} s", "ok": wall < target_s,
                "detail": ""}

    return run


FIGURES: dict[str, Callable[[], dict]] = {
    "engine": _engine,
    "collective_4096": _wall("sim.network.bench", "bench_collective_4096", 1.0,
                             "s wall to cost a 4,096-rank all-to-all"),
    "train_pangu_6144": _wall("sim.training.bench", "bench_train_pangu", 10.0,
                              "s wall for the 6,144-NPU Pangu Ultra MoE step"),
    "sd_sweep": _wall("sim.inference.bench", "bench_sd_sweep", 30.0,
                      "s wall for the 19-batch MoESD sweep"),
    "explore_study": _wall("sim.studies.bench", "bench_explore", 300.0,
                           "s wall for the ~1,000-candidate study with --jobs 2"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="the project's performance figures")
    p.add_argument("--only", action="append", choices=sorted(FIGURES),
                   help="run only this figure (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = {}
    for name in args.only or FIGURES:
        try:
            results[name] = FIGURES[name]()
        except (ImportError, AttributeError) as exc:
            results[name] = {"value": None, "unit": "", "target": "", "ok": None,
                             "detail": f"unavailable: {exc}"}
    if args.json:
        emit_json({"figures": results})
        return 0
    rows = []
    for name, r in results.items():
        value = "-" if r["value"] is None else f"{r['value']:,.3g}"
        status = {True: "ok", False: "MISSED", None: "n/a"}[r["ok"]]
        rows.append([name, value, r["unit"], r["target"], status, r["detail"]])
    print(table(rows, ["figure", "value", "unit", "target", "status", "detail"]))
    return 0
