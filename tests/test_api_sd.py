"""xpusim.sd: the speculative-decoding study; as_dict() is `xpusim sd --json`."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.api.sd import SdRequest
from xpusim.sim.cli.main import main
from xpusim.sim.report import json_document

import xpusim

ROOT = Path(__file__).resolve().parents[1]


def cli_json(capsys, command: str) -> tuple[int, dict]:
    rc = main(shlex.split(command) + ["--json"])
    return rc, json.loads(capsys.readouterr().out)


def _readme_sd_command() -> str:
    """The `xpusim sd ...` command the README shows."""
    found = re.search(r"`xpusim (sd --target [^`]+)`", (ROOT / "README.md").read_text())
    assert found, "the README shows an `xpusim sd` command"
    return found.group(1)


def _as_kwargs(command: str) -> dict:
    """The command's flags as text keyword arguments (--draft-devices 2 -> draft_devices='2')."""
    words = shlex.split(command)[1:]
    kw = {}
    for flag, value in zip(words[::2], words[1::2], strict=True):
        kw[flag.removeprefix("--").replace("-", "_")] = value
    return kw


# The options of the README's `xpusim sd` command, as keyword arguments.
README_SD = dict(
    target="qwen2-57b-a14b", draft="qwen2-0.5b", system="hgx-a800", devices=2, gamma=4,
    alpha=0.95, batch="1,2,4,8,16,32,64,100",
)  # fmt: skip


def test_readme_command_parity(capsys):
    """Must-show of issue 12: xpusim.sd(...) with the README command's options gives the
    command's --json."""
    command = _readme_sd_command()
    assert _as_kwargs(command) == {k: str(v) for k, v in README_SD.items()}
    rc, want = cli_json(capsys, command)
    got = xpusim.sd(**README_SD)
    assert rc == 0 and got.as_dict() == want
    assert got.peak_speedup == want["peak"]["speedup"] and got.peak_batch == want["peak"]["batch"]


def test_groups_and_options_equal_the_command(capsys):
    rc, want = cli_json(
        capsys,
        "sd --target qwen2-57b-a14b --draft eagle --system hgx-a800 --tp 2 --batch 1,8,32 "
        "--topk 2,4 --compare-dense opt-30b --draft-dense opt-350m --sigma 0.9 --context 1024 "
        "--routing zipf:1.1 --engine vllm-0.5",
    )
    got = xpusim.sd(
        target="qwen2-57b-a14b", draft="eagle", system="hgx-a800", tp=2, batch=(1, 8, 32),
        topk=(2, 4), compare_dense="opt-30b", draft_dense="opt-350m", sigma=0.9, context=1024,
        routing="zipf:1.1", engine="vllm-0.5",
    )  # fmt: skip
    assert rc == 0 and got.as_dict() == want
    assert [g.label for g in got.groups] == ["qwen2-57b-a14b", "opt-30b", "top-2", "top-4"]


def test_per_position_alpha_equals_the_command(capsys):
    cmd = "sd --target qwen2-57b-a14b --draft mtp --system hgx-a800 --devices 2 --gamma 3"
    rc, want = cli_json(capsys, f"{cmd} --alpha 0.9,0.8,0.7 --batch 4,16")
    got = xpusim.sd(
        target="qwen2-57b-a14b", draft="mtp", system="hgx-a800", devices=2, gamma=3,
        alpha=(0.9, 0.8, 0.7), batch="4,16",
    )  # fmt: skip
    assert rc == 0 and got.as_dict() == want and got.alpha == (0.9, 0.8, 0.7)


def test_request_object_equals_keywords_and_a_system_object():
    kw = dict(target="qwen2-57b-a14b", draft="eagle", devices=2, batch="1,8", engine="none")
    by_name = xpusim.sd(**kw, system="hgx-a800")
    assert xpusim.sd(SdRequest(**kw, system="hgx-a800")).as_dict() == by_name.as_dict()
    assert xpusim.sd(**kw, system=load_system("hgx-a800")).as_dict() == by_name.as_dict()


def test_unknown_keyword_and_bad_values():
    base = dict(target="qwen2-57b-a14b", draft="eagle", system="hgx-a800", devices=2)
    with pytest.raises(xpusim.InputError, match="'speculate'"):
        xpusim.sd(**base, speculate=True)
    with pytest.raises(xpusim.InputError, match="not both"):
        xpusim.sd(**base, alpha=0.8, sigma=0.9)
    with pytest.raises(xpusim.InputError, match="--batch"):
        xpusim.sd(**base, batch="0,4")
    with pytest.raises(xpusim.InputError, match="--topk needs an MoE target"):
        xpusim.sd(**{**base, "target": "llama-2-7b", "devices": 1}, topk="2")


def test_kv_verdict_raises_with_the_document(capsys):
    cmd = (
        "sd --target qwen2-57b-a14b --draft qwen2-0.5b --system hgx-a800 --devices 2 "
        "--batch 5000 --context 100000"
    )
    rc, want = cli_json(capsys, cmd)
    # The document is the study's header with the verdict, not only the memory breakdown.
    assert rc == 3 and want["oom"] is True and want["target"] == "qwen2-57b-a14b"
    assert want["group"] == "qwen2-57b-a14b" and want["memory"]["fits"] is False
    with pytest.raises(xpusim.NegativeVerdict) as verdict:
        xpusim.sd(
            target="qwen2-57b-a14b", draft="qwen2-0.5b", system="hgx-a800", devices=2,
            batch="5000", context=100000,
        )  # fmt: skip
    assert json_document(verdict.value.payload) == want
