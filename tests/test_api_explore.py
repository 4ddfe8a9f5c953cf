"""xpusim.explore: the request owns the defaults, as_dict() is the command's --json."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.api.explore import ExploreRequest
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.studies.study_file import load_study

import xpusim

STUDY = Path(__file__).resolve().parents[1] / "examples" / "small_study.toml"


def modelled(doc: dict) -> dict:
    """The document without the run's timings (measurements, not results)."""
    return {k: v for k, v in doc.items() if k != "timings_s"}


def test_kwargs_equal_the_command(capsys, tmp_path):
    out = tmp_path / "cli"
    rc = main(shlex.split(
        f"explore {STUDY} --shortlist 2 --rank-by mfu --no-plots --no-cache --out {out} --json"
    ))  # fmt: skip
    assert rc == 0
    want = json.loads(capsys.readouterr().out)
    got = xpusim.explore(study=str(STUDY), shortlist=2, rank_by="mfu", no_plots=True,
                         no_cache=True, out=out)  # fmt: skip
    assert modelled(got.as_dict()) == modelled(want)
    assert got.rank_by == "mfu" and got.best == want["ranked"][0]
    assert got.files == {"csv": str(out / "points.csv")} and got.devices == want["devices"]


def test_request_object_and_study_object_equal_keywords(tmp_path):
    kw = dict(shortlist=1, no_plots=True, no_cache=True, out=str(tmp_path))
    by_kwargs = xpusim.explore(study=STUDY, **kw)
    by_request = xpusim.explore(ExploreRequest(study=load_study(STUDY), **kw))
    assert modelled(by_kwargs.as_dict()) == modelled(by_request.as_dict())


def test_a_system_object_replaces_the_studys(tmp_path):
    """A what-if over the search: the same study on faster HBM."""
    study = load_study(STUDY)
    system = load_system(study.hardware.system, nodes=study.hardware.nodes)
    fast = replace(system, device=replace(system.device, hbm_bandwidth=4 * system.device.hbm_bandwidth))
    kw = dict(study=study, shortlist=1, no_plots=True, no_cache=True, out=str(tmp_path))
    base, faster = xpusim.explore(**kw), xpusim.explore(**kw, system=fast)
    assert faster.best["name"] == base.best["name"]
    assert faster.best["tokens_per_s"] > base.best["tokens_per_s"]


def test_unknown_keyword_and_bad_values_are_named(tmp_path):
    with pytest.raises(InputError, match="'shortlst'"):
        xpusim.explore(study=STUDY, shortlst=2)
    with pytest.raises(InputError, match="--shortlist must be >= 1"):
        xpusim.explore(study=STUDY, shortlist=0, out=tmp_path)
    with pytest.raises(InputError, match="--rank-by 'speed'"):
        xpusim.explore(study=STUDY, rank_by="speed", out=tmp_path)
    with pytest.raises(InputError, match="needs a study"):
        xpusim.explore()
