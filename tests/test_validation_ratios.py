"""Cross-device ratios of the published validation (sim/validation/ratios.py), by hand."""

from __future__ import annotations

import pytest
from xpusim.sim.validation.corpus import Row
from xpusim.sim.validation.ratios import axis_pairs, summarize_pairs
from xpusim.sim.validation.runner import RowResult


def _row(rid: str, system: str, measured: float, unit: str = "tokens/s", **args) -> Row:
    return Row(rid, "serving", "check", "", "", "", "P", measured, unit, "m", "infer",
               {"model": "m", "system": system, **args})


def _result(row: Row, predicted: float | None, role: str = "check",
            unsupported: str = "") -> RowResult:
    return RowResult(row.id, row.category, role, row.metric, row.unit, row.measured, predicted,
                     None, None, None, "", "P", "", "", unsupported)


def test_a_throughput_pair_by_hand():
    a, b = _row("a", "dgx-h100", 100.0), _row("b", "hgx-h200", 120.0)
    (pair,) = axis_pairs([a, b], [_result(a, 110.0), _result(b, 143.0)])
    # names sorted: dgx-h100 first; measured 120/100 = 1.2, predicted 143/110 = 1.3
    assert (pair.first, pair.second) == ("dgx-h100", "hgx-h200")
    assert pair.measured_ratio == pytest.approx(1.2)
    assert pair.predicted_ratio == pytest.approx(1.3)
    assert pair.error == pytest.approx(1.3 / 1.2 - 1.0)  # overstates the H200's advantage


def test_a_time_pair_is_a_speed_ratio():
    a, b = _row("a", "x", 10.0, unit="ms"), _row("b", "y", 5.0, unit="ms")
    (pair,) = axis_pairs([a, b], [_result(a, 10.0), _result(b, 4.0)])
    assert pair.measured_ratio == pytest.approx(2.0)  # y takes half the time: twice as fast
    assert pair.predicted_ratio == pytest.approx(2.5)


def test_equal_errors_on_both_devices_give_an_exact_ratio():
    a, b = _row("a", "x", 100.0), _row("b", "y", 300.0)
    (pair,) = axis_pairs([a, b], [_result(a, 110.0), _result(b, 330.0)])  # both +10%
    assert pair.error == pytest.approx(0.0)


def test_only_the_same_cell_on_different_devices_pairs():
    rows = [_row("a", "x", 1.0, batch=1), _row("b", "y", 1.0, batch=2),  # other cell
            _row("c", "x", 1.0, batch=1),  # same device as a
            _row("d", "y", 1.0, batch=1)]
    results = [_result(r, 1.0) for r in rows]
    pairs = axis_pairs(rows, results)
    assert sorted(p.ids for p in pairs) == [("a", "d"), ("c", "d")]


def test_fit_unsupported_and_unpredicted_rows_are_left_out():
    a, b, c, d = (_row(i, s, 1.0) for i, s in (("a", "w"), ("b", "x"), ("c", "y"), ("d", "z")))
    results = [_result(a, 1.0), _result(b, 1.0, role="fit"), _result(c, None),
               _result(d, 1.0, unsupported="why")]
    assert axis_pairs([a, b, c, d], results) == []


def test_summary_groups_by_device_pair():
    rows = [_row("a1", "x", 100.0, batch=1), _row("b1", "y", 200.0, batch=1),
            _row("a2", "x", 100.0, batch=2), _row("b2", "y", 100.0, batch=2)]
    predicted = {"a1": 100.0, "b1": 220.0, "a2": 100.0, "b2": 90.0}  # +10%, -10% ratio errors
    (group,) = summarize_pairs(axis_pairs(rows, [_result(r, predicted[r.id]) for r in rows]))
    assert (group["axis"], group["category"], group["first"], group["second"],
            group["pairs"]) == ("hardware", "serving", "x", "y", 2)
    assert group["median_abs_error"] == pytest.approx(0.1)
    assert group["bias"] == pytest.approx(0.0)
    assert group["median_measured_ratio"] == pytest.approx(1.5)


def test_the_gate_fails_a_device_pair_whose_ratio_error_grew():
    from xpusim.sim.validation.golden import golden_record, regressions

    rows = [_row(f"{d}{i}", d, 100.0, batch=i) for i in range(10) for d in ("x", "y")]
    exact = [_result(r, 100.0) for r in rows]  # every ratio exact
    golden = golden_record(exact, rows)
    assert golden["what_if_ratios"] == {"hardware:serving:y/x": 0.0}
    worse = [_result(r, 110.0 if r.args["system"] == "y" else 100.0) for r in rows]
    problems = regressions(worse, golden, rows)
    assert any("hardware:serving:y/x" in p for p in problems)
    assert regressions(exact, golden, rows) == []


def test_a_dtype_pair_varies_only_the_dtype():
    a = _row("a", "x", 100.0, dtype="bf16")
    b = _row("b", "x", 150.0, dtype="fp8")
    c = _row("c", "y", 150.0, dtype="fp8")  # another device too: not a dtype pair of a
    results = [_result(a, 100.0), _result(b, 180.0), _result(c, 150.0)]
    (pair,) = axis_pairs([a, b, c], results, axis="dtype")
    assert (pair.axis, pair.first, pair.second) == ("dtype", "bf16", "fp8")
    assert pair.error == pytest.approx(1.8 / 1.5 - 1.0)  # FP8's gain overstated by 20%


def _train(rid: str, measured: float, **args) -> Row:
    base = {"model": "m", "system": "dgx-h100", "nodes": 2, "tp": 1, "pp": 2, "mbs": 1,
            "gbs": 512, "seq": 4096, "dtype": "fp8"}
    return Row(rid, "training", "check", "", "", "", "P", measured, "tokens/s/device",
               "tokens_per_s_per_device", "train", {**base, **args})


def test_a_plan_pair_puts_the_measured_slower_plan_first():
    a = _train("a", 5275.0, vpp=24, mbs=2)
    b = _train("b", 5113.0, vpp=12, gbs=1024)
    results = [_result(a, 11356.0), _result(b, 8201.0)]
    (pair,) = axis_pairs([a, b], results, axis="plan")
    # only the keys that differ label the pair; b measured slower, so it comes first
    assert (pair.first, pair.second, pair.ids) == ("gbs1024 vpp12 mbs1", "gbs512 vpp24 mbs2",
                                                    ("b", "a"))
    assert pair.measured_ratio == pytest.approx(5275.0 / 5113.0)
    assert pair.predicted_ratio == pytest.approx(11356.0 / 8201.0)
    assert pair.error == pytest.approx((11356.0 / 8201.0) / (5275.0 / 5113.0) - 1.0)


def test_a_plan_pair_needs_everything_else_equal():
    a = _train("a", 100.0, tp=2)
    rows = [a, _train("b", 90.0, tp=4, dtype="bf16"),  # another dtype: a dtype change too
            _train("c", 90.0, tp=4, seq=8192),  # another sequence
            _train("d", 90.0, tp=4, framework="cuda-graphs"),  # another stack
            _train("e", 90.0, tp=4, recompute="full")]  # a plan change: pairs
    pairs = axis_pairs(rows, [_result(r, 100.0) for r in rows], axis="plan")
    assert [p.ids for p in pairs] == [("e", "a")]
    assert (pairs[0].first, pairs[0].second) == ("tp4 recompute=full", "tp2")


def test_plan_and_scale_split_a_series():
    small = _train("small", 100.0, dp=8)
    big = _train("big", 90.0, nodes=16, dp=64, gbs=4096)  # same plan on 8x the devices
    bigger_tp = _train("tp", 80.0, nodes=16, dp=32, tp=2, gbs=4096)  # and another plan
    rows = [small, big, bigger_tp]
    results = [_result(small, 100.0), _result(big, 99.0), _result(bigger_tp, 70.0)]
    (scale,) = axis_pairs(rows, results, axis="scale")
    assert (scale.first, scale.second) == ("nodes2 dp8 gbs512", "nodes16 dp64 gbs4096")
    assert scale.measured_ratio == pytest.approx(0.9)  # per-device scaling efficiency
    assert scale.error == pytest.approx(0.99 / 0.9 - 1.0)  # the model scales too well
    plan = axis_pairs(rows, results, axis="plan")
    assert sorted(p.ids for p in plan) == [("tp", "big"), ("tp", "small")]


def test_plan_pairs_are_training_only_and_summarised_together():
    serving = [_row("s1", "x", 1.0, tp=1), _row("s2", "x", 2.0, tp=2)]
    assert axis_pairs(serving, [_result(r, 1.0) for r in serving], axis="plan") == []
    rows = [_train("a1", 100.0, mbs=1), _train("b1", 110.0, mbs=2),
            _train("a2", 100.0, mbs=1, seq=8192), _train("b2", 90.0, mbs=2, seq=8192)]
    predicted = {"a1": 100.0, "b1": 90.0, "a2": 100.0, "b2": 80.0}
    (group,) = summarize_pairs(axis_pairs(rows, [_result(r, predicted[r.id]) for r in rows],
                                          axis="plan"))
    assert (group["first"], group["second"], group["pairs"]) == ("slower plan", "faster plan",
                                                                 2)
    # mbs2 wins at 4k (1.1x measured, 0.9x predicted: wrong order); mbs1 wins at 8k (1.11x
    # measured, 1.25x predicted: right order)
    assert group["same_order"] == pytest.approx(0.5)


def test_the_gate_watches_the_plan_axis_as_one_group():
    from xpusim.sim.validation.golden import golden_record, regressions

    rows = [_train(f"{m}{s}", 100.0 + m, mbs=m, seq=s) for s in range(1, 11) for m in (1, 2)]
    exact = [_result(r, r.measured) for r in rows]
    golden = golden_record(exact, rows)
    assert golden["what_if_ratios"] == {"plan:training:faster plan/slower plan": 0.0}
    flipped = [_result(r, 120.0 if r.args["mbs"] == 1 else 100.0) for r in rows]  # ranked wrong
    assert any(p.startswith("plan:training") for p in regressions(flipped, golden, rows))
