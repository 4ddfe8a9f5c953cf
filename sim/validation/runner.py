"""Run every corpus row through the study its command names, in process.

A row is a command name and a table of its flags (``[row.args]``: ``attention-impl =
"standard"``, ``no-sequence-parallel = true``); the runner reads the flags into the
command's request (``xpusim.sim.api.commands``), calls the study function and scores the
document its result prints with ``--json``, so the prediction is exactly what the user's
command ``xpusim <command> [kind] --flag value ...`` gives. A study that refuses the row
(bad input, e.g. an unknown device) makes the row ``unsupported`` with the message; a
negative verdict (does not fit) makes it ``unsupported`` as "predicted not to fit".
"""

from __future__ import annotations

import shlex
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from xpusim.sim.api.commands import api_command, run_flags
from xpusim.sim.errors import InputError, NegativeVerdict, ProfileError
from xpusim.sim.gcpause import gc_paused
from xpusim.sim.validation.baseline import naive_payload
from xpusim.sim.validation.corpus import Row
from xpusim.sim.validation.metrics import metric_for, signed_error

# Commands whose first positional argument is a kind (``op gemm``, ``collective all-reduce``).
POSITIONAL_KIND = ("op", "collective")
# The commands corpus rows use (``serve``: ``infer`` with ``serve = true``).
ROW_COMMANDS = ("train", "infer", "serve", "sd", "ep", "collective", "attention", "op")


@dataclass(frozen=True)
class RowResult:
    id: str
    category: str
    role: str
    metric: str
    unit: str
    measured: float
    predicted: float | None
    error: float | None
    baseline_predicted: float | None
    baseline_error: float | None
    source: str
    reliability: str
    hardware: str
    command: str
    unsupported: str = ""
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.unsupported:
            out.pop("unsupported")
        return out


def row_argv(row: Row) -> list[str]:
    """The command line (without ``xpusim`` and ``--json``) that predicts ``row``."""
    args = dict(row.args)
    argv = [row.command]
    if row.command in POSITIONAL_KIND:
        argv.append(str(args.pop("kind")))
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def predict(row: Row) -> dict[str, Any]:
    """The ``--json`` document of the row's command, through its study function.

    Raises ``InputError``/``ProfileError`` when the study refuses the row and
    ``NegativeVerdict`` when its answer is negative."""
    doc: dict[str, Any] = run_flags(row.command, row.args, f"row {row.id}: args").as_dict()
    return doc


def _last_line(text: str) -> str:
    # A refusal is shown on one line: the message's last, as the command's stderr shows it.
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "refused"


def run_row(row: Row, payloads: dict[tuple[str, ...], dict[str, Any]] | None = None) -> RowResult:
    """The row's result. ``payloads`` (command line -> ``--json`` document) lets rows
    whose command lines are identical share one run: the document is a deterministic
    function of the command line, so a second row reuses the first's and is scored
    against its own measurement (its ``wall_s`` is then the scoring alone). The corpus
    holds such pairs where two releases of a table repeat one run's plan (T31/T32/T33
    Megatron-Bridge rows, MLPerf rounds): ~9 s of CPU over ``validate --published``.
    The cyclic garbage collector is paused while the row runs
    (``gcpause``): a row's objects (a serving run's requests and step-pricing caches, a
    training step's task graph) stay reachable until it ends, yet their allocation set
    off ~80 full collections per worker over ``validate --published`` (16 of ~100 s CPU,
    2026-12-06) that freed next to nothing. Results are unaffected; the few reference
    cycles a row leaves are collected after it (peak RSS 185 -> 190 MB)."""
    with gc_paused():
        return _run_row(row, {} if payloads is None else payloads)


def _run_row(row: Row, payloads: dict[tuple[str, ...], dict[str, Any]]) -> RowResult:
    start = time.perf_counter()
    argv = row_argv(row)
    base: dict[str, Any] = {
        "id": row.id,
        "category": row.category,
        "role": row.role,
        "metric": row.metric,
        "unit": row.unit,
        "measured": row.measured,
        "source": row.source,
        "reliability": row.reliability,
        "hardware": row.hardware,
        "command": "xpusim " + shlex.join(argv),
    }
    empty: dict[str, Any] = {"predicted": None, "error": None, "baseline_predicted": None, "baseline_error": None}
    if row.unsupported:
        return RowResult(**base, **empty, unsupported=row.unsupported)
    metric = metric_for(row.command, row.metric)
    if metric is None:
        return RowResult(**base, **empty, unsupported=f"no metric {row.metric!r} for {row.command}")
    key = tuple(argv)
    try:
        payload = payloads.get(key) or predict(row)
    except (InputError, ProfileError) as exc:
        reason = _last_line(str(exc))
        return RowResult(**base, **empty, unsupported=reason, wall_s=time.perf_counter() - start)
    except NegativeVerdict as exc:
        reason = f"predicted not to fit: {_last_line(str(exc))}"
        return RowResult(**base, **empty, unsupported=reason, wall_s=time.perf_counter() - start)
    wall = time.perf_counter() - start
    payloads[key] = payload  # only answers are shared: a refusal names its row
    predicted = metric(row.args, payload)
    baseline = metric(row.args, naive_payload(row.command, row.args, payload))
    return RowResult(
        **base,
        predicted=predicted,
        error=signed_error(predicted, row.measured, row.unit),
        baseline_predicted=baseline,
        baseline_error=signed_error(baseline, row.measured, row.unit),
        wall_s=wall,
    )


def expected_cost(row: Row) -> float:
    """A rough rank of how long a row's command takes (scheduling only)."""
    if row.command == "train":
        return 1e9 + float(row.args.get("pp", 1))
    if row.command == "infer" and row.args.get("serve"):
        return 1e6 + float(row.args.get("output-len", 1)) * float(row.args.get("requests", 1))
    return 1.0


def _warm_imports() -> None:
    # Each worker imports the row commands' studies once, not once per row.
    for name in ROW_COMMANDS:
        api_command(name)


# The arguments of a serving row that place its deployment: rows that share them run
# in one process, one configuration (model, dtype, engine, ...) after another. Not the
# engine: rows of several engine releases on one system and plan price the same
# collectives (the TP all-reduce of each batch size of models of one width), which the
# system's collective pricer (``priced_step.shared_table``) then prices once; split by
# engine over two workers, 144,446 collectives were priced against ~116,000 distinct
# (2026-12-07, twenty-first session, ~60 µs each).
_DEPLOYMENT_ARGS = ("system", "nodes", "tp", "ep")
# A serving row's arguments that change its requests, not the deployment it prices.
_WORKLOAD_ARGS = ("rate", "requests", "prompt-len", "output-len", "seed", "trace",
                  "max-num-seqs", "max-batched-tokens", "progress")


def share_key(row: Row) -> tuple[object, ...]:
    """Serving rows on one deployment (system, plan) share a key: they run one
    after another in one process, each model and dtype's rows in a row, so that their
    step simulators share pricing caches (``priced_step.step_memo``, ``shared_table``).
    Any other row shares its key only with rows of the same command line (which then
    share one run: ``run_row``). Scheduling only: a row's result does not depend on
    which rows ran before it."""
    if row.command == "infer" and row.args.get("serve"):
        return ("serve", *(str(row.args.get(k)) for k in _DEPLOYMENT_ARGS))
    return ("row", *row_argv(row))


def _config(row: Row) -> list[tuple[str, str]]:
    """A serving row's arguments but the workload's: its step-simulator configuration."""
    return sorted((k, str(v)) for k, v in row.args.items() if k not in _WORKLOAD_ARGS)


def _groups(rows: list[Row]) -> list[list[int]]:
    """Row indices by ``share_key``, in order of first appearance, each group's rows by
    configuration (stable: in corpus order within one)."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(share_key(row), []).append(i)
    return [sorted(g, key=lambda i: _config(rows[i])) for g in groups.values()]


def _run_group(rows: list[Row]) -> list[RowResult]:
    payloads: dict[tuple[str, ...], dict[str, Any]] = {}
    return [run_row(r, payloads) for r in rows]


def run_rows(rows: list[Row], jobs: int = 1, progress: bool = False) -> list[RowResult]:
    """Results in row order; ``jobs`` > 1 spreads rows over worker processes (the
    results are identical: every row is deterministic and independent). ``progress``
    draws a bar on stderr."""
    from tqdm import tqdm

    groups = _groups(rows)
    results: list[RowResult | None] = [None] * len(rows)
    with tqdm(total=len(rows), desc="validate", unit="row", disable=not progress,
              leave=False) as bar:
        if jobs <= 1 or len(groups) <= 1:
            for group in groups:
                payloads: dict[tuple[str, ...], dict[str, Any]] = {}
                for i in group:
                    results[i] = run_row(rows[i], payloads)
                    bar.update(1)
        else:
            # Longest groups first (training steps, then serving runs), so no worker is
            # left with a long one at the end; results go back to row order.
            groups.sort(key=lambda g: -sum(expected_cost(rows[i]) for i in g))
            with ProcessPoolExecutor(max_workers=jobs, initializer=_warm_imports) as pool:
                done = pool.map(_run_group, [[rows[i] for i in g] for g in groups], chunksize=1)
                for group, out in zip(groups, done, strict=True):
                    for i, result in zip(group, out, strict=True):
                        results[i] = result
                    bar.update(len(group))
    return [r for r in results if r is not None]
