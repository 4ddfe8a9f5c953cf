"""Executors: local pool and Ray give identical rows; a failing point becomes an error row."""

from __future__ import annotations

import tomllib

import pytest
from studies_tiny import TINY_STUDY
from xpusim.sim.errors import InputError
from xpusim.sim.studies.executors import ray_available, run_tasks
from xpusim.sim.studies.search import run_study
from xpusim.sim.studies.study_file import parse_study


def _square(x: int) -> dict:
    if x == 3:
        raise ValueError("three is not allowed")
    return {"x": x, "y": x * x}


@pytest.mark.parametrize("jobs", [1, 2])
def test_local_pool_keeps_order_and_reports_failures(jobs):
    seen = []
    rows = run_tasks(_square, list(range(6)), "local", jobs, on_result=lambda i, r: seen.append(i))
    assert [r.get("y") for r in rows] == [0, 1, 4, None, 16, 25]
    assert rows[3]["error"] == "ValueError: three is not allowed"
    assert sorted(seen) == list(range(6))


def test_bad_executor_arguments():
    with pytest.raises(InputError, match="executor"):
        run_tasks(_square, [1], "slurm")
    with pytest.raises(InputError, match="jobs"):
        run_tasks(_square, [1], "local", 0)


def _study():
    return parse_study(tomllib.loads(TINY_STUDY))


def test_pool_of_two_matches_serial():
    serial = run_study(_study(), jobs=1)
    pooled = run_study(_study(), jobs=2)
    assert pooled.rows == serial.rows


@pytest.mark.skipif(not ray_available(), reason="ray is not installed (pip install 'xpusim[ray]')")
def test_ray_matches_local():
    local = run_study(_study(), jobs=1)
    on_ray = run_study(_study(), executor="ray", jobs=2)
    for a, b in zip(on_ray.rows, local.rows, strict=True):
        diff = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
        assert not diff, f"{a['name']}: ray vs local {diff}"
    assert [r["name"] for r in on_ray.ranked] == [r["name"] for r in local.ranked]
