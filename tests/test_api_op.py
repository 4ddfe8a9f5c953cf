"""xpusim.op: the request owns the defaults (per kind), as_dict() is the command's --json."""

from __future__ import annotations

import json
import shlex

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim.api.base import request_from_flags
from xpusim.sim.api.op import OpRequest
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError, ProfileError

import xpusim

# The README's command (`xpusim op gemm --m 8192 --n 8192 --k 8192 --device h100-sxm5-80gb`).
README = dict(kind="gemm", m=8192, n=8192, k=8192, device="h100-sxm5-80gb")


def cli_json(capsys, command: str) -> dict:
    rc = main([*shlex.split(command), "--json"])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_readme_command_equals_keywords(capsys):
    want = cli_json(capsys, "op gemm --m 8192 --n 8192 --k 8192 --device h100-sxm5-80gb")
    got = xpusim.op(**README)
    assert got.as_dict() == want
    assert got.time_s == want["time_s"] and got.fraction_of_peak == want["fraction_of_peak"]
    assert got.dtype == "bf16" and got.impl is None


def test_attention_with_many_options_equals_the_command(capsys):
    want = cli_json(
        capsys,
        "op attention --seq 4096 --kv-len 8192 --heads 16 --kv-heads 4 --head-dim 64 --batch 2 "
        "--causal --device a100-sxm4-80gb --dtype fp16 --impl flash2 --pass fwd_bwd",
    )
    got = xpusim.op(
        kind="attention", seq=4096, kv_len=8192, heads=16, kv_heads=4, head_dim=64, batch=2,
        causal=True, device="a100-sxm4-80gb", dtype="fp16", impl="flash2", pass_="fwd_bwd",
    )  # fmt: skip
    assert got.as_dict() == want
    assert got.achieved_tflops == want["achieved_tflops"] and want["pass"] == "fwd_bwd"


@pytest.mark.parametrize(
    "command, kwargs",
    [
        ("op elementwise --numel 1e9 --inputs 2 --flops-per-element 3",
         dict(kind="elementwise", numel=1e9, inputs=2, flops_per_element=3)),
        ("op conv2d --in-ch 64 --out-ch 128 --height 56 --width 56 --kernel 1 --stride 2",
         dict(kind="conv2d", in_ch=64, out_ch=128, height=56, width=56, kernel=1, stride=2)),
        ("op attention --seq 1024", dict(kind="attention", seq=1024)),
    ],
)  # fmt: skip
def test_each_kind_equals_the_command(capsys, command, kwargs):
    assert xpusim.op(**kwargs).as_dict() == cli_json(capsys, command)


def test_flags_table_reads_pass_as_the_field():
    """A validation row writes `pass = "bwd"`: the flag, read into the `pass_` field."""
    req = request_from_flags(
        OpRequest, {"kind": "attention", "seq": 512, "head-dim": 64, "pass": "bwd"}, "row"
    )
    assert req.pass_ == "bwd" and req.head_dim == 64
    assert xpusim.op(req).as_dict()["pass"] == "bwd"


def test_request_object_equals_keywords():
    assert xpusim.op(OpRequest(**README)).as_dict() == xpusim.op(**README).as_dict()


def test_device_object_in_place_of_its_name():
    by_object = xpusim.op(kind="gemm", m=1024, n=1024, k=1024, device=load_device("ascend-910b2"))
    by_name = xpusim.op(kind="gemm", m=1024, n=1024, k=1024, device="ascend-910b2")
    assert by_object.as_dict() == by_name.as_dict()


def test_unknown_keyword_is_named():
    with pytest.raises(InputError, match="'rows'"):
        xpusim.op(kind="gemm", rows=8)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(m=8, n=8, k=8), "op kind is required"),
        (dict(kind="matmul"), "KIND 'matmul'"),
        (dict(kind="gemm", m=8, n=8), "op gemm needs --k"),
        (dict(kind="gemm", m=8, n=8, k=8, heads=4), "--heads is not an option of op gemm"),
        (dict(kind="attention", seq=128, pass_="both"), "--pass"),
        (dict(kind="attention", seq=128, heads=0), "--heads must be >= 1"),
    ],
)
def test_bad_input_is_an_input_error(kwargs, words):
    with pytest.raises(InputError, match=words):
        xpusim.op(**kwargs)


def test_unknown_device_is_a_profile_error():
    with pytest.raises(ProfileError, match="unknown device 'nosuch'"):
        xpusim.op(kind="gemm", m=8, n=8, k=8, device="nosuch")


def test_request_type_hints_are_kept_per_class_read_only():
    """``request_from_flags`` reads each request class's annotations once (``_type_hints``):
    the same hints ``typing.get_type_hints`` resolves, and not writable by a caller."""
    import typing

    from xpusim.sim.api.base import _type_hints
    from xpusim.sim.api.serve import ServeRequest
    from xpusim.sim.api.train import TrainRequest

    for cls in (OpRequest, ServeRequest, TrainRequest):
        assert dict(_type_hints(cls)) == typing.get_type_hints(cls)
        assert _type_hints(cls) is _type_hints(cls)
        with pytest.raises(TypeError):
            _type_hints(cls)["x"] = int  # type: ignore[index]
