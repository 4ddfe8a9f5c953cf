"""A hardware what-if re-prices the base point's lowered training step instead of lowering
again, with the same result as running `train` on each varied point."""

from __future__ import annotations

import pytest
from xpusim.sim.api.train import TrainRequest
from xpusim.sim.studies.whatif import (
    TrainRepricer,
    evaluate,
    parse_vary,
    saved_from_request,
    sweep_points,
)

REQUEST = TrainRequest(
    model="qwen2-0.5b", system="atlas-800t-a2", nodes=2, tp=2, pp=2, mbs=1, gbs=32, seq=1024
)
HARDWARE = [
    "device.hbm_bandwidth=0.5x,2x",
    "device.matrix_peak=0.7x,1.5x",
    "system.inter_node_bandwidth=0.25x,4x",
    "system.intra_node_latency=3x",
]


def _points(vary: list[str]):
    points, _ = sweep_points(saved_from_request(REQUEST), [parse_vary(v) for v in vary])
    return points


def _modelled(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "wall_s"}


def test_hardware_points_lower_once_and_equal_train():
    points = _points(HARDWARE)
    repricer = TrainRepricer()
    repriced = [repricer(p) for p in points]
    assert repricer.lowerings == 1
    for point, got in zip(points, repriced, strict=True):
        assert "error" not in got
        assert _modelled(got) == pytest.approx(_modelled(evaluate(point)), rel=1e-12)
    assert len({r["step_time_s"] for r in repriced}) > 4  # the variations do move the step


def test_model_or_capacity_changes_lower_again():
    points = _points(["model.hidden=0.5x", "device.hbm_capacity=0.05x"])
    repricer = TrainRepricer()
    results = [repricer(p) for p in points]
    # A new model lowers again; a capacity that forces another recompute policy (or does
    # not fit at all) never reuses the base lowering.
    assert repricer.lowerings >= 2
    for point, got in zip(points, results, strict=True):
        want = evaluate(point)
        assert ("error" in got) == ("error" in want)
        if "error" not in got:
            assert _modelled(got) == pytest.approx(_modelled(want), rel=1e-12)
