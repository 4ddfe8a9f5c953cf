"""Per-category error statistics of a validation run: check rows only count.

bias is the mean signed error (positive = the simulator predicts faster runs than
measured); a model that is always fast is wrong even when its median looks fine.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from xpusim.sim.validation.runner import RowResult


def _stats(errors: list[float], prefix: str = "") -> dict[str, float | None]:
    if not errors:
        return {f"{prefix}median_abs_error": None, f"{prefix}p90_abs_error": None,
                f"{prefix}max_abs_error": None, f"{prefix}bias": None}
    a = np.abs(np.asarray(errors))
    return {
        f"{prefix}median_abs_error": float(np.median(a)),
        f"{prefix}p90_abs_error": float(np.percentile(a, 90)),
        f"{prefix}max_abs_error": float(a.max()),
        f"{prefix}bias": float(np.mean(errors)),
    }


def summarize(results: Iterable[RowResult]) -> dict[str, dict[str, Any]]:
    """{category: stats} plus an ``all`` entry over every category."""
    results = list(results)
    categories = sorted({r.category for r in results})
    out = {c: _category([r for r in results if r.category == c]) for c in categories}
    out["all"] = _category(results)
    return out


def _category(results: list[RowResult]) -> dict[str, Any]:
    supported = [r for r in results if not r.unsupported]
    check = [r for r in supported if r.role == "check"]
    fit = [r for r in supported if r.role == "fit"]
    stats: dict[str, Any] = {
        "rows": len(results),
        "n": len(check),
        "fit_rows": len(fit),
        "unsupported": len(results) - len(supported),
    }
    stats.update(_stats([r.error for r in check if r.error is not None]))
    baseline = _stats([r.baseline_error for r in check if r.baseline_error is not None],
                      "baseline_")
    stats["baseline_median_abs_error"] = baseline["baseline_median_abs_error"]
    stats["baseline_bias"] = baseline["baseline_bias"]
    stats["fit_median_abs_error"] = _stats([r.error for r in fit if r.error is not None])[
        "median_abs_error"]
    return stats
