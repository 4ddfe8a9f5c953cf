"""Exact comparison of two engine results, shared by the engine tests that run the same
graphs two ways (chained vs per-part tasks, contended stream orders)."""

from xpusim.sim.engine import SimResult


def assert_same_schedule(a: SimResult, b: SimResult) -> None:
    """Makespan and busy time per stream and label equal to the bit."""
    assert a.makespan_s == b.makespan_s
    assert list(a.busy_s.items()) == list(b.busy_s.items())
    assert list(a.busy_by_label.items()) == list(b.busy_by_label.items())
