"""xpusim.train: the request owns the defaults, as_dict() is the command's --json."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from xpusim.sim.api.train import TrainRequest
from xpusim.sim.cli.main import main

import xpusim

SMALL = dict(model="llama-2-7b", system="dgx-h100", tp=2, pp=2, mbs=1, gbs=8, seq=2048)


def cli_json(capsys, command: str) -> tuple[int, dict]:
    rc = main(shlex.split(command) + ["--json", "--quiet"])
    return rc, modelled(json.loads(capsys.readouterr().out))


def modelled(doc: dict) -> dict:
    """The document without the simulator's own wall time (a measurement, not a result)."""
    return {k: v for k, v in doc.items() if k != "wall_s"}


def test_kwargs_equal_the_command(capsys):
    rc, want = cli_json(
        capsys, "train --model llama-2-7b --system dgx-h100 --tp 2 --pp 2 --mbs 1 --gbs 8 --seq 2048"
    )
    assert rc == 0
    assert modelled(xpusim.train(**SMALL).as_dict()) == want


def test_flags_with_no_equal_false_fields(capsys):
    rc, want = cli_json(
        capsys,
        "train --model llama-2-7b --system dgx-h100 --tp 2 --mbs 1 --gbs 8 --seq 2048 "
        "--no-sequence-parallel --no-overlap-dp --recompute full --dropout 0.1",
    )
    got = xpusim.train(
        model="llama-2-7b", system="dgx-h100", tp=2, mbs=1, gbs=8, seq=2048,
        sequence_parallel=False, overlap_dp=False, recompute="full", dropout=0.1,
    )  # fmt: skip
    assert rc == 0 and modelled(got.as_dict()) == want
    assert got.plan.sequence_parallel is False and got.plan.recompute == "full"


def test_request_object_equals_keywords():
    assert modelled(xpusim.train(TrainRequest(**SMALL)).as_dict()) == modelled(
        xpusim.train(**SMALL).as_dict()
    )


def test_defaults_match_the_cli():
    """The README's point: Python and the CLI resolve the same plan (SP on with tp > 1,
    recompute chosen automatically)."""
    r = xpusim.train(**SMALL)
    assert r.plan.sequence_parallel is True
    assert r.plan.recompute in ("none", "selective", "full")
    assert r.tokens_per_s == pytest.approx(r.as_dict()["tokens_per_s"])
    assert r.as_dict()["schema_version"] >= 1


def test_unknown_keyword_is_named():
    with pytest.raises(xpusim.InputError, match="'tensor_parallel'"):
        xpusim.train(model="llama-2-7b", tensor_parallel=2)


def test_request_and_keywords_together_refused():
    with pytest.raises(xpusim.InputError, match="not both"):
        xpusim.train(TrainRequest(**SMALL), tp=4)


def test_out_of_memory_raises_with_the_document(capsys):
    big = dict(model="llama-2-70b", system="dgx-h100", tp=1, mbs=4, gbs=32, seq=4096,
               recompute="none", zero=0)  # fmt: skip
    with pytest.raises(xpusim.NegativeVerdict) as info:
        xpusim.train(**big)
    doc = info.value.payload
    assert doc["oom"] is True and doc["memory_per_device_bytes"] > 80 * 2**30
    rc = main(
        shlex.split(
            "train --model llama-2-70b --system dgx-h100 --tp 1 --mbs 4 --gbs 32 --seq 4096 "
            "--recompute none --zero 0 --json --quiet"
        )
    )
    out = capsys.readouterr().out
    assert rc == 3 and json.loads(out)["memory_per_device_bytes"] == doc["memory_per_device_bytes"]


def test_varied_system_object():
    from xpusim.hwprofiles import load_system

    system = load_system("dgx-h100", nodes=1)
    got = xpusim.train(**{**SMALL, "system": system}).as_dict()
    assert modelled(got) == modelled(xpusim.train(**SMALL).as_dict())
    with pytest.raises(xpusim.InputError, match="nodes=2"):
        xpusim.train(**{**SMALL, "system": system, "nodes": 2})


def test_bare_folder_names_do_not_import(tmp_path: Path):
    """Installed, the code folders live under xpusim: `import sim` / `import kernels` fail
    (from anywhere, the repository root included) unless another distribution has them."""
    root = Path(__file__).resolve().parents[1]
    for name in ("sim", "kernels", "calibrate", "hwprofiles"):
        for cwd in (tmp_path, root):
            proc = subprocess.run(
                [sys.executable, "-c", f"import {name}"], cwd=cwd, capture_output=True, text=True
            )
            assert proc.returncode != 0, (name, cwd)
            assert "ModuleNotFoundError" in proc.stderr or f"'xpusim.{name}'" in proc.stderr


def test_api_names_are_exported():
    import xpusim.api

    for name in xpusim.api.__all__:
        assert getattr(xpusim, name) is getattr(xpusim.api, name)


def test_api_module_reachable_as_an_attribute(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-c", "import xpusim; print(len(xpusim.api.__all__) > 10)"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
