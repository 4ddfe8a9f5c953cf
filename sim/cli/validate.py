"""``xpusim validate --device cpu --calibration FILE``: measure the held-out cases, predict
them with the calibrated and the uncalibrated profile, report the errors.

Writes ``validation.json``, ``validation.csv`` (every point) and ``validation.png``
(predicted vs measured) under ``--out``; ``--check`` exits 1 when a checked kernel's
calibrated median or p90 error is above the threshold. torch is imported only when
measuring.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xpusim.sim.errors import InputError
from xpusim.sim.report import check_output_file, check_plot_path, emit_json, table, write_csv


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="prediction error: against published measurements (--published), or on the "
        "held-out shapes of a local calibration",
    )
    g = p.add_argument_group("published measurements (--published)")
    g.add_argument(
        "--published",
        action="store_true",
        help="score every row of the validation corpus (sim/data/validation) through the "
        "command that predicts it",
    )
    g.add_argument("--category", help="comma-separated categories (default: all)")
    g.add_argument("--rows", help="comma-separated row ids (default: all)")
    g.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    g.add_argument("--csv", help="write one line per row to this CSV file")
    g.add_argument("--plot", help="write the predicted-vs-measured scatter (PNG/SVG)")
    p.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda", "npu"),
        help="local device to measure on (default cpu)",
    )
    p.add_argument("--calibration", help="overlay TOML from 'xpusim calibrate' (local mode)")
    p.add_argument(
        "--measurements",
        metavar="CSV",
        help="use the held-out rows of this measurements CSV instead of timing",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: the calibration's)")
    p.add_argument("--suites", help="comma-separated suites (default: the calibration's)")
    p.add_argument("--out", default="out/validate", help="folder for JSON, CSV and plot")
    p.add_argument(
        "--compare",
        metavar="OVERLAY",
        help="a second calibration: report how far its predictions are from the first's",
    )
    p.add_argument(
        "--check", action="store_true", help="exit 1 if a checked kernel misses the thresholds"
    )
    p.add_argument(
        "--check-suites",
        default="fastattention,moe,cdc",
        help="suites the check applies to (default fastattention,moe,cdc)",
    )
    p.add_argument("--max-median-error", type=float, default=0.10)
    p.add_argument("--max-p90-error", type=float, default=0.25)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.published:
        return run_published(args)
    if not args.calibration:
        raise InputError(
            "validate needs --calibration FILE (held-out shapes of a local calibration) "
            "or --published (the corpus of published measurements)"
        )
    from xpusim.calibrate import validate as v

    meta = v.read_overlay_meta(args.calibration)
    suites = [s.strip() for s in args.suites.split(",")] if args.suites else None
    local = None
    if args.measurements:
        from xpusim.calibrate.pipeline import read_measurements

        rows = read_measurements(args.measurements, "--measurements")
        measured = [m for m in rows if m.case.split == "heldout"]
        if suites:
            measured = [m for m in measured if m.case.suite in suites]
    else:
        from xpusim.calibrate.device import detect, require_torch

        require_torch(
            "'xpusim validate' (timing held-out kernels; '--measurements CSV' needs no torch)"
        )
        from xpusim.calibrate.harness import HarnessConfig
        from xpusim.calibrate.pipeline import measure_cases

        threads = args.threads or int(meta.get("threads") or 1)
        dev = detect(args.device, threads=threads)
        local = dev.as_dict()
        todo = v.heldout_cases(meta, suites)
        config = HarnessConfig.quick() if meta.get("mode") == "quick" else HarnessConfig()
        from tqdm import tqdm

        with tqdm(total=len(todo), desc="validate", unit="case", disable=args.json) as bar:
            measured = measure_cases(todo, dev, config, lambda c: bar.update(1))
    if not measured:
        raise InputError("no held-out cases to validate (check --suites / --measurements)")
    points = v.predict_points(measured, args.calibration)
    payload = v.report(points, meta, args.calibration, local)
    if args.compare:
        payload["repeatability"] = v.compare_calibrations(
            [p.case for p in points], args.calibration, args.compare
        )
    check_suites = [s.strip() for s in args.check_suites.split(",") if s.strip()]
    failures = v.check(payload["suites"], check_suites, args.max_median_error, args.max_p90_error)
    payload["check"] = {
        "suites": check_suites,
        "max_median_error": args.max_median_error,
        "max_p90_error": args.max_p90_error,
        "failures": failures,
        "passed": not failures,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(out / "validation.csv", [p.row() for p in points])
    png = v.scatter_plot(
        points,
        out / "validation.png",
        f"held-out: {meta.get('base_profile')} calibrated on "
        f"{meta.get('device_name', '?')} ({meta.get('mode')})",
    )
    payload["files"] = {
        "csv": str(csv_path),
        "plot": str(png),
        "json": str(out / "validation.json"),
    }
    with (out / "validation.json").open("w") as fh:
        emit_json(payload, fh)
    if args.json:
        emit_json(payload)
    else:
        _print(payload)
    return 1 if (args.check and failures) else 0


def _print(payload: dict) -> None:
    rows = []
    for suite, s in payload["suites"].items():
        c, u = s["calibrated"], s["uncalibrated"]
        rows.append(
            [
                suite,
                s["n"],
                f"{c['median_abs_error']:.1%}",
                f"{c['p90_abs_error']:.1%}",
                f"{u['median_abs_error']:.1%}",
                f"{u['p90_abs_error']:.1%}",
                s["noisy"],
            ]
        )
    print(
        table(rows, ["suite", "n", "cal median", "cal p90", "uncal median", "uncal p90", "noisy"])
    )
    if "repeatability" in payload:
        r = payload["repeatability"]
        print(
            f"repeatability vs --compare: median {r['median_rel_diff']:.1%}, "
            f"max {r['max_rel_diff']:.1%} over {r['cases']} cases"
        )
    chk = payload["check"]
    status = "PASS" if chk["passed"] else "FAIL: " + "; ".join(chk["failures"])
    print(
        f"check ({', '.join(chk['suites'])}: median <= {chk['max_median_error']:.0%}, "
        f"p90 <= {chk['max_p90_error']:.0%}): {status}"
    )
    print("wrote " + ", ".join(payload["files"].values()))


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def run_published(args: argparse.Namespace) -> int:
    from xpusim.sim.validation import report

    if args.plot:
        check_plot_path(args.plot)
    if args.csv:
        check_output_file(args.csv, "--csv")
    if args.jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {args.jobs}")
    rows = report.select_rows(_split(args.category), _split(args.rows))
    progress = not args.json and sys.stderr.isatty()
    payload = report.published_payload(rows, args.jobs, progress)
    results = payload.pop("_results")
    written = []
    if args.csv:
        written.append(str(write_csv(args.csv, [r.as_dict() for r in results])))
    if args.plot:
        from xpusim.sim.validation.plot import scatter

        title = "xpusim vs published measurements" + (
            f" ({args.category})" if args.category else ""
        )
        written.append(str(scatter(results, args.plot, title)))
    if args.json:
        emit_json({**payload, "files": written})
        return 0
    report.print_rows(results)
    print()
    report.print_summary(payload["summary"])
    for path in written:
        print(f"wrote {path}")
    return 0
