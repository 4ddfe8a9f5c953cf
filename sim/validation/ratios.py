"""What-if ratios: does the simulator move the way measurements move when one input changes?

A what-if ("how much faster is this job on an H200 than on an H100?", "what does FP8 buy?")
is a ratio of two predictions, so its error is the ratio's, not either row's: a model that
is +10% on both gets the ratio right. Where the corpus times the same cell twice with only
one *axis* of its arguments changed (``AXES``: the hardware, the dtype, the attention or GEMM
implementation, the serving engine), the pair's measured speed ratio is compared with the
predicted one:

    ratio error = predicted ratio / measured ratio - 1

with the ratio the second setting's speed over the first's (names sorted), speed = the value
or, for a time, its inverse. Positive: the model overstates the second setting's advantage.
Check rows only, both supported. Pairs are grouped by axis, category and their two settings
(a GEMM's H100/A100 ratio and a serving run's mean different things).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from xpusim.sim.validation.corpus import Row
from xpusim.sim.validation.metrics import lower_is_faster
from xpusim.sim.validation.runner import RowResult

HARDWARE_KEYS = ("system", "device")
# What-if axes: the argument keys that change between the two rows of a pair.
AXES: dict[str, tuple[str, ...]] = {
    "hardware": HARDWARE_KEYS,
    "dtype": ("dtype",),
    "implementation": ("attention-impl", "impl"),
    "engine": ("engine",),
}


@dataclass(frozen=True)
class WhatIfPair:
    """One cell timed with two settings of one axis: the second's speed over the first's."""

    axis: str
    category: str
    first: str
    second: str
    measured_ratio: float
    predicted_ratio: float
    ids: tuple[str, str]

    @property
    def error(self) -> float:
        return self.predicted_ratio / self.measured_ratio - 1.0


def _setting(args: dict[str, Any], keys: tuple[str, ...]) -> str:
    return "/".join(str(args[k]) for k in keys if k in args)


Cell = tuple[str, str, str, tuple[tuple[str, str], ...]]


def _cell(row: Row, keys: tuple[str, ...]) -> Cell:
    """What must be equal for two rows to time the same cell (all but the axis' keys)."""
    rest = tuple(sorted((k, repr(v)) for k, v in row.args.items() if k not in keys))
    return row.command, row.metric, row.unit, rest


def _speed(value: float, unit: str) -> float:
    return 1.0 / value if lower_is_faster(unit) else value


def axis_pairs(rows: Iterable[Row], results: Iterable[RowResult],
                 axis: str = "hardware") -> list[WhatIfPair]:
    """Every pair of scored check rows that time one cell with two settings of ``axis``."""
    keys = AXES[axis]
    scored = {r.id: r for r in results
              if r.role == "check" and not r.unsupported and r.predicted is not None}
    cells: dict[Cell, list[tuple[str, Row, float]]] = {}
    for row in rows:
        setting = _setting(row.args, keys)
        predicted = scored[row.id].predicted if row.id in scored else None
        if predicted is not None and setting:
            cells.setdefault(_cell(row, keys), []).append((setting, row, predicted))
    pairs = []
    for members in cells.values():
        members.sort(key=lambda m: (m[0], m[1].id))
        for i, (hw_a, row_a, pred_a) in enumerate(members):
            for hw_b, row_b, pred_b in members[i + 1:]:
                if hw_b == hw_a:
                    continue
                unit = row_a.unit
                measured = _speed(row_b.measured, unit) / _speed(row_a.measured, unit)
                predicted = _speed(pred_b, unit) / _speed(pred_a, unit)
                pairs.append(WhatIfPair(axis, row_a.category, hw_a, hw_b, measured, predicted,
                                        (row_a.id, row_b.id)))
    return pairs


def what_if_pairs(rows: list[Row], results: list[RowResult]) -> list[WhatIfPair]:
    """The pairs of every axis (``AXES``)."""
    return [p for axis in AXES for p in axis_pairs(rows, results, axis)]


def summarize_pairs(pairs: Iterable[WhatIfPair]) -> list[dict[str, Any]]:
    """Per axis, category and (first, second) setting: pairs, median |ratio error|, mean
    signed ratio error, median measured and predicted ratios; by axis (``AXES`` order), most
    pairs first."""
    groups: dict[tuple[str, str, str, str], list[WhatIfPair]] = {}
    for p in pairs:
        groups.setdefault((p.axis, p.category, p.first, p.second), []).append(p)
    out = []
    for (axis, category, first, second), group in groups.items():
        errors = np.array([p.error for p in group])
        out.append({
            "axis": axis,
            "category": category,
            "first": first,
            "second": second,
            "pairs": len(group),
            "median_abs_error": float(np.median(np.abs(errors))),
            "bias": float(errors.mean()),
            "median_measured_ratio": float(np.median([p.measured_ratio for p in group])),
            "median_predicted_ratio": float(np.median([p.predicted_ratio for p in group])),
        })
    order = list(AXES)
    return sorted(out, key=lambda g: (order.index(g["axis"]), -g["pairs"], g["category"],
                                      g["first"], g["second"]))


__all__ = ["AXES", "WhatIfPair", "HARDWARE_KEYS", "axis_pairs", "summarize_pairs",
           "what_if_pairs"]
