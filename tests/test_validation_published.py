"""The published-measurement validation: corpus integrity, fit/check separation, the
metric conversions against hand-computed values, and the regression gate."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.validation import track_record
from xpusim.sim.validation.baseline import bus_factor, naive_payload
from xpusim.sim.validation.corpus import CATEGORIES, load_corpus
from xpusim.sim.validation.golden import golden_record, regressions
from xpusim.sim.validation.metrics import (
    attention_paper_flops,
    korthikanti_flops_per_step,
    megatron_flops_per_step,
    metric_for,
    signed_error,
)
from xpusim.sim.validation.runner import row_argv, run_rows

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "validation_published.json"
ROWS = load_corpus()


# ---- metric conversions, by hand -------------------------------------------------


def test_signed_error_is_positive_when_optimistic():
    assert signed_error(110.0, 100.0, "TFLOP/s") == pytest.approx(0.10)  # faster throughput
    assert signed_error(90.0, 100.0, "ms") == pytest.approx(0.10)  # shorter time
    assert signed_error(110.0, 100.0, "ms") == pytest.approx(-0.10)


def test_attention_flop_convention_of_the_flashattention_papers():
    args = {"batch": 2, "heads": 16, "seq": 1024, "head-dim": 128}
    fwd = 4 * 2 * 16 * 1024 * 1024 * 128
    assert attention_paper_flops(args) == fwd
    assert attention_paper_flops({**args, "causal": True}) == fwd / 2
    assert attention_paper_flops({**args, "pass": "bwd"}) == 2.5 * fwd
    assert attention_paper_flops({**args, "pass": "fwd_bwd"}) == 3.5 * fwd


def test_megatron_formula_by_hand():
    spec = load_model("llama-3-8b")
    b, s, n_l, h, v = 8, 4096, spec.layers, spec.hidden, spec.vocab
    expected = 96 * b * s * n_l * h * h * (1 + s / (6 * h) + v / (16 * n_l * h))
    args = {"model": "llama-3-8b", "gbs": b, "seq": s}
    assert megatron_flops_per_step(args) == pytest.approx(expected)


def test_korthikanti_count_gives_the_readme_mfu_from_the_papers_time():
    # Korthikanti et al. 2022: 175B (h 12288, 96 layers, V 51200), batch 64, seq 2048 on
    # 64 A100s in 13.75 s per iteration (its Table 5, as transcribed) is the README's 51.4% MFU.
    flops = korthikanti_flops_per_step({"model": "gpt3-175b", "gbs": 64, "seq": 2048})
    h, n_l = 12288, 96
    by_hand = 72 * 64 * 2048 * n_l * h * h * (1 + 2048 / (6 * h) + 51200 / (12 * n_l * h))
    assert flops == pytest.approx(by_hand)
    assert flops / (13.75 * 64 * 312e12) == pytest.approx(0.514, abs=0.001)


def test_per_device_throughputs_by_hand():
    # A prefill of 64 prompts x 4,096 tokens in 2 s on 32 devices: 4,096 tokens/s per device.
    step = {"tokens": 64 * 4096, "time_s": 2.0, "devices": 32}
    assert metric_for("infer", "tokens_per_s_per_device")({}, step) == pytest.approx(4096.0)
    # MTP with one drafted token accepted 70% of the time: 1.7 tokens per round; 12,288
    # requests over 256 devices in 0.1 s rounds = 12288 x 1.7 / 0.1 / 256 = 816 per device.
    row = {"batch": 12288, "expected_tokens": 1.7, "t_sd_round_s": 0.1, "t_ar_s": 0.08}
    sd = {"tp": 1, "ep": 256, "expected_tokens": 1.7, "rows": [row]}
    per_device = metric_for("sd", "tokens_per_s_per_device")
    assert per_device({}, sd) == pytest.approx(816.0)
    # The naive answer: a round costs one plain step.
    naive = naive_payload("sd", {}, sd)
    assert per_device({}, naive) == pytest.approx(12288 * 1.7 / 0.08 / 256)
    with pytest.raises(ValueError):
        per_device({}, {**sd, "rows": [row, row]})


def test_bus_factors_are_nccl_tests():
    assert bus_factor("all-reduce", 8) == pytest.approx(1.75)
    assert bus_factor("all-gather", 8) == pytest.approx(0.875)
    assert bus_factor("send-recv", 2) == 1.0


def test_row_argv_turns_args_into_flags():
    row = next(r for r in ROWS if r.command == "collective")
    argv = row_argv(row)
    assert argv[:2] == ["collective", row.args["kind"]]
    assert "--json" not in argv
    assert "--system" in argv


# ---- the corpus ------------------------------------------------------------------


def test_corpus_size_and_categories():
    assert len(ROWS) >= 120
    assert len({r.category for r in ROWS}) >= 8
    assert {r.category for r in ROWS} <= set(CATEGORIES)


def test_every_row_has_a_metric():
    missing = [r.id for r in ROWS if metric_for(r.command, r.metric) is None]
    assert not missing, f"rows whose metric has no conversion: {missing}"


def test_fit_rows_name_an_existing_file():
    for row in (r for r in ROWS if r.role == "fit"):
        target = row.fit_sets.split()[0]
        assert (ROOT / target).exists(), f"{row.id}: fit_sets names {target}, not a file"


def _distinctive(value: float) -> str | None:
    """A measured figure that would not appear in a profile by chance: >= 10 with a
    fractional part (e.g. 794.5, 1397.31)."""
    if value < 10 or value == int(value):
        return None
    return repr(value)


def _input_files() -> list[Path]:
    files = list((ROOT / "hwprofiles").rglob("*.toml"))
    files += [p for p in (ROOT / "sim" / "data").glob("*.toml")]
    return files


def _strings(node) -> list[str]:
    """Every string value of a parsed TOML document (sources, notes, descriptions)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def test_no_check_row_figure_is_an_input():
    """A check row's measured value must not be quoted in the text (source, note) of any
    profile, engine or data file the simulator reads: a figure used to set a parameter
    is a fit row. Numeric tables (e.g. NCCL's tuning constants) are not quotations."""
    texts = {p: "\n".join(_strings(tomllib.loads(p.read_text()))) for p in _input_files()}
    offenders = []
    for row in (r for r in ROWS if r.role == "check"):
        number = _distinctive(row.measured)
        if number is None:
            continue
        pattern = re.compile(rf"(?<![\d.]){re.escape(number)}(?![\d])")
        for path, text in texts.items():
            if pattern.search(text):
                offenders.append(f"{row.id} ({number}) in {path.relative_to(ROOT)}")
    assert not offenders, "check-row figures used as inputs (mark them fit): " + "; ".join(
        offenders
    )


def test_profiles_cite_only_fit_rows():
    """A profile that says 'fit: ID' must point at fit rows of the corpus."""
    roles = {}
    for r in ROWS:
        roles.setdefault(r.id.split("-")[0], set()).add(r.role)
    bad = []
    for path in _input_files():
        for ref in re.findall(r"fit: ([A-Z]\d+)", path.read_text()):
            if ref in roles and "fit" not in roles[ref]:
                bad.append(f"{path.relative_to(ROOT)} cites {ref}, which has no fit row")
    assert not bad, "; ".join(bad)


# ---- the whole corpus, and the regression gate -----------------------------------


@pytest.fixture(scope="module")
def results():
    return run_rows(ROWS, jobs=2)


def test_results_are_deterministic_and_complete(results):
    assert [r.id for r in results] == [r.id for r in ROWS]
    for r in results:
        if r.unsupported:
            assert r.predicted is None and r.unsupported.strip()
        else:
            assert r.predicted > 0 and r.baseline_predicted > 0


def test_regression_gate(results):
    golden = json.loads(GOLDEN.read_text())
    problems = regressions(results, golden, ROWS)
    assert not problems, (
        "validation against published measurements got worse: "
        + "; ".join(problems)
        + " (if intended and explained, regenerate: python -m xpusim.sim.validation.golden)"
    )


def test_track_record_matches_the_corpus(results):
    # The table the commands print (sim/validation/track_record.py) is derived from this
    # run: a change that moves the numbers rewrites it with the golden record.
    committed = json.loads(track_record.table_path().read_text())
    problems = track_record.mismatches(committed, track_record.build(ROWS, results))
    assert not problems, (
        "sim/data/track_record.json is stale: " + "; ".join(problems[:10])
        + " (regenerate: python -m xpusim.sim.validation.golden)"
    )


def test_golden_record_shape(results):
    record = golden_record(results, ROWS)
    assert "all" in record["categories"]
    assert set(record["supported"]) <= {r.id for r in ROWS}
    assert record["what_if_ratios"]  # the what-if gate has pairs to watch


# ---- the command ----------------------------------------------------------------


def test_cli_json_keys(tmp_path):
    ids = [r.id for r in ROWS if r.category == "collective"][:3]
    plot = tmp_path / "v.png"
    out = subprocess.run(
        [sys.executable, "-m", "xpusim.sim.cli.main", "validate", "--published", "--rows",
         ",".join(ids), "--json", "--plot", str(plot)],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )
    payload = json.loads(out.stdout)
    assert [r["id"] for r in payload["rows"]] == ids
    for row in payload["rows"]:
        for key in ("id", "category", "role", "measured", "predicted", "error",
                    "baseline_error", "source"):
            assert key in row
    for stats in payload["summary"].values():
        for key in ("n", "median_abs_error", "p90_abs_error", "bias",
                    "baseline_median_abs_error"):
            assert key in stats
    assert isinstance(payload["what_if_ratios"], list)  # sim/validation/ratios.py
    assert plot.stat().st_size > 0


def test_cli_rejects_unknown_category(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "xpusim.sim.cli.main", "validate", "--published", "--category", "x"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert out.returncode == 2 and "unknown" in out.stderr and "Traceback" not in out.stderr
