"""xpusim.serve: a serving run (`xpusim infer --serve`), with speculative decoding and
disaggregated pools; as_dict() is the command's --json."""

from __future__ import annotations

import json
import shlex

import pytest
from xpusim.sim.api.serve import DisaggServeResult, ServeRequest, ServeResult
from xpusim.sim.cli.main import main
from xpusim.sim.report import json_document

import xpusim


def cli_json(capsys, command: str) -> tuple[int, dict]:
    rc = main(shlex.split(command) + ["--json"])
    return rc, json.loads(capsys.readouterr().out)


BASE = "infer --model llama-2-7b --system dgx-a100 --devices 1 --serve --requests 40 --rate 4"
BASE_KW = dict(model="llama-2-7b", system="dgx-a100", devices=1, requests=40, rate=4)


def test_serving_run_equals_the_command(capsys):
    rc, want = cli_json(capsys, BASE)
    got = xpusim.serve(**BASE_KW)
    assert rc == 0 and isinstance(got, ServeResult) and got.as_dict() == want
    assert got.throughput_tokens_per_s == want["throughput_tokens_per_s"] > 0
    assert got.ttft_mean_s == want["ttft_s"]["mean"] and got.gamma is None


def test_mixed_engine_and_lengths_equal_the_command(capsys):
    rc, want = cli_json(
        capsys,
        "infer --model llama-2-7b --system dgx-h100 --devices 1 --serve --requests 60 "
        "--rate 8 --engine trtllm-0.10 --prompt-len 128 --output-len uniform:64:256 --seed 5",
    )
    got = xpusim.serve(
        model="llama-2-7b", system="dgx-h100", devices=1, requests=60, rate=8,
        engine="trtllm-0.10", prompt_len="128", output_len="uniform:64:256", seed=5,
    )  # fmt: skip
    assert rc == 0 and got.as_dict() == want


def test_speculative_decoding_equals_the_command(capsys):
    rc, want = cli_json(capsys, f"{BASE} --draft eagle --gamma 3 --alpha 0.9")
    got = xpusim.serve(**BASE_KW, draft="eagle", gamma=3, alpha=0.9)
    assert rc == 0 and got.as_dict() == want
    assert (got.draft, got.gamma, got.alpha) == ("eagle", 3, 0.9)
    # The draft options default with a draft (gamma 4, alpha 0.8) ...
    default = xpusim.serve(**BASE_KW, draft="eagle")
    assert isinstance(default, ServeResult) and (default.gamma, default.alpha) == (4, 0.8)


def test_draft_options_need_a_draft(capsys):
    # ... and are refused without one, from Python and the command line alike.
    with pytest.raises(xpusim.InputError, match="--gamma needs --draft"):
        xpusim.serve(**BASE_KW, gamma=3)
    assert main(shlex.split("infer --model llama-2-7b --system dgx-a100 --gamma 3")) == 2
    assert "--gamma needs --draft" in capsys.readouterr().err


def test_disaggregated_equals_the_command(capsys):
    cmd = (
        "infer --model llama-2-7b --system dgx-a100 --serve --requests 30 --rate 4 "
        "--prefill-devices 2 --decode-devices 4 --devices 4 --slo-ttft 1 --slo-tpot 0.05"
    )
    rc, want = cli_json(capsys, cmd)
    got = xpusim.serve(
        model="llama-2-7b", system="dgx-a100", requests=30, rate=4, prefill_devices=2,
        decode_devices=4, devices=4, slo_ttft=1.0, slo_tpot=0.05,
    )  # fmt: skip
    assert rc == 0 and isinstance(got, DisaggServeResult) and got.as_dict() == want
    assert got.decode.plan.devices == 4 and got.colocated.plan.devices == 4
    assert got.goodput_requests_per_s == want["disaggregated"]["goodput_requests_per_s"]


def test_pool_flags_need_serve(capsys):
    cmd = "infer --model llama-2-7b --system dgx-a100 --prefill-devices 2 --decode-devices 2"
    assert main(shlex.split(cmd)) == 2
    assert "need --serve" in capsys.readouterr().err


def test_request_object_equals_keywords():
    assert xpusim.serve(ServeRequest(**BASE_KW)).as_dict() == xpusim.serve(**BASE_KW).as_dict()


def test_unknown_keyword_is_named():
    with pytest.raises(xpusim.InputError, match="'batch'"):
        xpusim.serve(**BASE_KW, batch=8)


def test_out_of_memory_raises_with_the_document(capsys):
    cmd = "infer --model llama-2-70b --system dgx-a100 --devices 1 --serve --requests 10"
    rc, want = cli_json(capsys, cmd)
    assert rc == 3 and want["oom"] is True and want["model"] == "llama-2-70b"
    assert want["rate"] == 1.0 and "kv_cache_bytes" in want["memory"]
    with pytest.raises(xpusim.NegativeVerdict) as verdict:
        xpusim.serve(model="llama-2-70b", system="dgx-a100", devices=1, requests=10)
    assert json_document(verdict.value.payload) == want
