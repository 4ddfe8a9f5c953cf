"""Capabilities that published rows needed: total-token serving throughput, the FA2
training TFLOP/s count, every-k-th-layer activation checkpointing, the H100 NVL device."""

from __future__ import annotations

import json

import pytest
from xpusim.sim.cli.main import main
from xpusim.sim.validation.metrics import metric_for


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


SERVE = [
    "infer", "--model", "qwen2-0.5b", "--system", "dgx-a100", "--devices", "1",
    "--engine", "trtllm-0.6.1", "--serve", "--rate", "10000", "--requests", "16",
    "--prompt-len", "128", "--output-len", "8",
]  # fmt: skip


def test_serve_reports_total_tokens_per_s(capsys):
    out = _json(capsys, SERVE + ["--json"])
    # 16 requests x (128 prompt + 8 output) tokens over the makespan; output alone is 16 x 8.
    assert out["total_tokens_per_s"] == pytest.approx(16 * 136 / out["makespan_s"])
    assert out["throughput_tokens_per_s"] == pytest.approx(16 * 8 / out["makespan_s"])
    assert out["total_tokens_per_s"] == pytest.approx(17 * out["throughput_tokens_per_s"])


def test_serve_text_shows_total_tokens(capsys):
    assert main(SERVE) == 0
    assert "prompt + output tokens/s" in capsys.readouterr().out


def test_serve_api_result_has_total_tokens():
    from xpusim.api import ServeRequest, serve

    r = serve(ServeRequest(model="qwen2-0.5b", system="dgx-a100", devices=1, engine="trtllm-0.6.1",
                           rate=10000, requests=16, prompt_len="128", output_len="8"))
    assert r.total_tokens_per_s == pytest.approx(17 * r.throughput_tokens_per_s)
    assert r.as_dict()["total_tokens_per_s"] == r.total_tokens_per_s


def test_total_tokens_metric_reads_the_field():
    metric = metric_for("infer", "total_tokens_per_s")
    assert metric is not None
    assert metric({}, {"total_tokens_per_s": 123.0}) == 123.0
