"""Plan files: a ``[plan]`` TOML table read into ``ParallelPlan`` fields, checked key by key.

``load_plan_file`` is what ``xpusim train --plan FILE`` and ``sim.api.train`` read; the
values keep the flags' types (``_check_plan_value``), so a bad file exits 2 naming the
file, the key and the type it needs.
"""

from __future__ import annotations

from dataclasses import fields
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from xpusim.sim.errors import InputError
from xpusim.sim.inputs import read_toml
from xpusim.sim.limits import FLOAT_FLAGS, INT_FLAGS, MAX_INT, check_float, check_int
from xpusim.sim.parallel import ParallelPlan

# Keys a plan file may hold above its [plan] table (sim.api.train; flags override them).
PLAN_EXTRA = ("model", "system", "nodes", "devices", "description")


def load_plan_file(path: str | Path) -> dict[str, Any]:
    """Read a plan TOML (``[plan]`` table or top-level keys); unknown keys are errors."""
    path = Path(path)
    data = read_toml(path, "plan file")  # sim.inputs: the one checked reader
    if "plan" in data:
        table = data["plan"]
        extra = {k: v for k, v in data.items() if k != "plan"}
    else:  # top-level plan keys; model, system, ... may sit beside them as in the [plan] form
        table = {k: v for k, v in data.items() if k not in PLAN_EXTRA}
        extra = {k: v for k, v in data.items() if k in PLAN_EXTRA}
    if not isinstance(table, dict):
        raise InputError(f"plan file {path}: 'plan' = {table!r} must be a [plan] table")
    known = {f.name for f in fields(ParallelPlan)} - {"first_device"}  # inference only
    unknown = [k for k in table if k not in known] + [k for k in extra if k not in PLAN_EXTRA]
    if unknown:
        # A misspelt [plan] header made every key look unknown, model and system included.
        hint = "".join(f" ('{k}': did you mean [plan]?)" for k in unknown
                       if isinstance(data.get(k), dict) and "plan" in get_close_matches(k, ["plan"]))
        raise InputError(
            f"plan file {path}: unknown keys {unknown}{hint}; known: {', '.join(sorted(known))} "
            f"in [plan], {', '.join(PLAN_EXTRA)} above it"
        )
    out = dict(table)
    defaults = {f.name: f.default for f in fields(ParallelPlan)}
    for key, value in out.items():
        _check_plan_value(path, key, value, defaults[key])
    _check_plan_limits(path, out)
    out.update({k: tuple(out[k]) for k in ("recompute_modules", "layer_split") if k in out})
    out["_extra"] = extra
    return out


def _check_plan_value(path: Path, key: str, value: Any, default: Any) -> None:
    """A plan-file value must have the type of the field's default (TOML gives typed values)."""
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, want = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    elif isinstance(default, tuple):
        ok, want = isinstance(value, list), "a list"
    else:
        return
    if not ok:
        raise InputError(f"plan file {path}: {key} = {value!r} must be {want}")


def _check_plan_limits(path: Path, table: dict[str, Any]) -> None:
    """The flags' upper limits (sim.limits) hold for the same keys in a plan file, which
    skipped them: gbs = 1e9 ran for minutes where --gbs 1e9 is refused at once. Lower
    bounds stay with the plan's own checks (dp = 0, gbs = 0 mean "derive")."""
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        try:
            if isinstance(value, int):
                check_int(value, key, None, INT_FLAGS.get(key, (None, MAX_INT))[1])
            else:
                check_float(value, key, None, FLOAT_FLAGS.get(key, (None, None, False))[1])
        except InputError as exc:
            raise InputError(f"plan file {path}: {exc}") from None

