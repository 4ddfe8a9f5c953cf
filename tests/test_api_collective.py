"""xpusim.collective / collective_sweep: the request owns the defaults, as_dict() is the
command's --json."""

from __future__ import annotations

import json
import shlex

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.api.collective import CollectiveRequest
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError

import xpusim

# The README's command (`xpusim collective all-reduce --system dgx-h100 --ranks 8 --bytes 1GiB`).
README = dict(kind="all-reduce", system="dgx-h100", ranks=8, bytes="1GiB")


def cli_json(capsys, command: str) -> dict:
    rc = main([*shlex.split(command), "--json"])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_readme_command_equals_keywords(capsys):
    want = cli_json(capsys, "collective all-reduce --system dgx-h100 --ranks 8 --bytes 1GiB")
    got = xpusim.collective(**README)
    assert got.as_dict() == want
    assert got.busbw_bytes_per_s == want["bus_bandwidth"]
    assert got.time_s == want["time_s"] and got.algorithm == want["algorithm"]


def test_many_options_equal_the_command(capsys):
    """Derived nodes (the note), a fixed algorithm, the flow backend."""
    want = cli_json(
        capsys,
        "collective all-gather --system atlas-800t-a2 --ranks 16 --bytes 256MiB "
        "--algorithm ring --protocol auto --backend flow",
    )
    got = xpusim.collective(
        kind="all-gather", system="atlas-800t-a2", ranks=16, bytes="256MiB",
        algorithm="ring", backend="flow",
    )  # fmt: skip
    assert got.as_dict() == want
    assert got.nodes == 2 and "ceil(16/8)" in got.note


def test_defaults_are_the_commands(capsys):
    assert xpusim.collective(kind="all-reduce").as_dict() == cli_json(
        capsys, "collective all-reduce"
    )


def test_sweep_equals_the_command_but_the_plot(capsys, tmp_path):
    plot = tmp_path / "sweep.png"
    want = cli_json(
        capsys, f"collective all-reduce --system dgx-h100 --ranks 8 --sweep 1MiB:8MiB --plot {plot}"
    )
    got = xpusim.collective_sweep(kind="all-reduce", system="dgx-h100", ranks=8, sweep="1MiB:8MiB")
    assert want["plot"] == str(plot) and got.as_dict()["plot"] is None
    assert got.as_dict() == {**want, "plot": None}
    assert [p.bytes for p in got.points] == [2**20, 2**21, 2**22, 2**23]


def test_request_object_equals_keywords():
    req = CollectiveRequest(**README)
    assert xpusim.collective(req).as_dict() == xpusim.collective(**README).as_dict()


def test_system_object_and_numeric_bytes():
    by_name = xpusim.collective(**README)
    by_object = xpusim.collective(
        kind="all-reduce", system=load_system("dgx-h100"), ranks=8, bytes=float(2**30)
    )
    assert by_object.as_dict() == by_name.as_dict()


def test_unknown_keyword_is_named():
    with pytest.raises(InputError, match="'rank'"):
        xpusim.collective(kind="all-reduce", rank=8)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(), "kind is required"),
        (dict(kind="allreduce"), "KIND 'allreduce'"),
        (dict(kind="all-reduce", algorithm="fancy"), "--algorithm 'fancy'"),
        (dict(kind="all-reduce", ranks=0), "--ranks must be >= 1"),
        (dict(kind="all-reduce", bytes="12zz"), "cannot read --bytes"),
        (dict(kind="all-reduce", sweep="1KiB:1MiB"), "collective_sweep"),
    ],
)
def test_bad_input_is_an_input_error(kwargs, words):
    with pytest.raises(InputError, match=words):
        xpusim.collective(**kwargs)
