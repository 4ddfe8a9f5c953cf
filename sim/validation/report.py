"""``xpusim validate --published``: run the corpus, print rows and the per-category table."""

from __future__ import annotations

from typing import Any

from xpusim.sim.errors import InputError
from xpusim.sim.report import fmt_si, table
from xpusim.sim.validation.corpus import CATEGORIES, Row, load_corpus
from xpusim.sim.validation.ratios import summarize_pairs, what_if_pairs
from xpusim.sim.validation.runner import RowResult, run_rows
from xpusim.sim.validation.summary import summarize


def select_rows(categories: list[str] | None, ids: list[str] | None) -> list[Row]:
    rows = load_corpus()
    if categories:
        unknown = [c for c in categories if c not in CATEGORIES]
        if unknown:
            raise InputError(
                f"--category {','.join(unknown)}: unknown; choose from {', '.join(CATEGORIES)}"
            )
        rows = [r for r in rows if r.category in categories]
    if ids:
        known = {r.id for r in rows}
        missing = [i for i in ids if i not in known]
        if missing:
            # A row of another category is in the corpus: say that, not "no such row".
            category = {r.id: r.category for r in load_corpus()}
            why = [f"{i} is in category {category[i]}, not --category {','.join(categories or [])}"
                   if i in category else f"{i} is no row id of the corpus" for i in missing]
            raise InputError(f"--rows {','.join(missing)}: {'; '.join(why)}")
        rows = [r for r in rows if r.id in ids]
    if not rows:
        raise InputError("no corpus rows selected")
    return rows


def published_payload(rows: list[Row], jobs: int, progress: bool = False) -> dict[str, Any]:
    results = run_rows(rows, jobs, progress)
    return {
        "rows": [r.as_dict() for r in results],
        "summary": summarize(results),
        "what_if_ratios": summarize_pairs(what_if_pairs(rows, results)),
        "_results": results,
    }


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1%}" if signed else f"{value:.1%}"


def _value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:.4g} {unit}"


def _clip(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def print_rows(results: list[RowResult]) -> None:
    rows = []
    for r in results:
        if r.unsupported:
            rows.append([r.id, r.category, r.role, _value(r.measured, r.unit), "-",
                         _clip(f"unsupported: {r.unsupported}"), ""])
            continue
        rows.append([r.id, r.category, r.role, _value(r.measured, r.unit),
                     _value(r.predicted, r.unit), _pct(r.error, True),
                     _pct(r.baseline_error, True)])
    print(table(rows, ["id", "category", "role", "measured", "predicted", "error",
                       "naive error"]))


def print_summary(summary: dict[str, dict[str, Any]]) -> None:
    rows = []
    for category, s in summary.items():
        rows.append([
            category, s["n"], s["fit_rows"], s["unsupported"],
            _pct(s["median_abs_error"]), _pct(s["p90_abs_error"]), _pct(s["max_abs_error"]),
            _pct(s["bias"], True), _pct(s["baseline_median_abs_error"]),
            _pct(s["baseline_bias"], True),
        ])
    print(table(rows, ["category", "check", "fit", "unsupported", "median |err|", "p90",
                       "max", "bias", "naive median", "naive bias"]))
    print("errors on check rows only; positive = the simulator predicts a faster run than "
          "measured")


def print_what_if_ratios(groups: list[dict[str, Any]], per_axis: int = 6) -> None:
    """The what-if ratio table (sim/validation/ratios.py): the ``per_axis`` best-covered
    pairs of settings of each axis."""
    shown: dict[str, int] = {}
    rows = []
    for g in groups:
        if shown.get(g["axis"], 0) < per_axis:
            shown[g["axis"]] = shown.get(g["axis"], 0) + 1
            rows.append([g["axis"], g["category"], f"{g['second']} / {g['first']}", g["pairs"],
                         f"{g['median_measured_ratio']:.2f}x",
                         f"{g['median_predicted_ratio']:.2f}x", _pct(g["median_abs_error"]),
                         _pct(g["bias"], True), _pct(g["same_order"])])
    if not rows:
        return
    print(table(rows, ["what-if", "category", "settings", "pairs", "measured ratio",
                       "predicted ratio", "median |ratio err|", "ratio bias", "same order"]))
    more = len(groups) - len(rows)
    print("the same cell timed with two settings of one input: speed ratio, positive = the "
          "simulator overstates the first-named setting's advantage; same order = pairs the "
          "simulator ranks as measured"
          + (f"; {more} more in --json (what_if_ratios)" if more else ""))


def slowest(results: list[RowResult], n: int = 3) -> str:
    top = sorted(results, key=lambda r: -r.wall_s)[:n]
    return ", ".join(f"{r.id} {fmt_si(r.wall_s, 's')}" for r in top)
