"""Runs of identical decode steps priced in one numpy pass, to the bit.

``Server._decode_run`` advances a run of decode steps in which nothing changes the batch:
step j (0, 1, ...) of ``batch`` requests whose contexts sum to ``total`` is priced at mean
context ``(total + j·batch) / batch`` through the interpolation over ``CONTEXT_GRID``
(``StepCosts.decode_stepper``) and the engine's host-overlap rule, and the clock adds the
step times one by one. The serving rows of ``xpusim validate --published`` advance ~8.4M
such steps (2026-12-06: 2,773 runs of 1,024 steps or more, the TensorRT-LLM 0.17 rows'
3,000-request long-output runs), at ~2 µs of Python each.

A long run is computed here with numpy instead, doing the same IEEE operations on the
same operands in the same order, so every clock value is the float the loop gives:

* the contexts: the integers ``total + j·batch`` (exact in int64 and in float64 below
  2**53) divided by ``batch``, one correctly rounded division each, as Python's ``int /
  int``; scaled by ``batch / padded`` where a CUDA-graph batch pads the step;
* the interpolation: each context's segment by ``searchsorted(grid, x, "right") - 1``
  clamped to the first and last segments (``bisect_right`` on the same grid), then
  ``y0 + dy·(x - x0) / dx`` with the segment's priced ends (``Interp.segment``, the table
  the scalar closure reads; pricing a segment is a pure function of it, so pricing it here
  first gives the same floats);
* the host rule: ``EngineProfile.step_time`` element-wise (``max`` as ``np.maximum``;
  the operands are finite and non-negative);
* the clock: ``np.cumsum`` (``add.accumulate``, a sequential left-to-right sum, not the
  pairwise summation of ``np.sum``) from the current time.

Runs that an arrival may cut (the queue empty, requests still to come) and short runs
are stepped in Python as before. ``tests/test_decode_runs.py`` compares both paths with
``==`` over padded and unpadded, mixed and plain steps, every host-overlap rule and runs
crossing grid points.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import numpy as np

# Runs shorter than this are stepped in Python: numpy's per-run cost (~25 µs) equals
# ~85 Python steps (~0.3 µs each; measured 2026-12-06 on a 2,000-step run: 0.31 against
# 0.05 µs per step).
VECTOR_STEPS = 96

Segment = tuple[float, float, float, float, float, float]


def _segment(ends: dict[int, Segment], grid: tuple[int, ...], fn: Callable[[float], float],
             i: int, points: dict[int, float]) -> Segment:
    """Segment ``i`` of the interpolation of ``fn`` over ``grid``: (lower bound, upper
    bound, x0, y0, y1 - y0, x1 - x0), its ends priced once (the first segment reaches
    down to -inf and the last up to +inf, as the clamp says). ``points``: ``fn`` at the
    grid points priced so far, by index: two neighbouring segments share an end (the
    same float, ``fn`` being a pure function; ~300,000 segments over ``validate
    --published``'s serving rows)."""
    e = ends.get(i)
    if e is None:
        last = len(grid) - 2
        a, b = grid[i], grid[i + 1]
        ya = points.get(i)
        if ya is None:
            ya = points[i] = fn(a)
        yb = points.get(i + 1)
        if yb is None:
            yb = points[i + 1] = fn(b)
        e = ends[i] = (-math.inf if i == 0 else a, math.inf if i == last else b,
                       a, ya, yb - ya, b - a)
    return e


class Interp:
    """``fn`` interpolated linearly over ``grid`` (clamped to the first and last
    segments), each segment's end points priced once: ``at`` for one point, ``many`` for
    an array of them (the same floats).

    ``at`` checks the segment of its previous call first: a serving run calls it millions
    of times, mostly in the segment of the call before. It holds the segment table, not
    this object, so the two form no reference cycle (a run's pricing is then freed by
    reference counting: tests/test_stepcosts_interp.py)."""

    def __init__(self, fn: Callable[[float], float], grid: tuple[int, ...],
                 ends: dict[int, Segment] | None = None,
                 points: dict[int, float] | None = None) -> None:
        """``ends`` and ``points``: the segment and point tables to start from (and fill),
        shared with other interpolations of the same function over ``grid``
        (``stepcosts.CostTables``); None: new ones."""
        self.fn, self.grid = fn, grid
        self.ends: dict[int, Segment] = {} if ends is None else ends
        self.points: dict[int, float] = {} if points is None else points
        self.at = _scalar(self.ends, grid, fn, self.points)

    def cursor(self) -> Callable[[float], float]:
        """Another ``at`` over the same segment table, with its own previous segment: a
        caller that reads two points of one function in turn (a mixed step's token work
        at the decode tokens and at decode + chunk tokens) keeps each in its segment
        rather than looking the segment up at every call. The same floats as ``at``."""
        return _scalar(self.ends, self.grid, self.fn, self.points)

    def segment(self, i: int) -> Segment:
        return _segment(self.ends, self.grid, self.fn, i, self.points)

    def many(self, xs: np.ndarray) -> np.ndarray:
        """``at`` of each of ``xs`` (float64), element-wise the same operations."""
        last = len(self.grid) - 2
        idx = np.clip(np.searchsorted(np.asarray(self.grid, dtype=np.float64), xs,
                                      side="right") - 1, 0, last)
        lo = int(idx.min())
        table = np.zeros((int(idx.max()) - lo + 1, 4))
        for i in np.unique(idx).tolist():
            _, _, x0, y0, dy, dx = self.segment(i)
            table[i - lo] = (x0, y0, dy, dx)
        rows = table[idx - lo]
        return rows[:, 1] + rows[:, 2] * (xs - rows[:, 0]) / rows[:, 3]


def _scalar(ends: dict[int, Segment], grid: tuple[int, ...],
            fn: Callable[[float], float], points: dict[int, float]) -> Callable[[float], float]:
    """The interpolation at one point: y0 + (y1 - y0) * (x - x0) / (x1 - x0)."""
    last = len(grid) - 2
    # The segment used last: (lower bound, upper bound, x0, y0, y1 - y0, x1 - x0).
    recent: Segment = (math.inf, -math.inf, 0.0, 0.0, 0.0, 1.0)

    def at(x: float) -> float:
        nonlocal recent
        lo, hi, x0, y0, dy, dx = recent
        if not lo <= x < hi:
            recent = _segment(ends, grid, fn, min(max(bisect.bisect_right(grid, x) - 1, 0),
                                                  last), points)
            lo, hi, x0, y0, dy, dx = recent
        return y0 + dy * (x - x0) / dx

    return at


class DecodeStepper:
    """The time of a plain decode step of ``batch`` requests as a function of their mean
    context (``__call__``), and a run of such steps (``advance``).

    ``device``: the interpolation the step is priced through; ``share``: the batch over
    the CUDA-graph batch it is padded to (None: not padded); ``host``: the engine's
    ``step_time`` and the host terms before and after the forward, or None when the
    interpolated function is the step time itself (``StepCosts.decode``)."""

    def __init__(self, device: Interp, share: float | None,
                 host: tuple[Callable[[float, float, float], float], str, float, float] | None,
                 ) -> None:
        self.device, self.share, self.host = device, share, host
        at = device.at
        if host is None:
            self.step: Callable[[float], float] = at
        else:
            step_time, _, before, after = host
            if share is None:
                def step(c: float) -> float:
                    return step_time(at(c), before, after)
            else:
                def step(c: float) -> float:
                    return step_time(at(c * share), before, after)
            self.step = step

    def __call__(self, context: float) -> float:
        return self.step(context)

    def advance(self, now: float, total: int, batch: int, steps_max: int,
                arrival: float) -> tuple[float, int]:
        """Advance up to ``steps_max`` steps from clock ``now`` (step j at mean context
        ``(total + j·batch) / batch``), stopping after the step at whose end the clock
        reaches ``arrival``; returns (clock, steps)."""
        if steps_max < VECTOR_STEPS or arrival != math.inf:
            step, steps = self.step, 0
            while True:
                now += step((total + steps * batch) / batch)
                steps += 1
                if steps >= steps_max or arrival <= now:
                    return now, steps
        return self._clock(now, total, batch, steps_max), steps_max

    def _clock(self, now: float, total: int, batch: int, steps: int) -> float:
        times = self.times(total, batch, steps)
        clock = np.empty(steps + 1)
        clock[0] = now
        clock[1:] = times
        return float(np.cumsum(clock)[-1])

    def times(self, total: int, batch: int, steps: int) -> np.ndarray:
        """The step times of steps 0 .. ``steps`` - 1, as ``__call__`` gives them."""
        xs = (total + np.arange(steps, dtype=np.int64) * batch) / batch
        if self.share is not None:
            xs = xs * self.share
        device = self.device.many(xs)
        if self.host is None:
            return device
        _, overlap, before, after = self.host
        if overlap == "all":
            return np.maximum(device, before + after)
        if overlap == "output":
            return before + np.maximum(device, after)
        return before + device + after
