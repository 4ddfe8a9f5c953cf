"""Regenerate the numbers in docs/validation.md and its plot from a validation run.

    python -m xpusim.sim.validation.docs            # rewrites the GENERATED block and docs/img/validation.png

Only the block between the markers is rewritten; the prose around it (what each
miss lacks) is written by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

from xpusim.sim.validation.corpus import Row, load_corpus
from xpusim.sim.validation.plot import scatter
from xpusim.sim.validation.ratios import summarize_pairs, what_if_pairs
from xpusim.sim.validation.runner import RowResult, run_rows
from xpusim.sim.validation.summary import summarize

BEGIN = "<!-- BEGIN GENERATED: python -m xpusim.sim.validation.docs -->"
END = "<!-- END GENERATED -->"


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.1%}" if signed else f"{v:.1%}"


def summary_table(results: list[RowResult]) -> str:
    lines = [
        "| category | check rows | fit rows | unsupported | median \\|err\\| | p90 | max | bias "
        "| naive median | naive bias |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for category, s in summarize(results).items():
        lines.append(
            f"| {category} | {s['n']} | {s['fit_rows']} | {s['unsupported']} | "
            f"{_pct(s['median_abs_error'])} | {_pct(s['p90_abs_error'])} | "
            f"{_pct(s['max_abs_error'])} | {_pct(s['bias'], True)} | "
            f"{_pct(s['baseline_median_abs_error'])} | {_pct(s['baseline_bias'], True)} |"
        )
    return "\n".join(lines)


def largest_misses(results: list[RowResult], n: int = 10) -> str:
    check = [(r, r.error) for r in results if r.role == "check" and r.error is not None]
    worst = sorted(check, key=lambda pair: -abs(pair[1]))[:n]
    lines = ["| row | category | measured | predicted | error |", "|---|---|---|---|---|"]
    for r, error in worst:
        lines.append(f"| {r.id} | {r.category} | {r.measured:.4g} {r.unit} | "
                     f"{r.predicted:.4g} {r.unit} | {_pct(error, True)} |")
    return "\n".join(lines)


def unsupported_reasons(results: list[RowResult]) -> str:
    counts: dict[tuple[str, str], int] = {}
    for r in results:
        if r.unsupported:
            key = (r.category, r.unsupported[:110])
            counts[key] = counts.get(key, 0) + 1
    lines = ["| category | rows | why |", "|---|---|---|"]
    for (category, why), count in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1])):
        lines.append(f"| {category} | {count} | {why.replace('|', '/')} |")
    return "\n".join(lines)


def what_if_table(rows: list[Row], results: list[RowResult], min_pairs: int = 3) -> str:
    """Pairs of settings with at least ``min_pairs`` cells timed with both
    (sim/validation/ratios.py)."""
    lines = ["| what-if | category | settings | pairs | measured ratio | predicted ratio "
             "| median \\|ratio err\\| | ratio bias | same order |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in summarize_pairs(what_if_pairs(rows, results)):
        if g["pairs"] >= min_pairs:
            lines.append(f"| {g['axis']} | {g['category']} | {g['second']} / {g['first']} | "
                         f"{g['pairs']} | "
                         f"{g['median_measured_ratio']:.2f}x | {g['median_predicted_ratio']:.2f}x | "
                         f"{_pct(g['median_abs_error'])} | {_pct(g['bias'], True)} | "
                         f"{_pct(g['same_order'])} |")
    return "\n".join(lines)


def generated_block(results: list[RowResult], rows: list[Row] | None = None) -> str:
    supported = sum(1 for r in results if not r.unsupported)
    ratios = [] if rows is None else [
        "**What-if ratios** (the same cell timed with two settings of one input: hardware, "
        "dtype, implementation, engine, a training run's parallel plan (slower / faster "
        "measured) or its device count (fewer / more); speed of the first-named over the "
        "second; ratio error = predicted / measured ratio - 1, positive = the simulator "
        "overstates the first-named setting's advantage; same order = the share of pairs the "
        "simulator ranks as measured; pairs of settings with >= 3 cells):",
        what_if_table(rows, results),
    ]
    return "\n\n".join([
        BEGIN,
        f"{len(results)} rows, {supported} expressible ({supported / len(results):.0%}); "
        "errors on check rows only, positive = the simulator predicts a faster run.",
        summary_table(results),
        "**The ten largest misses** (check rows):",
        largest_misses(results),
        *ratios,
        "**Rows the simulator cannot express yet**, by reason:",
        unsupported_reasons(results),
        END,
    ])


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(".")
    doc = root / "docs" / "validation.md"
    rows = load_corpus()
    results = run_rows(rows, jobs=2)
    text = doc.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    doc.write_text(text[:start] + generated_block(results, rows) + text[end:])
    scatter(results, root / "docs" / "img" / "validation.png",
            "xpusim vs published measurements (all categories)")
    print(f"wrote {doc} and docs/img/validation.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
