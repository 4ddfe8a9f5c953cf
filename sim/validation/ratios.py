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

Two axes are about the parallel plan of a training run (``train`` rows only, whose metrics
are all per device): **plan** (the same model, hardware, dtype, sequence and framework run
with another tp / pp / vpp / ep / cp / micro-batch / global batch / recompute / overlap /
ZeRO choice, ``PLAN_KEYS``) and **scale** (the same plan on more devices: only the node or
device count and what follows it, dp and the global batch, change, ``SCALE_KEYS``). A pair
whose rows differ in scale keys only is a scale pair, never a plan pair. Their settings have
no natural order, so a plan pair puts the measured-slower plan first (its measured ratio is
>= 1: positive ratio error = the model overstates the winner's margin, a predicted ratio
below 1 = it ranks the two plans the wrong way round) and a scale pair the fewer devices
first (the ratio is the per-device scaling efficiency; positive = the model scales too
well). Their pairs are labelled by the keys that differ ("pp2 mbs1" / "pp4 mbs2") and
summarised per axis and category, not per pair of labels (``GROUP_LABELS``).
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
# How many devices and what follows from it in a weak- or strong-scaling series.
SCALE_KEYS = ("nodes", "devices", "dp", "gbs")
# A training run's parallel plan: the `train` flags a user picks to lay the same model out
# on the same hardware (docs/training_notes.md, "Does the model rank plans"). Numerics (dtype, fp8-scaling, grad-reduce-dtype,
# dropout), the model, the software stack (framework, attention-impl, moe-dispatcher) and
# the sequence length are not plan: pairs must agree on them.
PLAN_KEYS = SCALE_KEYS + (
    "per-node", "tp", "pp", "vpp", "ep", "cp", "mbs", "layer-split", "schedule",
    "sequence-parallel", "no-sequence-parallel", "tp-extend-ep", "moe-fold", "zero", "recompute",
    "recompute-modules", "recompute-every", "cpu-offload-layers", "overlap-tp",
    "no-overlap-dp", "no-overlap-ep", "no-hierarchical-ep", "grad-accum-fusion",
    "no-grad-accum-fusion",
)
# What-if axes: the argument keys that change between the two rows of a pair.
AXES: dict[str, tuple[str, ...]] = {
    "hardware": HARDWARE_KEYS,
    "dtype": ("dtype",),
    "implementation": ("attention-impl", "impl"),
    "engine": ("engine",),
    "plan": PLAN_KEYS,
    "scale": SCALE_KEYS,
}
# Axes that only apply to some commands (a serving tp change is not a per-device what-if).
AXIS_COMMANDS: dict[str, tuple[str, ...]] = {"plan": ("train",), "scale": ("train",)}
# Axes whose pairs are summarised under one pair of generic labels (first, second) rather
# than per pair of settings: every plan pair is its own pair of settings.
GROUP_LABELS: dict[str, tuple[str, str]] = {
    "plan": ("slower plan", "faster plan"),
    "scale": ("fewer devices", "more devices"),
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


def _flag(key: str, value: Any) -> str:
    """``tp`` 2 -> "tp2", a switch -> its name, another value -> "key=value"."""
    if value is True:
        return key
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{key}{value}"
    return f"{key}={value}"


def _differing(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    return [k for k in keys if a.get(k) != b.get(k)]


def _label(args: dict[str, Any], keys: list[str]) -> str:
    """The row's values of ``keys`` (a key it lacks, e.g. an unset switch, is left out)."""
    return " ".join(_flag(k, args[k]) for k in keys if k in args) or "default"


def _devices(args: dict[str, Any]) -> tuple[float, ...]:
    return tuple(float(args.get(k, 0)) for k in SCALE_KEYS)


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
    commands = AXIS_COMMANDS.get(axis)
    scored = {r.id: r for r in results
              if r.role == "check" and not r.unsupported and r.predicted is not None}
    cells: dict[Cell, list[tuple[str, Row, float]]] = {}
    for row in rows:
        if commands is not None and row.command not in commands:
            continue
        # plan and scale settings name their keys: two plans' values alone may read alike
        setting = (_label(row.args, list(keys)) if axis in GROUP_LABELS
                   else _setting(row.args, keys))
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
                if axis in GROUP_LABELS:
                    pair = _plan_pair(axis, row_a, pred_a, row_b, pred_b)
                    if pair is not None:
                        pairs.append(pair)
                    continue
                unit = row_a.unit
                measured = _speed(row_b.measured, unit) / _speed(row_a.measured, unit)
                predicted = _speed(pred_b, unit) / _speed(pred_a, unit)
                pairs.append(WhatIfPair(axis, row_a.category, hw_a, hw_b, measured, predicted,
                                        (row_a.id, row_b.id)))
    return pairs


def _plan_pair(axis: str, a: Row, pred_a: float, b: Row, pred_b: float) -> WhatIfPair | None:
    """A plan or scale pair (module docstring), or None when the two rows are the other
    axis' pair: a scale pair changes the device count and nothing but ``SCALE_KEYS``; a plan
    pair changes a plan key that is not one of them, or the batch alone."""
    differ = _differing(a.args, b.args, PLAN_KEYS)
    scale_only = all(k in SCALE_KEYS for k in differ)
    more_devices = any(k in differ for k in ("nodes", "devices"))
    if axis == "scale" and not (scale_only and more_devices):
        return None
    if axis == "plan" and scale_only and more_devices:
        return None
    unit = a.unit
    if axis == "scale":
        ordered = sorted([(a, pred_a), (b, pred_b)], key=lambda m: _devices(m[0].args))
    else:  # the measured-slower plan first; on a tie, by id
        ordered = sorted([(a, pred_a), (b, pred_b)],
                         key=lambda m: (_speed(m[0].measured, unit), m[0].id))
    (row_a, p_a), (row_b, p_b) = ordered
    return WhatIfPair(axis, row_a.category, _label(row_a.args, differ),
                      _label(row_b.args, differ),
                      _speed(row_b.measured, unit) / _speed(row_a.measured, unit),
                      _speed(p_b, unit) / _speed(p_a, unit), (row_a.id, row_b.id))


def what_if_pairs(rows: list[Row], results: list[RowResult]) -> list[WhatIfPair]:
    """The pairs of every axis (``AXES``)."""
    return [p for axis in AXES for p in axis_pairs(rows, results, axis)]


def same_order(pair: WhatIfPair) -> bool:
    """Does the model put the two settings in the measured order? (A measured tie, ratio 1,
    counts as ordered only if the prediction ties too.)"""
    return bool(np.sign(pair.measured_ratio - 1.0) == np.sign(pair.predicted_ratio - 1.0))


def summarize_pairs(pairs: Iterable[WhatIfPair]) -> list[dict[str, Any]]:
    """Per axis, category and (first, second) setting (``GROUP_LABELS`` for plan and scale):
    pairs, median |ratio error|, mean signed ratio error, median measured and predicted
    ratios, and the share of pairs the model orders as measured (both ratios on the same
    side of 1); by axis (``AXES`` order), most pairs first."""
    groups: dict[tuple[str, str, str, str], list[WhatIfPair]] = {}
    for p in pairs:
        first, second = GROUP_LABELS.get(p.axis, (p.first, p.second))
        groups.setdefault((p.axis, p.category, first, second), []).append(p)
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
            "same_order": float(np.mean([same_order(p) for p in group])),
        })
    order = list(AXES)
    return sorted(out, key=lambda g: (order.index(g["axis"]), -g["pairs"], g["category"],
                                      g["first"], g["second"]))


__all__ = ["AXES", "AXIS_COMMANDS", "GROUP_LABELS", "HARDWARE_KEYS", "PLAN_KEYS", "SCALE_KEYS",
           "WhatIfPair", "axis_pairs", "same_order", "summarize_pairs", "what_if_pairs"]
