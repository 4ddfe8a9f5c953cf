"""``gcpause.gc_paused`` turns the cyclic collector off for its block and back on after
(also on an exception), leaves it off when it was off, and ``validate``'s rows run under
it without changing the collector's state around them."""

from __future__ import annotations

import gc

import pytest
from xpusim.sim.gcpause import gc_paused
from xpusim.sim.validation import runner


def test_paused_inside_restored_after():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with gc_paused(active=False):
        assert gc.isenabled()
    with pytest.raises(ValueError), gc_paused():
        raise ValueError("boom")
    assert gc.isenabled()


def test_off_stays_off():
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_row_runs_with_the_collector_paused(monkeypatch):
    seen = []
    monkeypatch.setattr(runner, "_run_row", lambda row, payloads: seen.append(gc.isenabled()) or row)
    assert runner.run_row("row") == "row"
    assert seen == [False] and gc.isenabled()


def test_training_step_runs_with_the_collector_paused(monkeypatch):
    """``simulate_training`` lowers and prices with the collector off, and turns it back on
    whether the step succeeds or raises."""
    from xpusim.sim.training import steady

    seen = []

    def lower(*args, **kwargs):
        seen.append(gc.isenabled())
        raise ValueError("stop after lowering")

    monkeypatch.setattr(steady, "lower_training", lower)
    with pytest.raises(ValueError):
        steady.simulate_training(None, None, None)  # type: ignore[arg-type]
    assert seen == [False] and gc.isenabled()
