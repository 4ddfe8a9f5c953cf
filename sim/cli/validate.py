"""``xpusim validate``: prediction error against published measurements (``--published``),
or on the held-out shapes of a local calibration (``--calibration FILE``).

Parse -> ``ValidateRequest`` -> ``xpusim.sim.api.validate`` -> render. The local mode
writes ``validation.json``, ``validation.csv`` (every point) and ``validation.png``
(predicted vs measured) under ``--out``; ``--check`` exits 1 when a checked kernel's
calibrated median or p90 error is above the threshold. torch is imported only when
measuring.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from xpusim.sim.api.base import request_from_args
from xpusim.sim.api.validate import DEVICES, ValidateRequest, ValidateResult, validate
from xpusim.sim.report import emit_json, table


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
    g.add_argument("--jobs", type=int, help="worker processes (default 1)")
    g.add_argument("--csv", help="write one line per row to this CSV file")
    g.add_argument("--plot", help="write the predicted-vs-measured scatter (PNG/SVG)")
    p.add_argument(
        "--device",
        choices=DEVICES,
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
    p.add_argument("--out", help="folder for JSON, CSV and plot (default out/validate)")
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
        help="suites the check applies to (default fastattention,moe,cdc)",
    )
    p.add_argument(
        "--max-median-error", type=float, help="check threshold (default 0.10)"
    )
    p.add_argument("--max-p90-error", type=float, help="check threshold (default 0.25)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    request = request_from_args(ValidateRequest, args)
    # A bar only on a terminal, never under --json.
    request = replace(request, progress=not args.json and sys.stderr.isatty())
    result = validate(request)
    if args.json:
        emit_json(result.as_dict())
    elif result.mode == "published":
        _print_published(result)
    else:
        _print(result.payload)
    return 1 if (request.check and not result.passed) else 0


def _family_cells(s: dict, family: str) -> list[str]:
    """'n: median / p90' of the calibrated errors of one shape family, or '-'."""
    if family not in s:
        return ["-"]
    c = s[family]["calibrated"]
    return [f"{s[family]['n']}: {c['median_abs_error']:.1%} / {c['p90_abs_error']:.1%}"]


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
                *_family_cells(s, "in_range"),
                *_family_cells(s, "out_of_range"),
                f"{u['median_abs_error']:.1%}",
                f"{u['p90_abs_error']:.1%}",
                s["noisy"],
            ]
        )
    head = ["suite", "n", "cal median", "cal p90", "in-range n: med / p90"]
    head += ["out-of-range n: med / p90", "uncal median", "uncal p90", "noisy"]
    print(table(rows, head))
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


def _print_published(result: ValidateResult) -> None:
    from xpusim.sim.validation import report

    report.print_rows(result.rows)
    print()
    report.print_summary(result.summary)
    print()
    report.print_what_if_ratios(result.payload.get("what_if_ratios", []))
    for path in result.files:
        print(f"wrote {path}")
