"""LMDeploy TurboMind 0.1 (``lmdeploy-0.1``): the first output token comes from a generation
step (``[scheduler] first_token = "generation"``; sim/inference/first_token.py)."""

from __future__ import annotations

import json

import pytest
from cli_run import run_cli
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import ENGINE_DIR, list_engines, load_engine

import xpusim

STEP = dict(model="qwen2-0.5b", system="dgx-a100", devices=1, dtype="fp16")


def test_profile_loads_with_its_first_token_rule():
    engine = load_engine("lmdeploy-0.1")
    assert "lmdeploy-0.1" in list_engines()
    assert engine.first_token == "generation"
    assert engine.policy == "static" and not engine.cuda_graphs
    assert engine.device_archs == ("nvidia",)
    assert engine.reference_host == "epyc-7742"
    # every other shipped profile keeps the default: the prefill step samples the first token
    others = [load_engine(n).first_token for n in list_engines() if n != "lmdeploy-0.1"]
    assert set(others) == {"context"}


def test_a_bad_first_token_is_a_clear_error(tmp_path):
    bad = tmp_path / "e.toml"
    bad.write_text('kind = "engine"\nname = "x"\n[scheduler]\nfirst_token = "decode"\n')
    with pytest.raises(InputError, match=r"scheduler\.first_token.*context \| generation"):
        load_engine(str(bad))


def _context_twin(tmp_path) -> str:
    """lmdeploy-0.1 with the default rule: its steps priced as every other engine's."""
    text = (ENGINE_DIR / "lmdeploy-0.1.toml").read_text()
    assert 'first_token = "generation"' in text
    twin = tmp_path / "twin.toml"
    twin.write_text(text.replace('first_token = "generation"', 'first_token = "context"'))
    return str(twin)


@pytest.mark.parametrize("batch, prompt", [(1, 128), (3, 40)])
def test_ttft_is_the_context_decode_of_p_minus_1_plus_one_generation_step(tmp_path, batch, prompt):
    twin = _context_twin(tmp_path)
    got = xpusim.infer(**STEP, engine="lmdeploy-0.1", phase="prefill", batch=batch, context=prompt)
    pre = xpusim.infer(**STEP, engine=twin, phase="prefill", batch=batch, context=prompt - 1)
    dec = xpusim.infer(**STEP, engine=twin, phase="decode", batch=batch, context=prompt - 1)
    # One loop iteration: the context decode device-only, the engine's host work once.
    assert got.time_s == pytest.approx(pre.step.device_s + dec.time_s, rel=1e-12)
    assert got.step.host_s == pytest.approx(dec.step.host_s, rel=1e-12) and dec.step.host_s > 0
    assert got.step.kernels == pre.step.kernels + dec.step.kernels
    assert got.step.tokens == batch * prompt
    assert got.tokens_per_s == pytest.approx(batch * prompt / got.time_s)
    assert got.first_token is not None and got.first_token.context is not None


def test_a_one_token_prompt_is_the_generation_step_alone():
    got = xpusim.infer(**STEP, engine="lmdeploy-0.1", phase="prefill", batch=4, context=1)
    dec = xpusim.infer(**STEP, engine="lmdeploy-0.1", phase="decode", batch=4, context=0)
    assert got.time_s == dec.time_s
    assert got.first_token is not None and got.first_token.context is None


def test_decode_and_other_engines_are_unchanged():
    dec = xpusim.infer(**STEP, engine="lmdeploy-0.1", phase="decode", batch=2, context=64)
    assert dec.first_token is None
    pre = xpusim.infer(**STEP, engine="trtllm-0.5", phase="prefill", batch=2, context=64)
    assert pre.first_token is None and pre.step.tokens == 128


def test_the_command_shows_both_parts(capsys):
    cmd = ("infer --model qwen2-0.5b --system dgx-a100 --devices 1 --dtype fp16 --engine "
           "lmdeploy-0.1 --phase prefill --batch 2 --context 64")
    rc, out, err = run_cli(capsys, cmd + " --json")
    assert rc == 0, err
    doc = json.loads(out)
    first = doc["first_token"]
    assert first["sampled_by"] == "generation"
    assert first["context_decode_tokens"] == 63 and first["generation_context"] == 63
    assert doc["time_s"] == pytest.approx(
        first["context_decode"]["time_s"] + first["generation"]["time_s"], rel=1e-12)
    assert first["context_decode"]["host_s"] == 0.0
    rc, out, err = run_cli(capsys, cmd)
    assert rc == 0, err
    assert "first token from a generation step (engine lmdeploy-0.1): context decode of 2 x 63" in out


def test_serving_and_sd_refuse_the_engine(capsys):
    rc, _out, err = run_cli(capsys, "infer --serve --model qwen2-0.5b --system dgx-a100 "
                            "--devices 1 --engine lmdeploy-0.1 --requests 4 --rate 10")
    assert rc == 2
    assert "--serve with --engine lmdeploy-0.1" in err and 'first_token = "generation"' in err
    assert "trtllm-*, vllm-*" in err
    with pytest.raises(InputError, match=r"sd with --engine lmdeploy-0\.1.*first_token"):
        xpusim.sd(target="qwen2-0.5b", draft="eagle", system="dgx-a100", engine="lmdeploy-0.1")


def test_pipeline_parallelism_is_refused():
    with pytest.raises(InputError, match=r"--pp 2 with --engine lmdeploy-0\.1.*tensor parallelism only"):
        xpusim.infer(model="qwen2-0.5b", system="dgx-a100", tp=1, pp=2, engine="lmdeploy-0.1",
                     phase="prefill", batch=1, context=16)
