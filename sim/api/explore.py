"""``explore``: a design-space search over model hyperparameters (docs/explore.md).

The study file (or a parsed ``Study``) says what to sweep and on which cluster; the
search enumerates the candidates, filters them analytically, simulates the shortlisted
ones over the parallel plans that fit and ranks them. Like the command, the study writes
``points.csv``, three plots (unless ``no_plots``) and its point cache (unless
``no_cache``) under ``out`` (default ``out/explore/<study name>``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.api.base import as_json_dict, request_from_kwargs
from xpusim.sim.errors import InputError
from xpusim.sim.report import make_output_folder, write_csv
from xpusim.sim.studies.executors import check_executor
from xpusim.sim.studies.search import StudyResult, run_study
from xpusim.sim.studies.study_file import RANK_METRICS, Study, load_study
from xpusim.sim.validation.track_record import ranking_record


@dataclass(frozen=True)
class ExploreRequest:
    """``xpusim explore``'s flags as data (``None``: the study file's value)."""

    study: str | Path | Study | None = None  # required: a study TOML path or a parsed Study
    jobs: int = 1  # parallel workers
    executor: str = "local"  # local | ray
    address: str | None = None  # Ray cluster (auto or HOST:PORT); default: a local Ray
    out: str | Path | None = None  # output folder; default out/explore/<study name>
    rank_by: str | None = None  # default: the study's search.rank_by
    shortlist: int | None = None  # default: the study's search.shortlist
    no_cache: bool = False  # re-evaluate every point (no cache is read or written)
    no_plots: bool = False
    # No flag: the cluster as an object (what-if studies of a search); default: the study's
    # hardware.system with hardware.nodes.
    system: System | None = None
    progress: bool = False  # progress bar on stderr


@dataclass(frozen=True)
class ExploreResult:
    """The ranked study; ``as_dict()`` is ``xpusim explore --json``."""

    study: str  # the study's name
    system: str
    devices: int
    rank_by: str
    ranked: list[dict[str, Any]]  # simulated candidates, best first (failed points last)
    best: dict[str, Any] | None  # the top-ranked candidate, None when every point failed
    rows: list[dict[str, Any]]  # every candidate within the budgets (points.csv)
    files: dict[str, str]  # points.csv and the plots written
    search: StudyResult = field(repr=False)  # the full result: summary, timings, the Study

    def ranking_record(self) -> dict[str, Any] | None:
        """How far the published record trusts this ranking (``track_record.ranking_record``)."""
        return ranking_record(self.ranked, self.rank_by)

    def as_dict(self) -> dict[str, Any]:
        return as_json_dict({**self.search.as_dict(), "files": self.files,
                             "ranking_record": self.ranking_record()})


def explore(request: ExploreRequest | None = None, /, **kwargs: Any) -> ExploreResult:
    """Run the study: enumerate, filter, simulate the shortlist, rank."""
    req = request_from_kwargs(ExploreRequest, request, kwargs, "xpusim.explore")
    study = _study(req)
    check_executor(req.executor, req.address)
    if req.jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {req.jobs}")
    out = Path(req.out) if req.out else Path("out") / "explore" / study.name
    make_output_folder(out, "--out", "points.csv, the plots and the cache")
    result = run_study(
        study,
        executor=req.executor,
        jobs=req.jobs,
        address=req.address,
        cache_dir=None if req.no_cache else out / "cache",
        progress=_progress_bar if req.progress else None,
        system=req.system,
    )
    files = write_outputs(result, out, not req.no_plots)
    ok = [r for r in result.ranked if not r.get("error")]
    return ExploreResult(
        study=study.name,
        system=result.system.name,
        devices=result.system.num_devices,
        rank_by=study.search.rank_by,
        ranked=result.ranked,
        best=ok[0] if ok else None,
        rows=result.rows,
        files=files,
        search=result,
    )


def _study(req: ExploreRequest) -> Study:
    """The study with the request's overrides of its search section."""
    if req.study is None:
        raise InputError("explore needs a study: a TOML file (see examples/small_study.toml)")
    study = req.study if isinstance(req.study, Study) else load_study(req.study)
    search = study.search
    if req.rank_by is not None:
        if req.rank_by not in RANK_METRICS:
            raise InputError(
                f"--rank-by {req.rank_by!r}: choose one of {', '.join(RANK_METRICS)}"
            )
        search = search.model_copy(update={"rank_by": req.rank_by})
    if req.shortlist is not None:
        if req.shortlist < 1:
            raise InputError(f"--shortlist must be >= 1, got {req.shortlist}")
        search = search.model_copy(update={"shortlist": req.shortlist})
    return study.model_copy(update={"search": search})


def _progress_bar(total: int) -> Callable[[], None]:
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        desc="simulating shortlisted models",
        unit="model",
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )

    def tick() -> None:
        bar.update(1)
        if bar.n >= bar.total:
            bar.close()

    if total == 0:
        bar.close()
    return tick


def write_outputs(result: StudyResult, out: Path, with_plots: bool) -> dict[str, str]:
    """points.csv and (``with_plots``, when something was ranked) the three plots."""
    files = {"csv": str(write_csv(out / "points.csv", result.rows))}
    if with_plots and result.ranked:
        from xpusim.sim.studies import plots

        s = result.study
        files["throughput_vs_total"] = str(
            plots.throughput_vs_total(result.rows, out / "explore_throughput_vs_total.png")
        )
        files["pareto"] = str(
            plots.pareto_throughput_activated(result.ranked, out / "explore_pareto_activated.png")
        )
        files["heatmap"] = str(
            plots.heatmap(
                result.ranked,
                s.plots.heatmap_x,
                s.plots.heatmap_y,
                s.search.rank_by,
                out / f"explore_heatmap_{s.plots.heatmap_x}_{s.plots.heatmap_y}.png",
            )
        )
    return files
