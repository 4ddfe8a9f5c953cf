"""Run every corpus row through the command a user would type, in process.

A row becomes ``xpusim <command> [kind] --flag value ... --json``; the runner calls
the CLI's own ``main`` with that argv and reads the JSON it prints, so the prediction
is exactly what the user's command gives. A command that refuses the row (exit 2, e.g.
an unknown device or flag) makes the row ``unsupported`` with the command's message.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from xpusim.sim.validation.baseline import naive_payload
from xpusim.sim.validation.corpus import Row
from xpusim.sim.validation.metrics import metric_for, signed_error

# Commands whose first positional argument is a kind (``op gemm``, ``collective all-reduce``).
POSITIONAL_KIND = ("op", "collective")


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


def run_command(argv: list[str]) -> tuple[int, str, str]:
    """Call the CLI in process: (exit code, stdout, stderr)."""
    from xpusim.sim.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse: unknown flag or bad value
            rc = exc.code if isinstance(exc.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def _refusal(stderr: str, rc: int) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    message = lines[-1] if lines else f"exit {rc}"
    return message.removeprefix("xpusim: error: ").removeprefix("xpusim: ")


def run_row(row: Row) -> RowResult:
    start = time.perf_counter()
    argv = row_argv(row)
    base = {
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
    empty = {"predicted": None, "error": None, "baseline_predicted": None, "baseline_error": None}
    if row.unsupported:
        return RowResult(**base, **empty, unsupported=row.unsupported)
    metric = metric_for(row.command, row.metric)
    if metric is None:
        return RowResult(**base, **empty, unsupported=f"no metric {row.metric!r} for {row.command}")
    rc, stdout, stderr = run_command([*argv, "--json"])
    wall = time.perf_counter() - start
    if rc != 0:
        reason = _refusal(stderr, rc)
        if rc == 3:
            reason = f"predicted not to fit: {reason}"
        return RowResult(**base, **empty, unsupported=reason, wall_s=wall)
    payload = json.loads(stdout)
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
    # Each worker imports the CLI modules once, not once per row.
    import xpusim.sim.cli.main  # noqa: F401


def run_rows(rows: list[Row], jobs: int = 1, progress: bool = False) -> list[RowResult]:
    """Results in row order; ``jobs`` > 1 spreads rows over worker processes (the
    results are identical: every row is deterministic and independent). ``progress``
    draws a bar on stderr."""
    from tqdm import tqdm

    with tqdm(total=len(rows), desc="validate", unit="row", disable=not progress,
              leave=False) as bar:
        if jobs <= 1 or len(rows) <= 1:
            out = []
            for r in rows:
                out.append(run_row(r))
                bar.update(1)
            return out
        # Longest rows first (training steps, then serving runs), so no worker is left
        # with a long row at the end; results go back to row order.
        order = sorted(range(len(rows)), key=lambda i: -expected_cost(rows[i]))
        results: list[RowResult | None] = [None] * len(rows)
        with ProcessPoolExecutor(max_workers=jobs, initializer=_warm_imports) as pool:
            for i, result in zip(order, pool.map(run_row, [rows[i] for i in order],
                                                 chunksize=1), strict=True):
                results[i] = result
                bar.update(1)
        return [r for r in results if r is not None]
