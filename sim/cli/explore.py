"""``xpusim explore STUDY.toml``: hyperparameter design-space search (docs/explore.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm
from xpusim.sim.errors import InputError
from xpusim.sim.report import emit_json, fmt_bytes, fmt_si, table, write_csv
from xpusim.sim.studies import plots
from xpusim.sim.studies.search import StudyResult, run_study
from xpusim.sim.studies.study_file import RANK_METRICS, load_study


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explore", help="design-space search over model hyperparameters")
    p.add_argument("study", help="study TOML file (see examples/small_study.toml)")
    p.add_argument("--jobs", type=int, default=1, help="parallel workers (default 1)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument(
        "--address", help="Ray cluster address (auto or HOST:PORT); default: start a local Ray"
    )
    p.add_argument("--out", help="output folder (default ./out/explore/<study name>)")
    p.add_argument("--rank-by", choices=RANK_METRICS, help="override search.rank_by")
    p.add_argument("--shortlist", type=int, help="override search.shortlist")
    p.add_argument("--top", type=int, default=15, help="rows of the printed table")
    p.add_argument("--no-cache", action="store_true", help="re-evaluate every point")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--json", action="store_true", help="print the ranked result as JSON")
    p.set_defaults(func=run)


def _progress_bar(total: int):
    bar = tqdm(
        total=total,
        desc="simulating shortlisted models",
        unit="model",
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )

    def tick() -> None:
        bar.update(1)
        if bar.n >= bar.total:
            bar.close()

    if total == 0:
        bar.close()
    return tick


def write_outputs(result: StudyResult, out: Path, with_plots: bool) -> dict[str, str]:
    files = {"csv": str(write_csv(out / "points.csv", result.rows))}
    if with_plots and result.ranked:
        s = result.study
        files["throughput_vs_total"] = str(
            plots.throughput_vs_total(result.rows, out / "explore_throughput_vs_total.png")
        )
        files["pareto"] = str(
            plots.pareto_throughput_activated(result.ranked, out / "explore_pareto_activated.png")
        )
        files["heatmap"] = str(
            plots.heatmap(
                result.ranked,
                s.plots.heatmap_x,
                s.plots.heatmap_y,
                s.search.rank_by,
                out / f"explore_heatmap_{s.plots.heatmap_x}_{s.plots.heatmap_y}.png",
            )
        )
    return files


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
    study = load_study(args.study)
    search = study.search
    if args.rank_by:
        search = search.model_copy(update={"rank_by": args.rank_by})
    if args.shortlist is not None:
        if args.shortlist < 1:
            raise InputError(f"--shortlist must be >= 1, got {args.shortlist}")
        search = search.model_copy(update={"shortlist": args.shortlist})
    study = study.model_copy(update={"search": search})
    out = Path(args.out) if args.out else Path("out") / "explore" / study.name
    if out.exists() and not out.is_dir():
        raise InputError(
            f"--out {out}: is a file; --out names a folder for points.csv, the plots and the "
            "cache (give a new or existing folder)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent is a file, or no permission
        raise InputError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    result = run_study(
        study,
        executor=args.executor,
        jobs=args.jobs,
        address=args.address,
        cache_dir=None if args.no_cache else out / "cache",
        progress=_progress_bar,
    )
    files = write_outputs(result, out, not args.no_plots)
    if args.json:
        emit_json({**result.as_dict(), "files": files})
        return 0
    sm = result.summary
    print(
        f"study {study.name}: {sm.enumerated} points, {sm.constraints} fail constraints, "
        f"{sm.budget} outside the parameter budgets, {sm.kept} candidates; "
        f"{result.as_dict()['analytical_fit']} pass the memory bound; "
        f"{len(result.ranked)} simulated ({result.cached} from cache) on "
        f"{result.system.num_devices} x {result.system.device.name}"
    )
    print(_table(result.ranked[: args.top]))
    print(
        f"ranked by {study.search.rank_by}; {result.timings_s['total_s']:.1f} s "
        f"(analytical {result.timings_s['analytical_s']:.1f} s, "
        f"simulation {result.timings_s['simulate_s']:.1f} s)"
    )
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0
