"""The timing harness: robust median, noise flags, stopping rules (with fake timers)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.calibrate.harness import HarnessConfig, measure, noise_score, summarise


def fake_timer(samples):
    """A timer that ignores fn and returns the next scripted sample."""
    it = itertools.cycle(samples)
    return lambda fn: next(it)


class FakeClock:
    """Budget clock advanced by the fake timer's samples (never the wall clock)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_steady_samples_stop_early_and_are_not_noisy():
    cfg = HarnessConfig(warmup=1, min_reps=5, max_reps=100, budget_s=10.0)
    m = measure(lambda: None, timer=fake_timer([1e-3]), config=cfg)
    assert m.median_s == pytest.approx(1e-3)
    assert m.reps == 5  # spread 0 <= target after the first check
    assert not m.noisy and m.rel_iqr == 0.0


def test_outliers_do_not_move_the_median_and_are_reported():
    # 1 in 10 runs is preempted (10x slower): a shared-machine pattern.
    samples = [1e-3] * 9 + [1e-2]
    cfg = HarnessConfig(warmup=0, min_reps=10, max_reps=50, budget_s=10.0)
    m = measure(lambda: None, timer=fake_timer(samples), config=cfg)
    assert m.median_s == pytest.approx(1e-3)
    assert m.outlier_fraction == pytest.approx(0.1, abs=0.02)
    assert not m.noisy  # the IQR ignores the rare outliers


def test_wide_spread_is_flagged_noisy():
    samples = [1e-3, 2e-3, 3e-3, 4e-3]
    cfg = HarnessConfig(warmup=0, min_reps=4, max_reps=40, budget_s=10.0, noisy_rel_iqr=0.10)
    m = measure(lambda: None, timer=fake_timer(samples), config=cfg)
    assert m.noisy and m.rel_iqr > 0.3
    assert m.reps == 40  # never steady: repeated until max_reps


def test_budget_stops_a_noisy_measurement():
    samples = [0.1, 0.3]
    cfg = HarnessConfig(warmup=0, min_reps=5, max_reps=1000, budget_s=1.0)
    m = measure(lambda: None, timer=fake_timer(samples), config=cfg)
    assert 5 <= m.reps <= 6  # 5 samples already exceed the 1 s budget


def test_noise_score_summarises_cases():
    quiet = summarise([1.0, 1.0, 1.0, 1.0])
    loud = summarise([1.0, 2.0, 3.0, 4.0])
    score = noise_score([quiet, loud])
    assert score["noisy_fraction"] == 0.5
    assert score["p90_rel_iqr"] > score["median_rel_iqr"] >= 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=50))
def test_summary_is_ordered(samples):
    m = summarise(samples)
    assert m.min_s <= m.q1_s <= m.median_s <= m.q3_s
    assert 0.0 <= m.outlier_fraction <= 1.0
    assert m.reps == len(samples)


def test_real_wall_timer_on_cpu():
    m = measure(lambda: sum(range(1000)), config=HarnessConfig.quick())
    assert m.median_s > 0 and m.reps >= 5


def test_cpu_time_timer_reports_contention():
    # (cpu, wall): the core was shared half of the time -> contention 2, median from CPU time.
    cfg = HarnessConfig(warmup=0, min_reps=5, max_reps=10, budget_s=10.0)
    m = measure(lambda: None, timer=fake_timer([(1e-3, 2e-3)]), config=cfg)
    assert m.median_s == pytest.approx(1e-3)
    assert m.wall_median_s == pytest.approx(2e-3)
    assert m.contention == pytest.approx(2.0)
    assert noise_score([m])["max_contention"] == pytest.approx(2.0)


def test_thread_cpu_timer_measures_work():
    from xpusim.calibrate.harness import thread_cpu_timer

    cpu, wall = thread_cpu_timer()(lambda: sum(range(20000)))
    assert 0 < cpu <= wall * 1.05 + 1e-4


def _fault_script(per_call: list[int]):
    """A fake kernel and fault counter: call i adds per_call[i] (the last value repeats)."""
    state = {"calls": 0, "faults": 0}

    def fn() -> None:
        i = min(state["calls"], len(per_call) - 1)
        state["faults"] += per_call[i]
        state["calls"] += 1

    return fn, (lambda: state["faults"]), state


def test_settle_warms_up_until_a_call_faults_no_more_than_priced():
    from xpusim.calibrate.harness import HarnessConfig, settle

    cfg = HarnessConfig(settle_calls=16, settle_budget_s=1e9)
    # A 16 MiB output re-faulted while the heap grows, then recycled (measured pattern).
    fn, faults, state = _fault_script([4114, 0, 4096, 4096, 0, 0, 0])
    assert settle(fn, faults, 0.0, cfg, clock=lambda: 0.0) == 7 and state["calls"] == 7
    # A fresh >= 32 MiB output faults its pages on every call, as priced: settled at once.
    fn, faults, state = _fault_script([8193])
    assert settle(fn, faults, 8193.0, cfg, clock=lambda: 0.0) == 3
    # Never settles: stops after settle_calls.
    fn, faults, state = _fault_script([4096])
    assert settle(fn, faults, 0.0, cfg, clock=lambda: 0.0) == 16


def test_measure_settles_only_with_a_fault_counter():
    from xpusim.calibrate.harness import HarnessConfig, measure

    cfg = HarnessConfig(warmup=1, min_reps=5, max_reps=5, settle_budget_s=1e9)
    fn, faults, state = _fault_script([4096, 4096, 4096, 0])
    measure(fn, timer=lambda f: (f(), 1e-3)[1], config=cfg, clock=lambda: 0.0, faults=faults)
    assert state["calls"] == 1 + 5 + 5  # warm-up, settle (calls 2-6: 3 clean), 5 timed reps
    fn, faults, state = _fault_script([4096])
    measure(fn, timer=lambda f: (f(), 1e-3)[1], config=cfg, clock=lambda: 0.0)
    assert state["calls"] == 1 + 5


def test_modelled_faults_are_the_fresh_pages_of_the_graph():
    from xpusim.calibrate.pipeline import modelled_faults
    from xpusim.calibrate.suites import cases

    by_name = {c.name: c for c in cases(["add", "standard-attention"], quick=True)}
    assert modelled_faults(by_name["add[numel=4194304]"]) == 0.0
    sa = by_name["standard-attention[batch=1,heads=4,seq=2048,head_dim=64,causal=0]"]
    assert modelled_faults(sa) == 3 * (64 * 2**20 // 4096 + 1)  # the three 64 MiB score tensors
