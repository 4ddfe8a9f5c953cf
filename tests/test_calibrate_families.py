"""Out-of-range shape families: never fitted, always held out, reported apart."""

from __future__ import annotations

import pytest
from xpusim.calibrate.families import OUT_OF_RANGE, is_out_of_range
from xpusim.calibrate.suites import SUITES, Case, cases
from xpusim.calibrate.validate import Point, check, summarise


@pytest.mark.parametrize("suite", sorted(OUT_OF_RANGE))
def test_each_out_of_range_shape_leaves_the_grid_on_some_axis(suite):
    # On at least one axis the value is one no grid shape (quick or full) has.
    grid = SUITES[suite].full + SUITES[suite].quick
    for shape in OUT_OF_RANGE[suite]:
        new_axes = [k for k, v in shape.items() if all(g.get(k) != v for g in grid)]
        assert new_axes, f"{suite} {shape} lies on the fitted grid"
        assert not any(shape == g for g in grid)


@pytest.mark.parametrize("quick", [True, False])
def test_out_of_range_cases_are_held_out_in_both_modes(quick):
    all_cases = cases(quick=quick)
    oor = [c for c in all_cases if c.family == "out-of-range"]
    assert len(oor) == sum(len(v) for v in OUT_OF_RANGE.values())
    assert all(c.split == "heldout" for c in oor)
    # The grid's own cases are in-range, fit or held out by the seeded split.
    assert {c.split for c in all_cases if c.family == "in-range"} == {"fit", "heldout"}


def test_family_is_derived_from_the_shape_so_a_csv_round_trip_keeps_it():
    shape = OUT_OF_RANGE["moe"][0]
    case = Case("moe", tuple((k, float(v)) for k, v in shape.items()), "heldout", "fp32")
    assert case.family == "out-of-range"
    assert is_out_of_range("moe", {k: int(v) for k, v in shape.items()})
    assert not is_out_of_range("gemm", shape)


def _point(suite: str, shape: dict, measured: float, calibrated: float) -> Point:
    case = Case(suite, tuple((k, float(v)) for k, v in shape.items()), "heldout", "fp32")
    return Point(case, measured, 0.01, False, calibrated, calibrated * 2)


def test_summary_splits_families_and_check_flags_the_out_of_range_family():
    grid = SUITES["cdc"].full
    points = [_point("cdc", grid[i], 1.0, 1.0 + 0.01 * i) for i in range(4)]
    points += [_point("cdc", s, 1.0, 1.5) for s in OUT_OF_RANGE["cdc"]]
    summary = summarise(points)["cdc"]
    assert summary["n"] == 4 + len(OUT_OF_RANGE["cdc"])
    assert summary["in_range"]["n"] == 4
    assert summary["in_range"]["calibrated"]["median_abs_error"] == pytest.approx(0.015)
    assert summary["out_of_range"]["calibrated"]["median_abs_error"] == pytest.approx(0.5)
    failures = check({"cdc": summary}, ["cdc"], 0.10, 0.25)
    assert any(f.startswith("cdc out-of-range: median") for f in failures)
    in_range_only = summarise(points[:4])
    assert "out_of_range" not in in_range_only["cdc"]
    assert check(in_range_only, ["cdc"], 0.10, 0.25) == []
