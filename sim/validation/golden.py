"""The regression gate: the committed per-category error table of the published corpus.

A category's median |error| on check rows may not worsen by more than
``TOLERANCE`` (2 points), nor may the median |ratio error| of a pair of settings (two
devices, dtypes, implementations or engines; for the plan and scale axes all of a
category's pairs, ``ratios.GROUP_LABELS``) with at least ``MIN_RATIO_PAIRS`` cells timed
with both (the what-if skill, ``ratios.py``), and a row the
simulator expressed may not become unsupported. Improvements rewrite the file in the same
commit:

    python -m xpusim.sim.validation.golden tests/golden/validation_published.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from xpusim.sim.validation.corpus import Row, load_corpus
from xpusim.sim.validation.ratios import summarize_pairs, what_if_pairs
from xpusim.sim.validation.runner import RowResult, run_rows
from xpusim.sim.validation.summary import summarize
from xpusim.sim.validation.track_record import build, write_table

TOLERANCE = 0.02
MIN_RATIO_PAIRS = 10  # device pairs with fewer cells are too thin to gate on


def ratio_errors(rows: list[Row], results: list[RowResult]) -> dict[str, float]:
    """``axis:category:second/first`` -> median |ratio error|, for pairs of settings with at
    least ``MIN_RATIO_PAIRS`` cells."""
    return {f"{g['axis']}:{g['category']}:{g['second']}/{g['first']}": g["median_abs_error"]
            for g in summarize_pairs(what_if_pairs(rows, results))
            if g["pairs"] >= MIN_RATIO_PAIRS}


def golden_record(results: list[RowResult], rows: list[Row] | None = None) -> dict[str, Any]:
    summary = summarize(results)
    record: dict[str, Any] = {
        "tolerance": TOLERANCE,
        "categories": {
            c: {k: s[k] for k in ("n", "unsupported", "median_abs_error", "p90_abs_error",
                                  "bias", "baseline_median_abs_error")}
            for c, s in summary.items()
        },
        "supported": sorted(r.id for r in results if not r.unsupported),
    }
    if rows is not None:
        record["what_if_ratios"] = ratio_errors(rows, results)
    return record


def regressions(results: list[RowResult], golden: dict[str, Any],
                rows: list[Row] | None = None) -> list[str]:
    """What got worse than the golden record: one message per category, device pair or row
    (device pairs only when ``rows`` is given)."""
    now = golden_record(results, rows)
    problems = []
    for category, before in golden["categories"].items():
        after = now["categories"].get(category)
        if after is None:
            problems.append(f"{category}: category disappeared")
            continue
        b, a = before["median_abs_error"], after["median_abs_error"]
        if b is not None and (a is None or a > b + TOLERANCE):
            problems.append(f"{category}: median |error| {b:.1%} -> "
                            f"{'none' if a is None else f'{a:.1%}'} (tolerance {TOLERANCE:.0%})")
    for pair, b in golden.get("what_if_ratios", {}).items() if rows is not None else ():
        a = now["what_if_ratios"].get(pair)
        if a is not None and a > b + TOLERANCE:
            problems.append(f"{pair}: median |ratio error| {b:.1%} -> {a:.1%} "
                            f"(tolerance {TOLERANCE:.0%})")
    lost = sorted(set(golden["supported"]) - set(now["supported"]))
    if lost:
        problems.append("no longer supported: " + ", ".join(lost))
    return problems


def main(argv: list[str]) -> int:
    """``python -m xpusim.sim.validation.golden [PATH] [--check]``: run the corpus and write
    the gate's record to PATH and the commands' track record (``track_record.py``), or with ``--check`` compare it with PATH (exit 1 on a
    regression) without writing."""
    parser = argparse.ArgumentParser(prog="python -m xpusim.sim.validation.golden")
    parser.add_argument("path", nargs="?", default="tests/golden/validation_published.json")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    path = Path(args.path)
    rows = load_corpus()
    results = run_rows(rows, jobs=2)
    if args.check:
        problems = regressions(results, json.loads(path.read_text()), rows)
        print("\n".join(problems) if problems else f"no regression against {path}")
        return 1 if problems else 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(golden_record(results, rows), indent=2) + "\n")
    print(f"wrote {path}")
    # The track record the commands print is derived from the same run (track_record.py).
    print(f"wrote {write_table(build(rows, results))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
