"""xpusim.infer: the request owns the defaults, as_dict() is `xpusim infer --json`."""

from __future__ import annotations

import json
import shlex

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.api.infer import InferRequest
from xpusim.sim.cli.main import main
from xpusim.sim.models import load_model
from xpusim.sim.report import json_document

import xpusim


def cli_json(capsys, command: str) -> tuple[int, dict]:
    rc = main(shlex.split(command) + ["--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_defaults_equal_the_command(capsys):
    rc, want = cli_json(capsys, "infer --model llama-2-7b --system dgx-a100")
    got = xpusim.infer(model="llama-2-7b", system="dgx-a100")
    assert rc == 0 and got.as_dict() == want
    # The request's defaults are the command's: decode, batch 1, context 1024, vLLM 0.6.
    assert (got.phase, got.batch, got.context, got.engine) == ("decode", 1, 1024, "vllm-0.6")
    assert got.tokens_per_s == pytest.approx(1 / got.time_s)


def test_many_options_equal_the_command(capsys):
    rc, want = cli_json(
        capsys,
        "infer --model qwen2-57b-a14b --system hgx-a800 --tp 2 --ep 2 --batch 32 "
        "--context 2048 --routing zipf:1.2 --seed 3 --engine sglang-0.4 --phase prefill",
    )
    got = xpusim.infer(
        model="qwen2-57b-a14b", system="hgx-a800", tp=2, ep=2, batch=32, context=2048,
        routing="zipf:1.2", seed=3, engine="sglang-0.4", phase="prefill",
    )  # fmt: skip
    assert rc == 0 and got.as_dict() == want
    assert got.plan.devices == 4 and got.plan.tp_group() == (0, 1)


def test_attention_impl_equals_the_command(capsys):
    cmd = "--model llama-2-7b --system dgx-a100 --devices 2 --phase prefill --batch 2"
    rc, want = cli_json(capsys, f"infer {cmd} --context 1024 --engine none --attention-impl flash2")
    got = xpusim.infer(
        model="llama-2-7b", system="dgx-a100", devices=2, phase="prefill", batch=2,
        context=1024, engine="none", attention_impl="flash2",
    )  # fmt: skip
    assert rc == 0 and got.as_dict() == want


def test_request_object_equals_keywords():
    kw = dict(model="llama-2-7b", system="dgx-a100", batch=8, context=512)
    assert xpusim.infer(InferRequest(**kw)).as_dict() == xpusim.infer(**kw).as_dict()


def test_model_and_system_objects_equal_their_names():
    by_name = xpusim.infer(model="llama-2-7b", system="dgx-a100", batch=4)
    objects = xpusim.infer(model=load_model("llama-2-7b"), system=load_system("dgx-a100"), batch=4)
    assert objects.as_dict() == by_name.as_dict()


def test_unknown_keyword_is_named():
    with pytest.raises(xpusim.InputError, match="'gamma'"):
        xpusim.infer(model="llama-2-7b", system="dgx-a100", gamma=4)


def test_bad_values_are_input_errors():
    with pytest.raises(xpusim.InputError, match="--model is required"):
        xpusim.infer(system="dgx-a100")
    with pytest.raises(xpusim.InputError, match="--phase"):
        xpusim.infer(model="llama-2-7b", system="dgx-a100", phase="verify")
    with pytest.raises(xpusim.InputError, match="--batch"):  # the flags' limits hold here too
        xpusim.infer(model="llama-2-7b", system="dgx-a100", batch=0)
    with pytest.raises(xpusim.InputError, match="either --devices"):
        xpusim.infer(model="llama-2-7b", system="dgx-a100", devices=2, tp=2)


def test_kv_verdict_raises_with_the_document(capsys):
    cmd = "infer --model llama-2-7b --system dgx-a100 --devices 1 --batch 4000 --context 4096"
    rc, want = cli_json(capsys, cmd)
    assert rc == 3 and want["oom"] is True
    with pytest.raises(xpusim.NegativeVerdict) as verdict:
        xpusim.infer(model="llama-2-7b", system="dgx-a100", devices=1, batch=4000, context=4096)
    assert json_document(verdict.value.payload) == want
    assert want["memory"]["fits"] is False and want["batch"] == 4000


def test_weights_verdict_carries_the_whole_document(capsys):
    # 70B in bf16 on one 80 GB device leaves nothing for a KV cache: the verdict's JSON
    # is the command's document (not only the memory breakdown).
    rc, want = cli_json(capsys, "infer --model llama-2-70b --system dgx-a100 --devices 1")
    assert rc == 3
    assert (want["model"], want["devices"], want["phase"], want["oom"]) == (
        "llama-2-70b", 1, "decode", True,
    )
    assert want["memory"]["kv_cache_bytes"] <= 0
    with pytest.raises(xpusim.NegativeVerdict) as verdict:
        xpusim.infer(model="llama-2-70b", system="dgx-a100", devices=1)
    assert verdict.value.payload["memory"] == want["memory"]
