"""``xpusim infer`` end to end."""

from __future__ import annotations

import json

import pytest
from xpusim.sim.cli.main import main


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_infer_decode_json(capsys):
    out = _json(
        capsys,
        [
            "infer",
            "--model",
            "llama-2-7b",
            "--system",
            "dgx-a100",
            "--devices",
            "1",
            "--batch",
            "1",
            "--context",
            "512",
            "--json",
        ],
    )
    assert out["schema_version"] and out["bound"] == "memory"
    assert out["time_s"] == pytest.approx(out["device_s"] + out["host_s"])
    assert out["time_by_kind_s"]["gemm"] > 0.5 * out["device_s"]
    assert out["memory"]["fits"] is True
    assert out["tokens_per_s"] == pytest.approx(1 / out["time_s"])


def test_infer_prefill_text(capsys):
    assert (
        main(
            [
                "infer",
                "--model",
                "qwen2-57b-a14b",
                "--system",
                "hgx-a800",
                "--devices",
                "2",
                "--phase",
                "prefill",
                "--batch",
                "2",
                "--context",
                "1024",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "prefill" in text and "all-reduce" in text


def test_infer_ep_and_zipf(capsys):
    out = _json(
        capsys,
        [
            "infer",
            "--model",
            "qwen2-57b-a14b",
            "--system",
            "hgx-a800",
            "--tp",
            "2",
            "--ep",
            "2",
            "--batch",
            "32",
            "--routing",
            "zipf:1.0",
            "--json",
        ],
    )
    assert out["devices"] == 4 and "all-to-all" in out["time_by_kind_s"]


def test_infer_serve_json(capsys):
    out = _json(
        capsys,
        [
            "infer",
            "--model",
            "qwen2-0.5b",
            "--system",
            "dgx-a100",
            "--devices",
            "1",
            "--serve",
            "--rate",
            "10",
            "--requests",
            "30",
            "--prompt-len",
            "128",
            "--output-len",
            "uniform:8:32",
            "--json",
        ],
    )
    assert out["completed"] == 30
    assert set(out["ttft_s"]) == {"mean", "p50", "p90", "p99"}


def test_infer_serve_with_draft(capsys):
    out = _json(
        capsys,
        [
            "infer",
            "--model",
            "qwen1.5-7b",
            "--system",
            "dgx-a100",
            "--devices",
            "1",
            "--serve",
            "--requests",
            "10",
            "--rate",
            "5",
            "--output-len",
            "32",
            "--prompt-len",
            "64",
            "--draft",
            "qwen2-0.5b",
            "--alpha",
            "0.8",
            "--json",
        ],
    )
    assert out["completed"] == 10 and out["draft"] == "qwen2-0.5b"


def test_bad_input_exits_2(capsys):
    assert (
        main(["infer", "--model", "qwen2-57b-a14b", "--system", "hgx-a800", "--devices", "3"]) == 2
    )
    assert "heads" in capsys.readouterr().err
    assert (
        main(["infer", "--model", "llama-2-7b", "--system", "dgx-a100", "--engine", "vllm-9"]) == 2
    )
    assert (
        main(
            [
                "infer",
                "--model",
                "llama-2-7b",
                "--system",
                "dgx-a100",
                "--serve",
                "--prompt-len",
                "uniform:9:1",
            ]
        )
        == 2
    )


def test_out_of_memory_exits_3(capsys):
    assert (
        main(["infer", "--model", "qwen2-57b-a14b", "--system", "hgx-a800", "--devices", "1"]) == 3
    )
    assert "exceed" in capsys.readouterr().err
