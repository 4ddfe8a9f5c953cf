"""Interval arithmetic for ``stage_stats`` (sim.training.result), vectorised: a stage's
streams hold tens of thousands of busy intervals, and the Python loops of
``engine.union_intervals``, ``intervals_length`` and ``overlap_length`` cost ~2 s over
``validate --published``'s training rows (docs/performance.md, twenty-fifth session).
Every result is the loops' float, to the bit: endpoints are picked, never computed; each
difference is one IEEE subtraction of the same two floats; and sums run in the loops'
order, one after another (``np.add.accumulate``, never the pairwise ``np.sum``).
"""

from __future__ import annotations

import numpy as np

Spans = tuple[np.ndarray, np.ndarray]  # starts and ends of sorted, disjoint intervals


def union_arrays(spans: list[list[float]]) -> Spans:
    """``engine.union_intervals`` of flat interval lists (s0, e0, s1, ...) as arrays of
    starts and ends; empty intervals are dropped, touching ones merged."""
    flat = np.concatenate([np.asarray(s, dtype=float) for s in spans]) if spans else None
    if flat is None or flat.size == 0:
        return np.empty(0), np.empty(0)
    start, end = flat[0::2], flat[1::2]
    keep = end > start  # empty intervals are dropped
    start, end = start[keep], end[keep]
    if start.size == 0:
        return start, end
    order = np.lexsort((end, start))  # as sorted() orders (start, end) pairs
    start, end = start[order], end[order]
    reach = np.maximum.accumulate(end)
    # A new interval starts where the next start lies beyond every end so far.
    first = np.flatnonzero(np.concatenate(([True], start[1:] > reach[:-1])))
    last = np.concatenate((first[1:] - 1, [start.size - 1]))
    return start[first], reach[last]


def in_order_sum(values: np.ndarray) -> float:
    """``sum`` of the values, added left to right (0 when none)."""
    return float(np.add.accumulate(values)[-1]) if values.size else 0.0


def length(spans: Spans) -> float:
    """``engine.intervals_length``: the intervals' lengths summed in time order."""
    return in_order_sum(spans[1] - spans[0])


def overlap(xs: Spans, ys: Spans) -> float:
    """``engine.overlap_length`` of two sorted, disjoint interval lists: the loop adds the
    positive intersection of each overlapping pair, in time order. The pairs are those
    of each x with the ys that end after it starts and start before it ends (a
    contiguous run of ys, found by bisection), in x then y order, which is time order
    (both lists are disjoint and sorted); each such intersection is positive."""
    xa, xb = xs
    ya, yb = ys
    lo = np.searchsorted(yb, xa, side="right")  # first y that ends after x starts
    hi = np.searchsorted(ya, xb, side="left")  # first y that starts at or after x ends
    counts = np.maximum(hi - lo, 0)
    total = int(counts.sum())
    if total == 0:
        return 0.0
    xi = np.repeat(np.arange(xa.size), counts)
    offsets = np.cumsum(counts) - counts
    yj = lo[xi] + (np.arange(total) - offsets[xi])
    return in_order_sum(np.minimum(xb[xi], yb[yj]) - np.maximum(xa[xi], ya[yj]))
