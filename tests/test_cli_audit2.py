"""Open items of the CLI audit (2026-12-07), closed in a second pass: each a real command run
in-process through ``xpusim.sim.cli.main.main``, its exit code and what it prints."""

from __future__ import annotations

import json
import shlex

import pytest
from xpusim.sim.cli.main import main

ATTN = "op attention --device h100-sxm5-80gb --batch 8 --heads 32 --seq 4096 --head-dim 128"


def run_cli(capsys, command: str) -> tuple[int, str, str]:
    try:
        rc = main(shlex.split(command))
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def run_json(capsys, command: str) -> dict:
    rc, out, err = run_cli(capsys, command + " --json")
    assert rc == 0, err
    return json.loads(out)


def test_op_attention_bytes_hbm_is_the_priced_implementations_traffic(capsys):
    # bytes.hbm was Q, K, V, O once for every implementation, standard attention included,
    # whose kernels write and read the score matrix (priced, but not in bytes.hbm).
    flash = run_json(capsys, f"{ATTN} --impl flash2")
    std = run_json(capsys, f"{ATTN} --impl standard")
    tensors = 4 * 8 * 32 * 4096 * 128 * 2  # Q, K, V, O in bf16
    for out in (flash, std):
        assert out["bytes"]["hbm_min"] == tensors
    assert flash["bytes"]["hbm"] == tensors  # a fused kernel moves each once
    score = 8 * 32 * 4096 * 4096 * 2
    assert std["bytes"]["hbm"] == std["hbm_bytes"] > tensors + 2 * score
    assert std["bytes"]["hbm"] / std["memory_s"] <= 3.35e12  # priced at most at the HBM rate
    rc, out, err = run_cli(capsys, f"{ATTN} --impl standard")
    assert rc == 0, err
    assert "HBM traffic 33 GiB (standard's kernels; the op's tensors once: 1 GiB)" in out


@pytest.mark.parametrize("pass_", ["bwd", "fwd_bwd"])
def test_op_attention_backward_bytes(capsys, pass_):
    out = run_json(capsys, f"{ATTN} --impl flash2 --pass {pass_}")
    fwd_tensors = 4 * 8 * 32 * 4096 * 128 * 2
    # bwd: Q, K, V, O, dO read and dQ, dK, dV written (twice the forward's), not 2.5x
    assert out["bytes"]["hbm_min"] == fwd_tensors * {"bwd": 2, "fwd_bwd": 3}[pass_]
    # the fused backward's own traffic (fp32 dQ accumulator) and its side kernels are counted
    assert out["bytes"]["hbm"] > out["bytes"]["hbm_min"]


def test_op_attention_ascend_bytes_hbm_is_priced(capsys):
    out = run_json(capsys, "op attention --device ascend-910b2 --seq 4096 --batch 8")
    assert out["impl"] == "npu_fusion_attention"
    assert out["bytes"]["hbm"] == out["hbm_bytes"] >= out["bytes"]["hbm_min"]
