"""Render a validation JSON as the Markdown table of docs/calibration.md.

``python -m xpusim.calibrate.docs_table VALIDATION_JSON [DOC]`` prints the table, or replaces
the text between the ``validation-table`` markers in DOC.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

START, END = "<!-- validation-table:start -->", "<!-- validation-table:end -->"


def _family(s: dict, family: str) -> str:
    if family not in s:
        return "-"
    c = s[family]["calibrated"]
    return f"{s[family]['n']}: {c['median_abs_error']:.1%} / {c['p90_abs_error']:.1%}"


def markdown_table(report: dict) -> str:
    cal = report.get("calibrated_on", {})
    lines = [
        f"Calibrated on {cal.get('device_name')} ({cal.get('threads')} thread(s), torch "
        f"{cal.get('torch_version')}, {cal.get('mode')} mode, seed {cal.get('seed')}) at "
        f"{cal.get('date')}; validated at {report.get('date')} on {report.get('heldout_cases')} "
        "held-out cases.",
        "",
        "| suite | kind | held-out cases | calibrated median | calibrated p90 "
        "| in-range: n, median / p90 | out-of-range: n, median / p90 "
        "| uncalibrated median | uncalibrated p90 | noisy cases |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for suite, s in report["suites"].items():
        c, u = s["calibrated"], s["uncalibrated"]
        lines.append(
            f"| {suite} | {s['kind']} | {s['n']} | {c['median_abs_error']:.1%} | "
            f"{c['p90_abs_error']:.1%} | {_family(s, 'in_range')} | "
            f"{_family(s, 'out_of_range')} | {u['median_abs_error']:.1%} | "
            f"{u['p90_abs_error']:.1%} | {s['noisy']} |"
        )
    rep = report.get("repeatability")
    if rep:
        lines += [
            "",
            f"Repeatability (a second calibration right after the first): predictions "
            f"differ by median {rep['median_rel_diff']:.1%}, p90 {rep['p90_rel_diff']:.1%}, "
            f"max {rep['max_rel_diff']:.1%} over {rep['cases']} held-out cases.",
        ]
    chk = report.get("check")
    if chk:
        verdict = "pass" if chk["passed"] else "FAIL (" + "; ".join(chk["failures"]) + ")"
        lines += [
            "",
            f"Check ({', '.join(chk['suites'])}: median <= "
            f"{chk['max_median_error']:.0%}, p90 <= {chk['max_p90_error']:.0%}): {verdict}.",
        ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    report = json.loads(Path(argv[0]).read_text())
    text = markdown_table(report)
    if len(argv) < 2:
        print(text)
        return 0
    doc = Path(argv[1])
    body = doc.read_text()
    if START not in body or END not in body:
        print(f"{doc}: markers {START} ... {END} not found", file=sys.stderr)
        return 2
    head, rest = body.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
