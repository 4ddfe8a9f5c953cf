"""xpusim.attention: the request owns the defaults, as_dict() is the command's --json."""

from __future__ import annotations

import json
import shlex

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim.api.attention import AttentionRequest
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError

import xpusim

# The README's command (`xpusim attention --device ascend-910b2 --seq 1024,2048,...,65536 --causal`).
README = dict(device="ascend-910b2", seq="1024,2048,...,65536", causal=True)


def cli_json(capsys, command: str) -> dict:
    rc = main([*shlex.split(command), "--json"])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_readme_command_equals_keywords(capsys):
    want = cli_json(capsys, "attention --device ascend-910b2 --seq 1024,2048,...,65536 --causal")
    got = xpusim.attention(**README)
    assert got.as_dict() == want
    assert got.seq == tuple(1024 * 2**i for i in range(7))
    assert list(got.speedup) == [r["speedup"] for r in want["rows"]]


def test_many_options_equal_the_command(capsys, tmp_path):
    """tiling-AllReduce on a system of another device, tuned blocks; files listed by the
    CLI (the system's devices are --device's: dgx-v100, not dgx-h100, which --tp refuses)."""
    csv = tmp_path / "rows.csv"
    want = cli_json(
        capsys,
        "attention --device v100-sxm2-32gb --seq 2048,8192 --batch 2 --heads 16 --head-dim 64 "
        f"--dtype fp16 --outer-block 256 --sync-us 3 --tp 8 --system dgx-v100 --blocks 1,4 "
        f"--csv {csv}",
    )
    got = xpusim.attention(
        device="v100-sxm2-32gb", seq=(2048, 8192), batch=2, heads=16, head_dim=64,
        dtype="fp16", outer_block=256, sync_us=3.0, tp=8, system="dgx-v100", blocks=(1, 4),
    )  # fmt: skip
    assert want["files"] == [str(csv)]
    assert got.as_dict() == {**want, "files": []}
    assert got.system == want["system"] and got.tp == 8
    assert len(got.tiling_allreduce) == 4


def test_defaults_are_the_commands(capsys):
    assert xpusim.attention(seq="4096").as_dict() == cli_json(capsys, "attention --seq 4096")


def test_request_object_equals_keywords():
    assert (
        xpusim.attention(AttentionRequest(**README)).as_dict()
        == xpusim.attention(**README).as_dict()
    )


def test_device_object_in_place_of_its_name():
    by_object = xpusim.attention(device=load_device("ascend-910b2"), seq="1024,4096")
    assert by_object.as_dict() == xpusim.attention(device="ascend-910b2", seq="1024,4096").as_dict()


def test_unknown_keyword_is_named():
    with pytest.raises(InputError, match="'head_size'"):
        xpusim.attention(head_size=64)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(dtype="int8"), "--dtype int8"),
        (dict(heads=0), "--heads must be >= 1"),
        (dict(tp=0), "--tp must be >= 1"),
        (dict(seq="1,2,...,1"), "range needs"),
        (dict(sync_us=-1.0), "--sync-us"),
    ],
)
def test_bad_input_is_an_input_error(kwargs, words):
    with pytest.raises(InputError, match=words):
        xpusim.attention(**kwargs)
