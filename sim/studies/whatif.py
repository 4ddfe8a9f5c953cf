"""What-if hardware (and model) studies: vary one field at a time, measure the elasticity.

A *saved command* is a TOML file holding one ``xpusim`` command and its arguments::

    command = "train"          # or "ep", "infer" (one prefill/decode step), "sd"
    [args]                     # the command's flags: `tp = 8` is --tp 8,
    model = "pangu-ultra-moe"  # `no-sequence-parallel = true` is --no-sequence-parallel
    system = "atlas-800t-a2"
    nodes = 768
    tp = 8
    ...
    [whatif]                   # optional defaults for `xpusim whatif`
    metric = "tokens_per_s"
    vary = ["device.hbm_bandwidth=0.5x,1x,2x"]

The ``[args]`` are read into the command's request (``TrainRequest``, ``EpRequest``, ...:
``xpusim.sim.api``) as the command line reads its flags, unknown keys refused by name
with the file; a point of the study is that request with the varied ``System`` and
``ModelSpec`` objects in place of their names, run through the command's study function.
No command line is built or parsed.

A *variation* ``FIELD=V1,V2,...`` names a field by a dotted path — ``device.*``
(``xpusim.hwprofiles.spec.Device``, incl. ``device.efficiency.*`` and dict entries such as
``device.matrix_peak.bf16``), ``system.*`` (``System``; aliases below) or
``model.*`` (``ModelSpec``, incl. ``model.moe.*``, ``model.mla.*``; for ``sd`` the
target model) — and values
that are multipliers of the base value (``0.5x``, ``2x``; on a dict every entry is
scaled) or absolute numbers in SI units. Fields are varied one at a time around
the base point (frozen dataclasses changed with ``dataclasses.replace``).

The elasticity of the metric to a field is the least-squares slope of
ln(metric) against ln(value / base value) over the base and the varied points:
+1 means the metric scales in proportion (fully bound by that field), 0 means the
field does not matter at this operating point.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import System
from xpusim.sim.api.base import request_from_flags
from xpusim.sim.api.commands import api_command, command_for_request
from xpusim.sim.api.ep import ep
from xpusim.sim.api.infer import infer
from xpusim.sim.api.sd import sd
from xpusim.sim.api.train import (
    TrainRequest,
    TrainSetup,
    lower_train,
    prepare_train,
    priced_result,
    train,
)
from xpusim.sim.errors import InputError
from xpusim.sim.limits import (
    MAX_DIM,
    MAX_RANKS,
    check_float,
    check_int,
)
from xpusim.sim.models import load_model
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.studies.executors import run_tasks
from xpusim.sim.tomlfile import read_toml
from xpusim.sim.training.simulate import check_shape
from xpusim.sim.training.steady import LoweredTraining
from xpusim.sim.units import split_list

COMMANDS = ("train", "ep", "infer", "sd")
# The system of a saved command that names none (train's and ep's default).
DEFAULT_SYSTEM = "atlas-800t-a2"
SYSTEM_ALIASES = {
    "system.intra_node_bandwidth": "system.intra_link.bandwidth",
    "system.intra_node_latency": "system.intra_link.latency",
    "system.inter_node_bandwidth": "system.nic.bandwidth",
    "system.inter_node_latency": "system.nic.latency",
    "system.hccs_bandwidth": "system.intra_link.bandwidth",
    "system.roce_bandwidth": "system.nic.bandwidth",
}
DEFAULT_METRIC = {
    "train": "tokens_per_s",
    "ep": "total_time_s",
    "infer": "tokens_per_s",
    "sd": "peak_speedup",
}


@dataclass(frozen=True)
class SavedCommand:
    """One command to study: its name, its ``[args]`` as written (flag names) and the
    command's request read from them."""

    command: str
    args: dict[str, Any]
    metric: str
    vary: tuple[str, ...]
    path: str = ""
    request: Any = None  # the command's request (TrainRequest, ...) read from ``args``


def load_saved(path: str | Path) -> SavedCommand:
    data = read_toml(path, "saved command")
    unknown = sorted(set(data) - {"command", "args", "whatif", "description"})
    if unknown:
        raise InputError(f"{path}: unknown keys {unknown}; use command, args, whatif, description")
    command = data.get("command")
    if command not in COMMANDS:
        raise InputError(f"{path}: command = {command!r}; whatif supports {', '.join(COMMANDS)}")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise InputError(f"{path}: [args] must be a table")
    wi = data.get("whatif", {})
    bad = sorted(set(wi) - {"metric", "vary"})
    if bad:
        raise InputError(f"{path}: unknown keys whatif.{bad}; use metric, vary")
    _check_whatif_table(path, wi)
    return SavedCommand(
        command,
        dict(args),
        wi.get("metric", DEFAULT_METRIC[command]),
        tuple(wi.get("vary", ())),
        str(path),
        read_request(command, args, f"{path}: args"),
    )


def _check_whatif_table(path: str | Path, wi: dict[str, Any]) -> None:
    """[whatif] metric is a result field's name, vary a list of FIELD=V1,V2 texts:
    `vary = 5` and `metric = [1]` raised TypeErrors."""
    metric = wi.get("metric", "")
    if not isinstance(metric, str):
        raise InputError(f"{path}: whatif.metric = {metric!r} must be a result field's name, "
                         'e.g. metric = "tokens_per_s"')
    vary = wi.get("vary", [])
    if not isinstance(vary, list) or not all(isinstance(v, str) for v in vary):
        raise InputError(f"{path}: whatif.vary = {vary!r} must be a list of texts, e.g. "
                         'vary = ["device.hbm_bandwidth=0.5x,2x"]')


def read_request(command: str, args: dict[str, Any], where: str) -> Any:
    """The command's request from its flags (``where`` starts every message)."""
    if command == "infer" and args.get("serve"):
        raise InputError(f"{where}: whatif runs single infer steps; drop 'serve'")
    cls, _ = api_command(command)
    return request_from_flags(cls, args, where)


def saved_from_request(request: Any, metric: str | None = None) -> SavedCommand:
    """A request (``TrainRequest``, ``EpRequest``, ...) as the command to study; its
    non-default fields stand for the saved ``[args]``."""
    command = command_for_request(request)
    if command not in COMMANDS:
        raise InputError(
            f"whatif studies {', '.join(COMMANDS)}; got a {type(request).__name__}"
        )
    args = {
        f.name: getattr(request, f.name)
        for f in fields(request)
        if getattr(request, f.name) != f.default
    }
    # No file: messages name the request type where they would name the file.
    return SavedCommand(
        command, args, metric or DEFAULT_METRIC[command], (), type(request).__name__, request
    )


# Largest varied value of a float field (SI units): above any rate or capacity
# (sim.limits.MAX_RATE is 1e21), so no product of fields overflows to inf.
MAX_VARIED = 1e24


@dataclass(frozen=True)
class Variation:
    field: str  # canonical dotted path (aliases resolved)
    label: str  # as the user wrote it
    values: tuple[str, ...]  # "2x" or "1.6e12"


def parse_vary(text: str) -> Variation:
    name, sep, rest = text.partition("=")
    values = tuple(split_list(rest, f"--vary {name.strip()}")) if sep and rest.strip() else ()
    if not sep or not name.strip() or not values:
        raise InputError(
            f"--vary '{text}': expected FIELD=V1,V2,... e.g. device.hbm_bandwidth=0.5x,1x,2x"
        )
    name = name.strip()
    root = name.split(".")[0]
    if root not in ("device", "system", "model"):
        raise InputError(f"--vary '{name}': the field must start with device., system. or model.")
    for v in values:
        _number(v.removesuffix("x"), name)
    return Variation(SYSTEM_ALIASES.get(name, name), name, values)


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(
            f"--vary {name}: value '{text}' is not a number or multiplier (e.g. 2x, 0.5x, 1.6e12)"
        ) from None
    # The same rules as flags and files (sim.limits): finite, and > 0 for a multiplier
    # or a size; 1e400 is inf, which would make every elasticity nan.
    return check_float(value, f"--vary {name}: value '{text}'", 0.0, MAX_VARIED, lo_open=True)


def _get(obj: Any, parts: list[str], name: str) -> Any:
    for part in parts:
        if isinstance(obj, dict):
            if part not in obj:
                raise InputError(f"--vary {name}: no entry '{part}'; have {', '.join(obj)}")
            obj = obj[part]
        elif is_dataclass(obj) and part in {f.name for f in fields(obj)}:
            obj = getattr(obj, part)
        else:
            known = ", ".join(f.name for f in fields(obj)) if is_dataclass(obj) else "-"
            raise InputError(
                f"--vary {name}: '{part}' is not a field of {type(obj).__name__}; fields: {known}"
            )
    return obj


def _set(obj: Any, parts: list[str], value: Any) -> Any:
    head, rest = parts[0], parts[1:]
    new = (
        value
        if not rest
        else _set(obj[head] if isinstance(obj, dict) else getattr(obj, head), rest, value)
    )
    if isinstance(obj, dict):
        return {**obj, head: new}
    return replace(obj, **{head: new})


def _apply_value(base: Any, value: str, name: str) -> tuple[Any, float]:
    """(new field value, multiplier of the base value)."""
    if isinstance(base, dict):
        if not value.endswith("x"):
            raise InputError(
                f"--vary {name}: a table of values can only be scaled (e.g. 2x); "
                f"or name one entry, e.g. {name}.{next(iter(base), 'bf16')}"
            )
        m = _number(value[:-1], name)
        return {k: v * m for k, v in base.items()}, m
    if base is None or isinstance(base, bool) or not isinstance(base, int | float):
        # reprlib: a tuple of MemoryLevel printed whole ran to 600 characters
        raise InputError(f"--vary {name}: the field is not numeric ({reprlib.repr(base)}); "
                         "vary a number field (a peak, bandwidth, capacity or size)")
    if value.endswith("x"):
        m = _number(value[:-1], name)
        new = base * m
    else:
        new = _number(value, name)
        m = new / base if base else math.nan
    if isinstance(base, int):
        # A count stays a whole number within the limits of a tensor dimension.
        new = check_int(round(new), f"--vary {name}: value {value} gives", 1, MAX_DIM)
        m = new / base if base else math.nan
    else:
        new = check_float(new, f"--vary {name}: value {value} gives", 0.0, MAX_VARIED, True)
    if new <= 0 or not m > 0:
        raise InputError(f"--vary {name}: value {value} gives {new}; it must be > 0")
    return new, m


@dataclass(frozen=True)
class Point:
    """Inputs of one evaluation (picklable for the executors)."""

    saved: SavedCommand
    system: System
    spec: ModelSpec | None


def _saved_value(saved: SavedCommand, key: str) -> Any:
    """A field of the saved request (its default when the file does not set it; None
    when the command has no such field)."""
    return getattr(saved.request, key, None)


def base_inputs(saved: SavedCommand) -> tuple[System, ModelSpec | None]:
    """The System and ModelSpec the saved command runs on: the objects variations change."""
    system = _base_system(saved)
    # The model that `model.*` variations change: sd's target, the other commands' model.
    key = "target" if saved.command == "sd" else "model"
    model = _saved_value(saved, key)
    spec = model if isinstance(model, ModelSpec) else load_model(model) if model else None
    if saved.command in ("train", "infer", "sd") and spec is None:
        raise InputError(f"{saved.path}: args.{key} is required for command = '{saved.command}'")
    return system, spec


def _base_system(saved: SavedCommand) -> System:
    given = _saved_value(saved, "system") or DEFAULT_SYSTEM
    nodes = _saved_value(saved, "nodes")
    if nodes is not None:
        nodes = check_int(nodes, f"{saved.path}: args.nodes", 1, MAX_RANKS)
    if isinstance(given, System):
        return given
    if nodes is None and saved.command == "train" and _saved_value(saved, "devices") is None:
        # As `xpusim train`: enough nodes for the plan's tp x cp x pp x dp devices (with
        # `devices`, the first N of the profile's nodes, as train --devices).
        per_node = load_system(given).devices_per_node
        world = 1
        for key in ("tp", "cp", "pp", "dp"):
            value = _saved_value(saved, key)
            world *= max(int(value), 1) if isinstance(value, int | float) else 1
        nodes = max(1, -(-world // per_node))
    return load_system(given, nodes=nodes)


def vary_point(base: Point, field_path: str, value: str, name: str) -> tuple[Point, float]:
    parts = field_path.split(".")
    root, rest = parts[0], parts[1:]
    if not rest:
        raise InputError(f"--vary {name}: name a field, e.g. {root}.hbm_bandwidth")
    if root == "model":
        if base.spec is None:
            raise InputError(f"--vary {name}: this saved command has no model")
        current = _get(base.spec, rest, name)
        new, m = _apply_value(current, value, name)
        return replace(base, spec=_set(base.spec, rest, new)), m
    path = ["device", *rest] if root == "device" else rest
    current = _get(base.system, path, name)
    new, m = _apply_value(current, value, name)
    return replace(base, system=_set(base.system, path, new)), m


def train_request(point: Point) -> TrainRequest:
    """The request `xpusim train` runs for the saved arguments, with the point's (varied)
    ModelSpec and System in place of their names (the System carries the node count)."""
    return replace(point.saved.request, model=point.spec, system=point.system, nodes=None)


def _train_result(point: Point) -> dict[str, Any]:
    result = train(train_request(point)).as_dict()
    return {k: v for k, v in result.items() if isinstance(v, int | float | bool)}


@dataclass
class TrainRepricer:
    """Train points evaluated in one process, lowering only when needed: a point whose
    model, resolved plan (recompute chosen on its own memory) and options are those of the
    last lowering, on a system of the same shape (``check_shape``: devices, devices per
    node, default attention kernel), prices that lowering on its own hardware — a
    bandwidth or FLOP-rate variation re-prices the graphs, nothing is lowered again. The
    result is the one ``train`` gives (tests/test_whatif_reprice.py)."""

    setup: TrainSetup | None = None
    lowered: LoweredTraining | None = None
    lowerings: int = 0

    def __call__(self, point: Point) -> dict[str, Any]:
        try:
            setup = prepare_train(train_request(point))
            if not self._reusable(setup):
                self.setup, self.lowered = setup, lower_train(setup)
                self.lowerings += 1
            assert self.lowered is not None
            result = priced_result(setup, self.lowered).as_dict()
        except Exception as exc:  # noqa: BLE001 - as evaluate: the sweep goes on
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {k: v for k, v in result.items() if isinstance(v, int | float | bool)}

    def _reusable(self, setup: TrainSetup) -> bool:
        if self.setup is None or self.lowered is None:
            return False
        same = (setup.spec, setup.plan, setup.options) == (
            self.setup.spec, self.setup.plan, self.setup.options
        )
        if not same:
            return False
        try:
            for step in self.lowered.steps:
                check_shape(step, setup.system)
        except InputError:
            return False
        return True


def _ep_result(point: Point) -> dict[str, Any]:
    """The first dispatch mode of `xpusim ep`, with the point's (varied) System and MoE
    model in place of their names (the request's nodes, if any, still size the EP group)."""
    request = replace(point.saved.request, system=point.system)
    if point.spec is not None:
        request = replace(request, model=point.spec)
    result = ep(request).runs[0].simulation.as_dict()
    return {k: v for k, v in result.items() if isinstance(v, int | float | bool)}


def _infer_result(point: Point) -> dict[str, Any]:
    """One prefill or decode step, as `xpusim infer` without --serve computes it, with the
    point's (varied) ModelSpec and System in place of their names."""
    request = replace(point.saved.request, model=point.spec, system=point.system, nodes=None)
    result = infer(request).as_dict()
    return {k: v for k, v in result.items() if isinstance(v, int | float | bool)}


def _sd_result(point: Point) -> dict[str, Any]:
    """The SD study on the point's system and target: its peak and the row at the peak.

    ``peak_<field>`` holds each field of the batch with the highest speedup (e.g.
    ``peak_speedup``, ``peak_batch``, ``peak_target_efficiency``); with one ``batch``
    value that is simply that batch's row.
    """
    request = replace(point.saved.request, target=point.spec, system=point.system, nodes=None)
    group = sd(request).groups[0]
    out: dict[str, Any] = {f"peak_{k}": v for k, v in group.peak.as_dict().items()}
    out["band_min_batch"], out["band_max_batch"] = group.band
    return {k: v for k, v in out.items() if isinstance(v, int | float | bool)}


def evaluate(point: Point) -> dict[str, Any]:
    """Run the saved command on the point; never raises (errors become a field)."""
    try:
        if point.saved.command == "train":
            return _train_result(point)
        if point.saved.command == "infer":
            return _infer_result(point)
        if point.saved.command == "sd":
            return _sd_result(point)
        return _ep_result(point)
    except Exception as exc:  # noqa: BLE001 - a failing point is reported, the sweep goes on
        return {"error": f"{type(exc).__name__}: {exc}"}


def elasticity(multipliers: list[float], metrics: list[float]) -> float:
    """Least-squares slope of ln(metric) on ln(multiplier); nan with < 2 distinct points."""
    pts = [
        (math.log(m), math.log(v))
        for m, v in zip(multipliers, metrics, strict=True)
        if m > 0 and v and v > 0
    ]
    xs = {x for x, _ in pts}
    if len(xs) < 2:
        return math.nan
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


@dataclass(frozen=True)
class WhatIfSweep:
    """The evaluated points and the elasticity of the metric to each varied field."""

    command: str
    metric: str
    base_metric: float
    points: list[dict[str, Any]]  # one row per evaluated point (base first)
    sensitivity: list[dict[str, Any]]  # one row per varied field

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "metric": self.metric,
            "base_metric": self.base_metric,
            "sensitivity": self.sensitivity,
            "points": self.points,
        }


def _metric(result: dict[str, Any], metric: str) -> float | None:
    value = result.get(metric)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def sweep_points(
    saved: SavedCommand, variations: list[Variation]
) -> tuple[list[Point], list[tuple[str, str, float]]]:
    """The base point then each varied point, and each one's (field, value, multiplier)."""
    if saved.request is None:  # built by hand from its [args]
        request = read_request(saved.command, saved.args, f"{saved.path}: args")
        saved = replace(saved, request=request)
    system, spec = base_inputs(saved)
    base = Point(saved, system, spec)
    points: list[Point] = [base]
    labels: list[tuple[str, str, float]] = [("base", "1x", 1.0)]
    for var in variations:
        for value in var.values:
            point, m = vary_point(base, var.field, value, var.label)
            if m == 1.0:
                continue  # the base point itself
            points.append(point)
            labels.append((var.label, value, m))
    return points, labels


def run_whatif(
    saved: SavedCommand,
    variations: list[Variation],
    metric: str | None = None,
    executor: str = "local",
    jobs: int = 1,
    address: str | None = None,
    on_result: Callable[[int, dict], None] | None = None,
) -> WhatIfSweep:
    """Evaluate the base point and every one-at-a-time variation; elasticities per field."""
    metric = metric or saved.metric
    if not variations:
        raise InputError("give at least one --vary FIELD=V1,V2,... (or whatif.vary in the file)")
    points, labels = sweep_points(saved, variations)
    # One process: train points re-price the base point's lowering (TrainRepricer); with
    # several workers each point runs the whole study where it lands.
    in_process = saved.command == "train" and executor == "local" and jobs == 1
    task = TrainRepricer() if in_process else evaluate
    # Locally the base point runs first and alone: a metric the command does not report, or a
    # base plan that fails, is refused before the variations are simulated (README: every
    # input is checked before work starts). Ray runs all at once: a second cluster start
    # would cost more than the points.
    first = 1 if executor == "local" else len(points)
    results = run_tasks(task, points[:first], executor, 1 if first == 1 else jobs, address,
                        on_result)
    base_value = _metric(results[0], metric)
    if base_value is None:
        err = results[0].get("error") or f"metric '{metric}' not in the result; have " + ", ".join(
            k for k, v in results[0].items() if isinstance(v, int | float)
        )
        raise InputError(f"base point: {err}")
    rest_done = None if on_result is None else (lambda i, r: on_result(i + first, r))
    results += run_tasks(task, points[first:], executor, jobs, address, rest_done)
    rows = [
        {
            "field": name,
            "value": value,
            "multiplier": m,
            metric: _metric(res, metric),
            "error": res.get("error"),
            "oom": res.get("oom"),
        }
        for (name, value, m), res in zip(labels, results, strict=True)
    ]
    sensitivity = [_sensitivity(var, rows, metric, base_value) for var in variations]
    return WhatIfSweep(saved.command, metric, base_value, rows, sensitivity)


def _sensitivity(
    var: Variation, rows: list[dict[str, Any]], metric: str, base_value: float
) -> dict[str, Any]:
    """One varied field: its elasticity and the metric at its lowest and highest value."""
    mine = [r for r in rows if r["field"] == var.label and r[metric] is not None]
    mults = [1.0] + [r["multiplier"] for r in mine]
    values = [base_value] + [r[metric] for r in mine]
    lo = min(range(len(mults)), key=lambda i: mults[i])
    hi = max(range(len(mults)), key=lambda i: mults[i])
    return {
        "field": var.label,
        "path": var.field,
        "elasticity": elasticity(mults, values),
        "low_label": f"{mults[lo]:g}x",
        "high_label": f"{mults[hi]:g}x",
        "low_metric": values[lo],
        "high_metric": values[hi],
        "errors": sum(1 for r in rows if r["field"] == var.label and r["error"]),
    }
