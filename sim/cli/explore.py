"""``xpusim explore STUDY.toml``: hyperparameter design-space search (docs/explore.md).

Parse -> ``ExploreRequest`` -> ``xpusim.sim.api.explore`` -> render (the ranked table).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from xpusim.sim.api.base import request_from_args
from xpusim.sim.api.explore import ExploreRequest, ExploreResult, explore
from xpusim.sim.errors import InputError
from xpusim.sim.report import emit_json, fmt_bytes, fmt_si, table
from xpusim.sim.studies.executors import EXECUTORS
from xpusim.sim.studies.study_file import RANK_METRICS
from xpusim.sim.validation.track_record import describe_what_if


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explore", help="design-space search over model hyperparameters")
    p.add_argument("study", help="study TOML file (see examples/small_study.toml)")
    p.add_argument("--jobs", type=int, help="parallel workers (default 1)")
    p.add_argument("--executor", choices=EXECUTORS, help="local (default) or ray")
    p.add_argument(
        "--address", help="Ray cluster address (auto or HOST:PORT); default: start a local Ray"
    )
    p.add_argument("--out", help="output folder (default ./out/explore/<study name>)")
    p.add_argument("--rank-by", choices=RANK_METRICS, help="override search.rank_by")
    p.add_argument("--shortlist", type=int, help="override search.shortlist")
    p.add_argument("--top", type=int, default=15, help="rows of the printed table")
    p.add_argument("--no-cache", action="store_true", help="re-evaluate every point")
    p.add_argument("--no-plots", action="store_true", help="write the tables only, no PNGs")
    p.add_argument("--json", action="store_true", help="print the ranked result as JSON")
    p.set_defaults(func=run)


def _table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        if r.get("error"):
            body.append(
                [
                    r["rank"],
                    r["name"],
                    f"{r['total_params'] / 1e9:.0f}B",
                    f"{r['activated_params'] / 1e9:.1f}B",
                    "-",
                    "error: " + r["error"][:60],
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        body.append(
            [
                r["rank"],
                r["name"],
                f"{r['total_params'] / 1e9:.0f}B",
                f"{r['activated_params'] / 1e9:.1f}B",
                r["plan"],
                fmt_si(r["tokens_per_s"], "tok/s"),
                f"{r['mfu']:.1%}",
                fmt_si(r["step_time_s"], "s"),
                fmt_bytes(r["memory_per_device_bytes"]),
                f"{r['bubble_fraction']:.0%}",
            ]
        )
    return table(
        body,
        [
            "#",
            "model",
            "total",
            "active",
            "best plan",
            "throughput",
            "MFU",
            "step",
            "mem/dev",
            "bubble",
        ],
    )


def run(args: argparse.Namespace) -> int:
    if args.top < 1:  # a negative slice would silently drop the last rows instead
        raise InputError(f"--top must be >= 1 (rows of the printed table), got {args.top}")
    # The bar counts simulated models on stderr (also under --json, as before).
    result = explore(replace(request_from_args(ExploreRequest, args), progress=True))
    record = result.ranking_record()
    if args.json:
        emit_json(result.as_dict())
        return 0
    _print(result, args.top)
    if record:
        print(f"ranking: {describe_what_if(record['plan_pairs'])}. "
              + (f"Candidates {', '.join(map(str, record['within']))} are within "
                 f"{record['plan_pairs']['median_abs_error']:.1%} of #1: the record does not "
                 "separate them." if len(record["within"]) > 1 else
                 "No other candidate is that close to #1."))
    return 0


def _print(result: ExploreResult, top: int) -> None:
    search = result.search
    sm = search.summary
    print(
        f"study {result.study}: {sm.enumerated} points, {sm.constraints} fail constraints, "
        f"{sm.budget} outside the parameter budgets, {sm.kept} candidates; "
        f"{search.as_dict()['analytical_fit']} pass the memory bound; "
        f"{len(result.ranked)} simulated ({search.cached} from cache) on "
        f"{search.system.num_devices} x {search.system.device.name}"
    )
    print(_table(result.ranked[:top]))
    print(
        f"ranked by {result.rank_by}; {search.timings_s['total_s']:.1f} s "
        f"(analytical {search.timings_s['analytical_s']:.1f} s, "
        f"simulation {search.timings_s['simulate_s']:.1f} s)"
    )
    for name, path in result.files.items():
        print(f"{name}: {path}")
