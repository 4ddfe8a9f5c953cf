"""``bench_explore()``: wall seconds of the reference exploration (for ``xpusim bench``).

The study is examples/small_study.toml: ~1,000 candidate models within the budgets
(analytical stage for all of them), the top 30 simulated with plan search, on two
worker processes, with no cache (every point evaluated).
"""

from __future__ import annotations

import time
from pathlib import Path

from xpusim.sim.studies.search import run_study
from xpusim.sim.studies.study_file import load_study

SMALL_STUDY = Path(__file__).resolve().parents[2] / "examples" / "small_study.toml"


def bench_explore(jobs: int = 2, study_path: str | Path = SMALL_STUDY) -> float:
    """Run the reference study end to end and return its wall-clock seconds."""
    start = time.perf_counter()
    run_study(load_study(study_path), executor="local", jobs=jobs, cache_dir=None)
    return time.perf_counter() - start
