"""xpusim.ep / ep_sweep: the request owns the defaults, as_dict() is the command's --json."""

from __future__ import annotations

import json
import shlex

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.api.ep import EpRequest
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.models import load_model

import xpusim

# The README's command.
README_CLI = (
    "ep --model pangu-ultra-moe --system atlas-800t-a2 --nodes 4 --ep 32 "
    "--tokens-per-device 8192 --dispatch flat,hierarchical"
)
README = dict(
    model="pangu-ultra-moe", system="atlas-800t-a2", nodes=4, ep=32,
    tokens_per_device=8192, dispatch="flat,hierarchical",
)  # fmt: skip


def cli_json(capsys, command: str) -> dict:
    rc = main([*shlex.split(command), "--json"])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_readme_command_equals_keywords(capsys):
    want = cli_json(capsys, README_CLI)
    got = xpusim.ep(**README)
    assert got.as_dict() == want
    assert [r.dispatch for r in got.runs] == ["flat", "hierarchical"]
    assert got.runs[1].total_time_s == want["results"][1]["total_time_s"]
    assert got.total_time_s == want["results"][0]["total_time_s"]


def test_many_options_equal_the_command(capsys):
    """One mode (a flat document), derived nodes (the note), Zipf routing, a capacity
    factor, overlap, another dtype and a flag overriding the model's shape."""
    want = cli_json(
        capsys,
        "ep --model pangu-ultra-moe --ep 16 --routing zipf:1.2 --capacity-factor 1.0 "
        "--overlap-compute-s 0.002 --dtype fp8 --top-k 4 --seed 3 --backend flow",
    )
    got = xpusim.ep(
        model="pangu-ultra-moe", ep=16, routing="zipf:1.2", capacity_factor=1.0,
        overlap_compute_s=0.002, dtype="fp8", top_k=4, seed=3, backend="flow",
    )  # fmt: skip
    assert got.as_dict() == want
    assert want["top_k"] == 4 and "note" in want and got.runs[0].note == want["note"]


def test_shape_from_flags_alone(capsys):
    want = cli_json(capsys, "ep --hidden 4096 --top-k 2 --experts 64")
    assert xpusim.ep(hidden=4096, top_k=2, experts=64).as_dict() == want
    assert want["model"] is None and want["ep"] == 8 and want["dispatch"] == "flat"


def test_sweep_equals_the_command_but_the_plot(capsys, tmp_path):
    plot = tmp_path / "ep.png"
    want = cli_json(
        capsys, f"ep --model pangu-ultra-moe --sweep ep=8,16 --dispatch flat,deepep --plot {plot}"
    )
    got = xpusim.ep_sweep(model="pangu-ultra-moe", sweep="ep=8,16", dispatch="flat,deepep")
    assert want["plot"] == str(plot)
    assert got.as_dict() == {**want, "plot": None}
    assert [(r.ep, r.dispatch) for r in got.runs] == [
        (8, "flat"), (8, "deepep"), (16, "flat"), (16, "deepep"),
    ]  # fmt: skip


def test_request_object_equals_keywords():
    assert xpusim.ep(EpRequest(**README)).as_dict() == xpusim.ep(**README).as_dict()


def test_objects_and_tuples_in_place_of_names():
    by_object = xpusim.ep(
        model=load_model("pangu-ultra-moe"), system=load_system("atlas-800t-a2"), nodes=4,
        ep=32, tokens_per_device=8192, dispatch=("flat", "hierarchical"),
    )  # fmt: skip
    assert by_object.as_dict() == xpusim.ep(**README).as_dict()


def test_unknown_keyword_is_named():
    with pytest.raises(InputError, match="'top_p'"):
        xpusim.ep(model="pangu-ultra-moe", top_p=2)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(model="llama-2-7b"), "dense"),
        (dict(hidden=4096), "--top-k, --experts"),
        (dict(hidden=0, top_k=2, experts=8), "--hidden must be >= 1"),
        (dict(model="pangu-ultra-moe", dispatch="bogus"), "--dispatch bogus"),
        (dict(model="pangu-ultra-moe", backend="nccl"), "--backend 'nccl'"),
        (dict(model="pangu-ultra-moe", sweep="ep=8,16"), "ep_sweep"),
    ],
)
def test_bad_input_is_an_input_error(kwargs, words):
    with pytest.raises(InputError, match=words):
        xpusim.ep(**kwargs)


def test_sweep_needs_sizes():
    with pytest.raises(InputError, match="sweep"):
        xpusim.ep_sweep(model="pangu-ultra-moe")
    with pytest.raises(InputError, match="expected ep="):
        xpusim.ep_sweep(model="pangu-ultra-moe", sweep="tp=1,2")
