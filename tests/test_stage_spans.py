"""``sim.training.spans`` (``stage_stats``'s interval arithmetic, vectorised) gives the
engine's Python loops' floats, to the bit (docs/performance.md, twenty-fifth session)."""

from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.sim.engine import intervals_length, overlap_length, union_intervals
from xpusim.sim.training.spans import length, overlap, union_arrays

span = st.tuples(st.floats(0.0, 100.0), st.floats(0.0, 7.0))
lists = st.lists(st.lists(span, max_size=12), max_size=4)


def _both(spec):
    pairs = [(s, s + d) for spans in spec for s, d in spans]
    flat = [[t for s, d in spans for t in (s, s + d)] for spans in spec]
    return union_intervals(pairs), union_arrays(flat)


@settings(max_examples=400, deadline=None)
@given(lists, lists)
def test_lengths_and_overlap_equal_the_loops(xspec, yspec):
    xs, xa = _both(xspec)
    ys, ya = _both(yspec)
    assert length(xa) == sum(b - a for a, b in xs) == intervals_length(xs)
    assert overlap(xa, ya) == overlap_length(xs, ys)
    assert overlap(ya, xa) == overlap_length(ys, xs)
    assert type(length(xa)) is float and type(overlap(xa, ya)) is float


def test_hand_computed_overlap():
    """[0, 2) and [3, 5) against [1, 4): 1 + 1 = 2; touching intervals add nothing."""
    xs = union_arrays([[0.0, 2.0, 3.0, 5.0]])
    ys = union_arrays([[1.0, 4.0]])
    assert overlap(xs, ys) == 2.0
    assert overlap(xs, union_arrays([[2.0, 3.0]])) == 0.0
    assert length(xs) == 4.0
