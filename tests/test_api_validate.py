"""xpusim.validate: as_dict() is validate --json; corpus rows run through the study api
(flags read into requests), and nothing under sim/ but the CLI imports the CLI."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from xpusim.sim.api.base import request_from_flags
from xpusim.sim.api.commands import COMMANDS, api_command, command_name
from xpusim.sim.api.train import TrainRequest
from xpusim.sim.api.validate import ValidateRequest
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.validation.corpus import Row, load_corpus
from xpusim.sim.validation.runner import run_row

import xpusim

ROOT = Path(__file__).resolve().parents[1]
CPU_DATA = ROOT / "calibrate" / "data" / "cpu-host"
ROWS = load_corpus()
# A few rows of different commands (a training step, a collective, a GEMM).
SOME = [
    next(r for r in ROWS if r.command == c and not r.unsupported).id
    for c in ("train", "collective", "op")
]
IN_ORDER = [r.id for r in ROWS if r.id in SOME]  # results come in corpus order


def cli_json(capsys, command: str) -> tuple[int, dict]:
    rc = main(shlex.split(command) + ["--json"])
    return rc, json.loads(capsys.readouterr().out)


def modelled(doc: dict) -> dict:
    """The document without the rows' wall times and the report's date (measurements of
    the run, not results)."""
    rows = [{k: v for k, v in r.items() if k != "wall_s"} for r in doc.get("rows", [])]
    return {**{k: v for k, v in doc.items() if k != "date"}, "rows": rows}


def test_published_kwargs_equal_the_command(capsys, tmp_path):
    csv = tmp_path / "rows.csv"
    rc, want = cli_json(capsys, f"validate --published --rows {','.join(SOME)} --csv {csv}")
    assert rc == 0
    got = xpusim.validate(published=True, rows=",".join(SOME), csv=str(csv))
    assert modelled(got.as_dict()) == modelled(want)
    assert got.mode == "published" and [r.id for r in got.rows] == IN_ORDER
    assert got.files == [str(csv)] and got.summary == want["summary"]


def test_request_object_equals_keywords():
    by_kwargs = xpusim.validate(published=True, rows=tuple(SOME), jobs=1)
    by_request = xpusim.validate(ValidateRequest(published=True, rows=",".join(SOME)))
    assert modelled(by_kwargs.as_dict()) == modelled(by_request.as_dict())


def test_unknown_keyword_is_named():
    with pytest.raises(InputError, match="'categry'"):
        xpusim.validate(published=True, categry="gemm")


def test_needs_a_mode():
    with pytest.raises(InputError, match="--calibration FILE"):
        xpusim.validate()


@pytest.mark.skipif(not (CPU_DATA / "measurements.csv").exists(), reason="no committed CSV")
def test_local_mode_equals_the_command(capsys, tmp_path):
    overlay, csv = CPU_DATA / "overlay.toml", CPU_DATA / "measurements.csv"
    out = tmp_path / "v"
    rc, want = cli_json(
        capsys, f"validate --calibration {overlay} --measurements {csv} --out {out}"
    )
    assert rc == 0
    got = xpusim.validate(calibration=str(overlay), measurements=str(csv), out=str(out))
    assert modelled(got.as_dict()) == modelled(want) and got.mode == "local" and got.passed == want["check"]["passed"]
    assert got.files == want["files"] and Path(got.files["json"]).exists()


# ---- flags read into requests (saved commands, corpus rows) -----------------------------


def test_flags_read_as_the_command_line_reads_them():
    got = request_from_flags(
        TrainRequest,
        {"model": "llama-2-7b", "no-sequence-parallel": True, "attention-impl": "standard",
         "dropout": 0, "layer_split": [3, 3], "tp": "2", "overlap-dp": False, "exact": None},
        "t.toml: args",
    )  # fmt: skip
    want = TrainRequest(model="llama-2-7b", sequence_parallel=False, attention_impl="standard",
                        dropout=0.0, layer_split="3,3", tp=2, overlap_dp=False)  # fmt: skip
    assert got == want and isinstance(got.dropout, float)


def test_flags_refuse_unknown_keys_and_limits_by_name():
    with pytest.raises(InputError, match=r"t\.toml: args: unknown option 'tpp'"):
        request_from_flags(TrainRequest, {"tpp": 2}, "t.toml: args")
    with pytest.raises(InputError, match=r"t\.toml: args: --tp .* above the limit"):
        request_from_flags(TrainRequest, {"tp": 10**30}, "t.toml: args")
    with pytest.raises(InputError, match="expected an integer"):
        request_from_flags(TrainRequest, {"tp": "eight"}, "t.toml: args")


def test_every_row_command_has_a_study():
    for name in sorted({command_name(r.command, r.args) for r in ROWS}):
        cls, function = api_command(name)
        assert callable(function) and cls.__name__.endswith("Request"), name
    assert set(COMMANDS) >= {"train", "infer", "serve", "sd", "ep", "op", "collective"}


def test_a_refused_row_keeps_the_message_and_the_command():
    row = next(r for r in ROWS if r.command == "op" and not r.unsupported)
    bad = Row(**{**row.__dict__, "args": {**row.args, "device": "no-such-gpu"}})
    result = run_row(bad)
    assert result.predicted is None and "unknown device 'no-such-gpu'" in result.unsupported
    assert result.command.startswith(f"xpusim op {row.args['kind']} --device no-such-gpu")


# ---- layering --------------------------------------------------------------------------

CLI_IMPORT = re.compile(
    r"^\s*(from\s+xpusim\.sim(\.cli\b|\s+import\s+[^#\n]*\bcli\b)|import\s+xpusim\.sim\.cli\b)",
    re.MULTILINE,
)


def test_nothing_under_sim_but_the_cli_imports_the_cli():
    """Studies, validation and the api call studies, never the command line (issue 12)."""
    offenders = []
    for path in sorted((ROOT / "sim").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("sim", "cli"):
            continue
        for match in CLI_IMPORT.finditer(path.read_text()):
            line = path.read_text()[: match.start()].count("\n") + 1
            offenders.append(f"{rel}:{line}: {match.group(0).strip()}")
    assert not offenders, "imports of xpusim.sim.cli outside sim/cli/: " + "; ".join(offenders)
