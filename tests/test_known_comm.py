"""``engine_share.known_comm`` hands ``stretch`` a comm slot's whole interval list, not a
copy of the part after the task's start (docs/performance.md, twenty-fifth session):
``stretch`` bisects at the start itself, so both give the same end, float for float."""

from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.sim.engine_share import chain_end, flat_union, known_comm, stretch


def _tail(iv: list[float], start: float) -> list[float]:
    """The copy ``known_comm`` made before: the intervals that end after ``start``."""
    out: list[float] = []
    for k in range(0, len(iv), 2):
        if iv[k + 1] > start:
            out += iv[k:k + 2]
    return out


def _flat(cuts: list[float]) -> list[float]:
    """A flat, sorted, disjoint interval list from sorted distinct cut points."""
    cuts = sorted(set(cuts))
    return cuts[:len(cuts) // 2 * 2]


cut_lists = st.lists(st.floats(0.0, 50.0), max_size=16)


@settings(max_examples=400, deadline=None)
@given(st.lists(cut_lists, min_size=1, max_size=3), st.floats(0.0, 60.0),
       st.floats(0.0, 20.0), st.floats(0.05, 1.0))
def test_whole_list_stretches_as_its_tail(slot_cuts, start, work, rate):
    ivs = [_flat(c) for c in slot_cuts]
    slots = list(range(len(ivs)))
    tails = [t for iv in ivs if (t := _tail(iv, start))]
    before = tails[0] if len(tails) == 1 else flat_union(tails)
    now = known_comm(ivs, slots, start)
    assert bool(now) == bool(before)
    assert stretch(now, start, work, rate) == stretch(before, start, work, rate)
    parts = [(work, 0), (work / 3, 1)]
    rates = [rate, 1.0 - rate / 2]
    assert chain_end(parts, rates, start, now) == chain_end(parts, rates, start, before)
