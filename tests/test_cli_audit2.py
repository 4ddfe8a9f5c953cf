"""Open items of the CLI audit (2026-12-07), closed in a second pass: each a real command run
in-process through ``xpusim.sim.cli.main.main``, its exit code and what it prints."""

from __future__ import annotations

import json

import pytest
from cli_run import run_cli

ATTN = "op attention --device h100-sxm5-80gb --batch 8 --heads 32 --seq 4096 --head-dim 128"


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
        assert out["bytes"]["roofline"] == tensors  # what roofline_time_s reads
        assert out["roofline_time_s"] >= tensors / 3.35e12
    assert flash["bytes"]["hbm"] == tensors  # a fused kernel moves each once
    score = 8 * 32 * 4096 * 4096 * 2
    assert std["bytes"]["hbm"] == std["hbm_bytes"] > tensors + 2 * score
    assert std["bytes"]["hbm"] / std["memory_s"] <= 3.35e12  # priced at most at the HBM rate
    rc, out, err = run_cli(capsys, f"{ATTN} --impl standard")
    assert rc == 0, err
    assert "HBM traffic 33 GiB (standard's kernels; the roofline's Q, K, V, O: 1 GiB)" in out


@pytest.mark.parametrize("pass_", ["bwd", "fwd_bwd"])
def test_op_attention_backward_bytes(capsys, pass_):
    out = run_json(capsys, f"{ATTN} --impl flash2 --pass {pass_}")
    fwd_tensors = 4 * 8 * 32 * 4096 * 128 * 2
    # the roofline's bytes scale by the FLOP factor (docs/attention.md section 7)
    assert out["bytes"]["roofline"] == fwd_tensors * {"bwd": 2.5, "fwd_bwd": 3.5}[pass_]
    # the fused backward's own traffic (O, dO, dQ, dK, dV, the fp32 dQ accumulator) and its
    # side kernels are what bytes.hbm counts
    assert out["bytes"]["hbm"] > 2 * fwd_tensors * {"bwd": 1, "fwd_bwd": 1.5}[pass_]


def test_op_attention_ascend_bytes_hbm_is_priced(capsys):
    out = run_json(capsys, "op attention --device ascend-910b2 --seq 4096 --batch 8")
    assert out["impl"] == "npu_fusion_attention"
    assert out["bytes"]["hbm"] == out["hbm_bytes"] >= out["bytes"]["roofline"]


V100_BF16 = "has no bf16 matrix path (its profile's [matrix] formats: fp16)"


@pytest.mark.parametrize(
    "command",
    [
        "op gemm --device v100-sxm2-32gb --m 4096 --n 4096 --k 4096 --dtype bf16",
        "op attention --device v100-sxm2-32gb --seq 2048 --dtype bf16",
        "attention --device v100-sxm2-32gb --seq 2048 --dtype bf16",
        "train --model llama-2-7b --system dgx-v100 --tp 8 --gbs 8 --seq 2048 --dtype bf16",
        "infer --model llama-2-7b --system dgx-v100 --devices 1 --dtype bf16",
        "infer --model llama-2-7b --system dgx-v100 --devices 1 --dtype bf16 --serve "
        "--requests 10 --rate 1",
        "sd --target qwen2-57b-a14b --draft qwen2-0.5b --system dgx-v100 --devices 8 "
        "--batch 1 --dtype bf16",
    ],
)
def test_bf16_on_a_v100_is_refused_by_every_command(capsys, command):
    # Volta's tensor cores run fp16 only; bf16 was priced silently at the fp16 rate.
    rc, _out, err = run_cli(capsys, command)
    assert rc == 2, err
    assert "Traceback" not in err
    assert "--dtype bf16: v100-sxm2-32gb" in err
    assert V100_BF16 in err and "pass --dtype fp16" in err


def test_the_default_dtype_on_a_v100_is_fp16(capsys):
    # No --dtype: the device's 16-bit format (fp16 on a V100), at the rate bf16 was priced at.
    gemm = "op gemm --device v100-sxm2-32gb --m 4096 --n 4096 --k 4096"
    default = run_json(capsys, gemm)
    fp16 = run_json(capsys, gemm + " --dtype fp16")
    assert default["dtype"] == "fp16" and default["time_s"] == fp16["time_s"]
    assert run_json(capsys, "op gemm --m 64 --n 64 --k 64")["dtype"] == "bf16"  # H100
    infer = "infer --model llama-2-7b --system dgx-v100 --devices 1"
    assert run_json(capsys, infer)["dtype"] == "fp16"
    train = "train --model llama-2-7b --system dgx-v100 --tp 8 --gbs 8 --seq 2048"
    assert run_json(capsys, train)["plan"]["dtype"] == "fp16"
    # an FP8 refusal on a V100 no longer suggests bf16
    rc, _out, err = run_cli(capsys, gemm + " --dtype fp8")
    assert rc == 2 and "pass --dtype fp16" in err


@pytest.mark.parametrize(
    ("system", "engine"),
    [("atlas-800t-a2", "vllm-ascend-0.9"), ("dgx-a100", "vllm-0.6"), ("mi300x-8", "vllm-0.6"),
     ("dgx-b200", "vllm-nightly"), ("gb300-nvl72", "vllm-nightly")],
)
def test_the_default_engine_follows_the_devices_arch(capsys, system, engine):
    # vllm-0.6 was the default on Ascend, where vLLM runs only through vllm-ascend, and on
    # Blackwell, where no vLLM before 0.9 (CUDA 12.8 wheels) runs: there the V1 profile.
    out = run_json(capsys, f"infer --model llama-2-7b --system {system} --devices 1")
    assert out["engine"] == engine
    rc, _out, err = run_cli(capsys, f"infer --model llama-2-7b --system {system} --devices 1")
    assert rc == 0, err
    said = "no engine profile names amd devices in [platform] device_archs" in err
    assert said == (system == "mi300x-8")  # an arch without an engine: said which and why
    serve = run_json(capsys, f"infer --model llama-2-7b --system {system} --devices 1 --serve "
                     "--requests 20 --rate 5")
    assert serve["engine"] == engine


def test_the_default_engine_of_sd_on_ascend(capsys):
    sd = "sd --target qwen2-57b-a14b --draft qwen2-0.5b --system atlas-800t-a2 --devices 2 --batch 1"
    out = run_json(capsys, sd)
    assert out["engine"] == "vllm-ascend-0.9"
    named = run_json(capsys, sd + " --engine vllm-0.6")
    assert named["engine"] == "vllm-0.6"  # a named engine is kept


@pytest.mark.parametrize(
    ("device", "bound"),
    [("h100-sxm5-80gb", "tensor-core"), ("v100-sxm2-32gb", "tensor-core"),
     ("mi300x", "matrix-unit"), ("ascend-910b2", "gm")],
)
def test_attention_study_names_the_bound_by_the_devices_arch(capsys, device, bound):
    # "cube" (Ascend's matrix unit) was printed on NVIDIA devices.
    out = run_json(capsys, f"attention --device {device} --seq 1024 --head-dim 64")
    assert out["rows"][0]["fast_bound"] == bound
    rc, text, err = run_cli(capsys, f"attention --device {device} --seq 1024 --head-dim 64")
    assert rc == 0, err
    assert text.split("\n")[3].split()[-1] == bound
    if device != "ascend-910b2":
        assert "cube" not in text


GPT3 = ("train --model gpt3-175b --system dgx-a100 --nodes 192 --tp 8 --pp 12 --mbs 1 --gbs 1536 "
        "--dtype fp16")


def test_train_seq_past_learned_positions_is_noted(capsys):
    # gpt3-175b has 2,048 learned positions; --seq 4096 ran without a word.
    rc, _out, err = run_cli(capsys, f"{GPT3} --seq 4096")
    assert rc == 0, err
    assert "note: --seq 4,096 is past gpt3-175b's 2,048 learned positions" in err
    assert "table extended" in err
    rc, _out, err = run_cli(capsys, f"{GPT3} --seq 2048")
    assert rc == 0 and "note:" not in err


def test_train_seq_past_rope_context_is_noted(capsys):
    rc, _out, err = run_cli(
        capsys, "train --model llama-2-7b --system dgx-a100 --tp 8 --gbs 8 --seq 8192 --json")
    assert rc == 0, err
    assert "past llama-2-7b's 4,096 trained positions" in err and "position scaling" in err
    rc, _out, err = run_cli(capsys, "train --model llama-2-7b --system dgx-a100 --tp 8 --gbs 8 "
                            "--seq 4096")
    assert rc == 0 and "note:" not in err


@pytest.mark.parametrize("value", ["-5", "0", "0.5", "uniform:0:5", "exp:0"])
def test_serve_length_below_one_token_says_the_true_bound(capsys, value):
    # '-5' said "length must be >= 0", yet 0 was refused with another message.
    rc, _out, err = run_cli(capsys, "infer --model llama-2-7b --system dgx-a100 --devices 1 "
                            f"--serve --requests 10 --rate 5 --prompt-len {value}")
    assert rc == 2, err
    assert f"--prompt-len '{value}': length must be >= 1" in err


@pytest.mark.parametrize(
    ("flags", "said"),
    [("--dtype fp8 --pass bwd", "FlashAttention-3's backward runs fp16, bf16 only"),
     ("--dtype fp8 --pass fwd_bwd", "FlashAttention-3's backward runs fp16, bf16 only"),
     ("--dtype int8", "FlashAttention-3's forward runs fp16, bf16, fp8, fp8_e4m3 only"),
     ("--dtype fp32", "FlashAttention-3's forward runs"),
     ("--head-dim 512", "FlashAttention-3 supports head dimensions up to 256")],
)
def test_op_attention_flash3_refuses_what_fa3_does_not_run(capsys, flags, said):
    # FA3's FP8 backward, int8/fp32 and head dim 512 were priced as if FA3 ran them.
    rc, _out, err = run_cli(capsys, f"{ATTN} --impl flash3 {flags}")
    assert rc == 2, err
    assert said in err and "Traceback" not in err


def test_op_attention_flash3_runs_what_fa3_runs(capsys):
    for flags in ("--dtype fp8", "--dtype fp16 --pass bwd", "--head-dim 256"):
        rc, _out, err = run_cli(capsys, f"{ATTN} --impl flash3 {flags}")
        assert rc == 0, err


def test_hw_list_says_where_each_engine_runs_and_is_the_default(capsys):
    rc, out, err = run_cli(capsys, "hw list")
    assert rc == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["vllm-ascend-0.9"][-2:] == ["davinci", "davinci"]
    assert rows["vllm-0.6"][-2:] == ["any", "nvidia-pre-sm100/amd/cpu"]
    assert rows["vllm-nightly"][-2:] == ["any", "nvidia-sm100+"]
    assert rows["trtllm-0.10"][-2:] == ["nvidia", "-"]
    figures = {e["name"]: e for e in run_json(capsys, "hw list")["engine_figures"]}
    assert figures["vllm-ascend-0.9"]["default_on"] == ["davinci"]


def test_compare_infer_names_each_systems_engine(capsys):
    # The default engine now follows the device: compare said "same deployment" and hid that
    # the Ascend system ran vllm-ascend-0.9 and the H100 vllm-0.6.
    rc, out, err = run_cli(capsys, "compare --systems atlas-800t-a2,dgx-h100 infer "
                           "--model llama-2-7b --devices 1")
    assert rc == 0, err
    assert "engine=vllm-ascend-0.9" in out and "engine=vllm-0.6" in out
    assert "note: the systems ran different serving engines" in out
    rc, out, err = run_cli(capsys, "compare --systems atlas-800t-a2,dgx-h100 infer "
                           "--model llama-2-7b --devices 1 --engine none")
    assert rc == 0, err
    assert "different serving engines" not in out
