"""``whatif``: how a command's headline figure responds to hardware and model fields.

A saved command (a TOML file with ``command`` and ``[args]``, a ``SavedCommand``, or a
request such as ``TrainRequest``) is run at its base point and with one field varied at
a time (``vary``: ``device.hbm_bandwidth=0.5x,2x``, ``system.inter_node_bandwidth=...``,
``model.hidden=...``); the elasticity d ln(metric) / d ln(field) says how bound the
figure is by each field (sim/studies/whatif.py). Like the command, the study writes the
tornado plot (default ``out/whatif/<saved name>_tornado.png``) and, with ``csv``, every
evaluated point.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpusim.sim.api.base import as_json_dict, request_from_kwargs
from xpusim.sim.errors import InputError
from xpusim.sim.report import check_output_file, check_plot_path, write_csv
from xpusim.sim.studies.executors import check_executor
from xpusim.sim.studies.whatif import (
    SavedCommand,
    WhatIfSweep,
    load_saved,
    parse_vary,
    run_whatif,
    saved_from_request,
)


@dataclass(frozen=True)
class WhatIfRequest:
    """``xpusim whatif``'s argument and flags as data."""

    # Required: a saved command TOML path, a SavedCommand, or a command's request
    # (TrainRequest, EpRequest, InferRequest, SdRequest) to study as it is.
    saved: str | Path | SavedCommand | Any = None
    # FIELD=V1,V2,... (one text, or several); empty: the saved file's whatif.vary.
    vary: str | tuple[str, ...] = ()
    metric: str | None = None  # result field to study; default: the file's, else the command's
    jobs: int = 1
    executor: str = "local"  # local | ray
    address: str | None = None  # Ray cluster (auto or HOST:PORT)
    plot: str | None = None  # tornado plot; default out/whatif/<saved name>_tornado.png
    csv: str | None = None  # write every evaluated point as CSV
    progress: bool = False  # progress bar on stderr


@dataclass(frozen=True)
class WhatIfResult:
    """The sensitivities; ``as_dict()`` is ``xpusim whatif --json``."""

    command: str  # the saved command (train, ep, infer, sd)
    metric: str
    base_metric: float  # the metric at the base point
    elasticities: dict[str, float]  # varied field (as written) -> d ln(metric) / d ln(field)
    sensitivity: list[dict[str, Any]]  # per field: elasticity, lowest/highest point, errors
    points: list[dict[str, Any]]  # every evaluated point, base first
    files: dict[str, str]  # the tornado plot and the CSV written
    sweep: WhatIfSweep = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return as_json_dict({**self.sweep.as_dict(), "files": self.files})


def whatif(request: WhatIfRequest | None = None, /, **kwargs: Any) -> WhatIfResult:
    """Run the saved command at its base point and at every variation."""
    req = request_from_kwargs(WhatIfRequest, request, kwargs, "xpusim.whatif")
    if req.plot:
        check_plot_path(req.plot)
    if req.csv:
        check_output_file(req.csv, "--csv")
    check_executor(req.executor, req.address)
    saved, name = _saved(req.saved)
    texts = [req.vary] if isinstance(req.vary, str) else list(req.vary)
    variations = [parse_vary(t) for t in texts or saved.vary]
    total = 1 + sum(len(v.values) for v in variations)
    with _progress_bar(total, req.progress) as bar:
        sweep = run_whatif(
            saved, variations, req.metric, req.executor, req.jobs, req.address,
            on_result=lambda i, r: bar.update(1),
        )  # fmt: skip
    plot = Path(req.plot) if req.plot else Path("out") / "whatif" / f"{name}_tornado.png"
    ok = [s for s in sweep.sensitivity if not math.isnan(s["elasticity"])]
    files = {}
    if ok:
        from xpusim.sim.studies import plots

        files["tornado"] = str(plots.tornado(ok, sweep.metric, sweep.base_metric, plot))
    if req.csv:
        files["csv"] = str(write_csv(req.csv, sweep.points))
    return WhatIfResult(
        command=sweep.command,
        metric=sweep.metric,
        base_metric=sweep.base_metric,
        elasticities={s["field"]: s["elasticity"] for s in sweep.sensitivity},
        sensitivity=sweep.sensitivity,
        points=sweep.points,
        files=files,
        sweep=sweep,
    )


def _saved(saved: Any) -> tuple[SavedCommand, str]:
    """The command to study and the name its outputs take (the file's stem)."""
    if saved is None:
        raise InputError(
            "whatif needs a saved command: a TOML file (command = 'train' | 'ep' | 'infer' "
            "| 'sd' + [args]; see examples/*_whatif.toml) or a command's request"
        )
    if isinstance(saved, str | Path):
        return load_saved(saved), Path(saved).stem
    if isinstance(saved, SavedCommand):
        return saved, Path(saved.path).stem if saved.path else saved.command
    command = saved_from_request(saved)
    return command, command.command


def _progress_bar(total: int, shown: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="what-if points", file=sys.stderr, leave=False,
                dynamic_ncols=True, disable=not shown)  # fmt: skip
