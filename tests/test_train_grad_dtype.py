"""``train --grad-reduce-dtype``: the main gradients' dtype (Megatron-Bridge's performance
recipes keep them in bf16, ``grad_reduce_in_fp32 = False``; Megatron-LM's default is fp32)."""

from __future__ import annotations

import json

import pytest
from xpusim.sim.cli.main import main

ARGS = ["train", "--model", "llama-3-8b", "--system", "dgx-h100", "--tp", "1", "--pp", "1",
        "--dp", "8", "--mbs", "1", "--gbs", "64", "--seq", "4096", "--recompute", "none",
        "--json"]


def _run(capsys, *extra: str) -> dict:
    assert main([*ARGS, *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_bf16_main_grads_take_two_bytes_a_parameter(capsys):
    fp32 = _run(capsys)["memory"]
    bf16 = _run(capsys, "--grad-reduce-dtype", "bf16")["memory"]
    # ZeRO-1: every rank holds the whole gradient buffer; bf16 weights are 2 B a
    # parameter, so fp32 grads are twice the weights and bf16 grads equal them.
    assert fp32["gradients_bytes"] == pytest.approx(2 * fp32["weights_bytes"])
    assert bf16["gradients_bytes"] == pytest.approx(bf16["weights_bytes"])
    saved = fp32["gradients_bytes"] - bf16["gradients_bytes"]
    assert fp32["total_bytes"] - bf16["total_bytes"] >= saved


def test_bf16_main_grads_never_slow_the_step(capsys):
    fp32 = _run(capsys)["step_time_s"]
    bf16 = _run(capsys, "--grad-reduce-dtype", "bf16")["step_time_s"]
    assert bf16 <= fp32  # half the DP reduce-scatter bytes and optimizer reads


def test_unknown_grad_dtype_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main([*ARGS, "--grad-reduce-dtype", "int8"])
    assert exc.value.code == 2
    assert "--grad-reduce-dtype" in capsys.readouterr().err
