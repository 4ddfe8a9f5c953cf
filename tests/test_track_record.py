"""The track record printed beside predictions (sim/validation/track_record.py): its
statistics by hand, the lookup's row threshold, the staleness check, and the commands
that print it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from xpusim.sim.validation import track_record as tr
from xpusim.sim.validation.corpus import Row
from xpusim.sim.validation.runner import RowResult


def _row(rid: str, category: str, args: dict) -> Row:
    return Row(id=rid, category=category, role="check", hardware="", software="", source="",
               reliability="P", measured=1.0, unit="ms", metric="time", command="op",
               args=args)


def _result(rid: str, category: str, error: float | None, role: str = "check") -> RowResult:
    return RowResult(id=rid, category=category, role=role, metric="time", unit="ms",
                     measured=1.0, predicted=1.0, error=error, baseline_predicted=1.0,
                     baseline_error=0.0, source="", reliability="P", hardware="", command="")


def test_error_stats_by_hand():
    s = tr.error_stats([0.10, -0.20, 0.30, 0.05, -0.05])
    assert s.n == 5
    assert s.median_abs_error == pytest.approx(0.10)  # |e| sorted: .05 .05 .10 .20 .30
    assert s.p90_abs_error == pytest.approx(0.20)  # nearest rank below: index int(0.9 x 4) = 3
    assert s.bias == pytest.approx(0.04)  # (0.10 - 0.20 + 0.30 + 0.05 - 0.05) / 5


def test_build_groups_check_rows_by_device_and_engine_and_skips_the_rest():
    rows = [_row(f"r{i}", "gemm", {"kind": "gemm", "device": "h100-sxm5-80gb"}) for i in range(4)]
    results = [_result("r0", "gemm", 0.1), _result("r1", "gemm", -0.1),
               _result("r2", "gemm", 0.5, role="fit"), _result("r3", "gemm", None)]
    table = tr.build(rows, results)
    gemm = table["categories"]["gemm"]
    assert gemm["overall"]["n"] == 2  # the fit row and the row without an error are left out
    assert gemm["overall"]["bias"] == pytest.approx(0.0)
    device = tr.device_name("h100-sxm5-80gb")
    assert gemm["device"][device]["n"] == 2
    assert gemm["engine"] == {}
    assert table["op_kinds"] == {"gemm": "gemm"}


def test_mismatches_name_what_moved():
    rows = [_row("a", "gemm", {"kind": "gemm", "device": "h100-sxm5-80gb"})]
    old = tr.build(rows, [_result("a", "gemm", 0.10)])
    assert tr.mismatches(old, tr.build(rows, [_result("a", "gemm", 0.10 + tr.TOLERANCE / 2)])) == []
    moved = tr.mismatches(old, tr.build(rows, [_result("a", "gemm", 0.20)]))
    assert moved and moved[0].startswith("gemm median_abs_error")


def test_lookup_reads_the_committed_table():
    record = tr.lookup("training", "no-such-device", "no-such-engine")
    assert record is not None and record.overall.n >= tr.MIN_ROWS
    assert record.on_device is None and record.with_engine is None  # too few rows: none
    assert tr.lookup("no-such-category") is None
    assert tr.op_category("gemm") == "gemm" and tr.op_category("attention") == "attention"
    text = tr.describe(record)
    assert "training" in text and "bias" in text and "fewer than" in text


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xpusim.sim.cli.main", *argv],
                          capture_output=True, text=True, check=True)


def test_op_prints_the_record_of_its_category_and_device():
    argv = ("op", "gemm", "--device", "h100-sxm5-80gb", "--m", "4096", "--n", "4096",
            "--k", "4096")
    doc = json.loads(_run(*argv, "--json").stdout)["track_record"]
    assert doc["category"] == "gemm" and doc["device"] == tr.device_name("h100-sxm5-80gb")
    assert doc["on_device"]["n"] >= tr.MIN_ROWS
    assert "track record" in _run(*argv).stdout


def test_serving_record_names_the_engine():
    doc = json.loads(_run("infer", "--model", "llama-2-7b", "--system", "dgx-a100",
                          "--devices", "1", "--serve", "--engine", "trtllm-0.10",
                          "--requests", "20", "--prompt-len", "128", "--output-len", "16",
                          "--rate", "1000", "--json").stdout)["track_record"]
    assert doc["category"] == "serving" and doc["engine"] == "trtllm-0.10"
    assert doc["with_engine"]["n"] >= tr.MIN_ROWS


def test_what_if_record_is_found_in_either_order():
    a = tr.what_if_record("hardware", "serving", "dgx-h100", "hgx-h200")
    b = tr.what_if_record("hardware", "serving", "hgx-h200", "dgx-h100")
    assert a is not None and a == b and a["pairs"] >= tr.MIN_ROWS
    assert {a["first"], a["second"]} == {"dgx-h100", "hgx-h200"}
    assert tr.what_if_record("hardware", "serving", "dgx-h100", "no-such-system") is None
    assert "published pairs" in tr.describe_what_if(a)


def test_mismatches_watch_the_what_if_pairs():
    table = json.loads(tr.table_path().read_text())
    moved = json.loads(json.dumps(table))
    moved["what_if"][0]["median_abs_error"] += 2 * tr.TOLERANCE
    problems = tr.mismatches(table, moved)
    assert len(problems) == 1 and problems[0].startswith("what-if ")


def test_compare_prints_the_hardware_what_if_record():
    out = _run("compare", "--systems", "dgx-h100,hgx-h200", "--json", "infer", "--model",
               "llama-2-7b", "--serve", "--engine", "trtllm-0.10", "--requests", "10",
               "--prompt-len", "64", "--output-len", "8", "--rate", "1000").stdout
    records = json.loads(out)["what_if_record"]
    assert [(r["axis"], r["category"]) for r in records] == [("hardware", "serving")]


def test_explore_says_which_candidates_the_record_cannot_separate(tmp_path):
    from pathlib import Path

    study = Path(__file__).resolve().parents[1] / "examples" / "small_study.toml"
    doc = json.loads(_run("explore", str(study), "--no-plots", "--json", "--out",
                          str(tmp_path)).stdout)
    record = doc["ranking_record"]
    assert record["plan_pairs"]["axis"] == "plan" and record["plan_pairs"]["pairs"] >= 5
    ranked = [r for r in doc["ranked"] if not r.get("error")]
    best = ranked[0]["tokens_per_s"]
    assert record["within"][0] == ranked[0]["rank"]
    for r in ranked:  # the ranks listed are exactly those within the median ratio error
        close = r["tokens_per_s"] * (1 + record["plan_pairs"]["median_abs_error"]) >= best
        assert (r["rank"] in record["within"]) == close
