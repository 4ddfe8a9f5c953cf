"""Findings of a new user's audit of the CLI (2026-12-07), each a real command run in-process
through ``xpusim.sim.cli.main.main``: its exit code and what it prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_run import SAVED_TRAIN, run_cli
from xpusim.sim.studies import whatif as whatif_study

SAVED_WHATIF = SAVED_TRAIN + '[whatif]\nmetric = "no_such_metric"\nvary = ["device.hbm_bandwidth=0.5x,2x"]\n'


def test_whatif_unknown_metric_is_refused_before_the_variations_run(capsys, tmp_path, monkeypatch):
    # The README: "Every input is checked before work starts". The metric was checked only
    # after every point had been simulated.
    saved = tmp_path / "saved.toml"
    saved.write_text(SAVED_WHATIF)
    calls: list[int] = []
    real_call = whatif_study.TrainRepricer.__call__

    def counting(self, point):
        calls.append(1)
        return real_call(self, point)

    monkeypatch.setattr(whatif_study.TrainRepricer, "__call__", counting)
    rc, _out, err = run_cli(capsys, f"whatif {saved} --plot {tmp_path / 't.png'}")
    assert rc == 2, err
    assert "Traceback" not in err
    assert "metric 'no_such_metric' not in the result" in err
    assert "tokens_per_s" in err  # the metrics the command does report
    assert len(calls) == 1, "only the base point may run before the metric is checked"


@pytest.mark.parametrize("name", ["trtllm-0.10", "vllm-0.6"])
def test_hw_show_an_engine_listed_by_hw_list(capsys, name):
    # `hw list` lists the serving engines; `hw show ENGINE` said "unknown device or system".
    rc, out, err = run_cli(capsys, f"hw show {name}")
    assert rc == 0, err
    assert out.split()[:2] == ["name", name]
    assert "max_num_seqs" in out


def test_hw_show_an_engine_file_and_json(capsys):
    path = Path(__file__).parents[1] / "hwprofiles" / "engines" / "trtllm-0.10.toml"
    rc, out, err = run_cli(capsys, f"hw show {path} --json")
    assert rc == 0, err
    payload = json.loads(out)
    assert payload["kind"] == "engine"
    assert payload["profile"]["name"] == "trtllm-0.10"


def test_hw_diff_two_engines(capsys):
    rc, out, err = run_cli(capsys, "hw diff trtllm-0.10 vllm-0.6 --json")
    assert rc == 0, err
    fields = {row["field"] for row in json.loads(out)["differences"]}
    assert "max_num_seqs" in fields


def test_hw_show_a_calibrated_profile_by_name(capsys):
    # `hw list`: "calibrated profiles (use as a device name): cpu-host-calibrated"; every
    # command took the name but `hw show` did not.
    rc, out, err = run_cli(capsys, "hw show cpu-host-calibrated")
    assert rc == 0, err
    assert out.split()[:2] == ["name", "cpu-host"]


def test_hw_diff_gives_no_ratio_of_flags(capsys):
    # True -> False printed as "0x"; a ratio is a figure of numbers only.
    rc, out, err = run_cli(capsys, "hw diff dgx-h100 dgx-a100 --json")
    assert rc == 0, err
    rows = {row["field"]: row for row in json.loads(out)["differences"]}
    assert rows["collective_library.nvls"]["ratio_b_over_a"] is None
    assert rows["device.hbm_bandwidth"]["ratio_b_over_a"] == pytest.approx(2.039e12 / 3.35e12, rel=1e-3)


def test_train_header_names_the_device_not_n_systems(capsys):
    # "llama-2-7b on 8 x dgx-a100" read as eight DGX boxes; it is 8 A100s of one dgx-a100.
    rc, out, err = run_cli(
        capsys, "train --model llama-2-7b --system dgx-a100 --nodes 1 --tp 8 --mbs 1 --gbs 8 "
        "--seq 2048 --quiet")
    assert rc == 0, err
    assert out.startswith("llama-2-7b on 8 x a100-sxm4-80gb (dgx-a100): tp=8 ")


ATTN = "op attention --seq 1024 --batch 2"


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        # FlashAttention-2 runs fp16/bf16 only; it was priced at 499 TFLOP/s in FP8 on H100.
        ("--impl flash2 --dtype fp8 --device h100-sxm5-80gb", ["--impl flash2 --dtype fp8", "cudnn"]),
        ("--impl flash1 --dtype fp8 --device h100-sxm5-80gb", ["fp16 and bf16 only"]),
        # Head dimensions: FA2 up to 256, FA1 up to 128 (flash-attn README).
        ("--impl flash2 --head-dim 512 --device h100-sxm5-80gb", ["up to 256", "--head-dim"]),
        ("--impl flash1 --head-dim 256 --device a100-sxm4-80gb", ["up to 128"]),
        # FA2 needs sm_80+, FA1 sm_75+: on a V100 the stacks run xformers (its profile says so).
        ("--impl flash2 --dtype fp16 --device v100-sxm2-32gb", ["compute capability 8", "xformers"]),
        ("--impl flash1 --dtype fp16 --device v100-sxm2-32gb", ["compute capability 7.5"]),
    ],
)
def test_op_attention_refuses_what_flash_attention_cannot_run(capsys, flags, words):
    rc, _out, err = run_cli(capsys, f"{ATTN} {flags}")
    assert rc == 2, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize(
    "flags",
    [
        "--impl flash2 --head-dim 256 --device h100-sxm5-80gb",  # the limit itself runs
        "--impl flash1 --head-dim 128 --dtype fp16 --device a100-sxm4-80gb",
        "--dtype fp16 --device v100-sxm2-32gb",  # the V100 default, xformers
        "--dtype fp8 --device l40s",  # the device default stays a stand-in at any dtype
        "--impl flash3 --dtype fp8 --device h100-sxm5-80gb",
    ],
)
def test_op_attention_still_prices_what_runs(capsys, flags):
    rc, out, err = run_cli(capsys, f"{ATTN} {flags} --json")
    assert rc == 0, err
    assert json.loads(out)["time_s"] > 0


def test_train_refuses_flash2_on_volta(capsys):
    rc, _out, err = run_cli(
        capsys, "train --model llama-2-7b --system dgx-v100 --nodes 1 --tp 8 --mbs 1 --gbs 8 "
        "--seq 2048 --dtype fp16 --attention-impl flash2 --quiet")
    assert rc == 2, err
    assert "--attention-impl flash2" in err


PLAN_KEYS = "tp = 2\npp = 2\nmbs = 1\ngbs = 16\nseq = 4096\n"
PLAN_TOP = 'model = "llama-3-8b"\nsystem = "atlas-800t-a2"\nnodes = 1\n'


def test_plan_file_with_a_misspelt_plan_table_names_only_it(capsys, tmp_path):
    # "[plam]" was reported as unknown keys ['model', 'system', 'nodes', 'plam'].
    path = tmp_path / "plan.toml"
    path.write_text(PLAN_TOP + "[plam]\n" + PLAN_KEYS)
    rc, _out, err = run_cli(capsys, f"train --plan {path} --quiet")
    assert rc == 2, err
    assert "unknown keys ['plam']" in err
    assert "did you mean [plan]?" in err


def test_plan_file_top_level_form_takes_model_and_system(capsys, tmp_path):
    # load_plan_file reads "a [plan] table or top-level keys"; the top-level form refused
    # the model, system and nodes that the [plan] form takes above its table.
    path = tmp_path / "plan.toml"
    path.write_text(PLAN_TOP + PLAN_KEYS)
    rc, out, err = run_cli(capsys, f"train --plan {path} --quiet")
    assert rc == 0, err
    assert out.startswith("llama-3-8b on 8 x ascend-910b2 (atlas-800t-a2): tp=2 pp=2 ")


def test_explore_with_no_valid_plan_does_not_blame_memory(capsys, tmp_path):
    # [plans] tp = [3] divides none of the candidates: each read "no plan of the plan space
    # fits in memory (0 valid plans, 0 checked)", which sends a user after memory.
    study = (Path(__file__).parents[1] / "examples" / "small_study.toml").read_text()
    study = study.replace("tp = [1, 2, 4, 8]", "tp = [3]").replace("shortlist = 30", "shortlist = 2")
    path = tmp_path / "study.toml"
    path.write_text(study)
    rc, out, err = run_cli(capsys, f"explore {path} --out {tmp_path / 'out'} --no-plots --no-cache --json")
    assert rc == 0, err
    ranked = json.loads(out)["ranked"]
    assert ranked and all(r["error"] == "no valid plan in [plans] for this model on these devices"
                          for r in ranked)


def test_infer_kv_tokens_are_the_deployments_not_one_devices(capsys):
    # "memory per device: ... KV cache 59.4 GiB (3,894,600 tokens)": the bytes are one
    # device's, the tokens the deployment's (ep=4 attention replicas x one device's 973,650).
    cmd = "infer --model mixtral-8x7b --system dgx-h100 --tp 2 --ep 4 --phase decode --batch 8"
    rc, out, err = run_cli(capsys, cmd)
    assert rc == 0, err
    rc, js, err = run_cli(capsys, cmd + " --json")
    memory = json.loads(js)["memory"]
    one_device = memory["kv_cache_bytes"] / memory["kv_bytes_per_token"]
    assert memory["kv_tokens"] == pytest.approx(4 * one_device)
    assert f"({memory['kv_tokens']:,.0f} tokens over the 8 devices)" in out
    assert "of KV per device" in out


def test_validate_rows_outside_the_category_are_not_called_missing(capsys):
    # "--rows A3-fa2-512 --category gemm" said "no such row id in the corpus".
    rc, _out, err = run_cli(capsys, "validate --published --rows A3-fa2-512,zzz --category gemm")
    assert rc == 2, err
    assert "A3-fa2-512 is in category attention, not --category gemm" in err
    assert "zzz is no row id of the corpus" in err


def test_a_missing_calibration_file_names_the_flag(capsys):
    rc, _out, err = run_cli(capsys, "op gemm --m 8 --n 8 --k 8 --calibration /no/such/cal.toml")
    assert rc == 2, err
    assert "--calibration /no/such/cal.toml: file not found" in err


def test_compare_devices_sizes_an_infer_deployment_given_no_tp(capsys):
    # "compare --devices 8 infer --model llama-2-70b ..." ran TP 1 on each system and every
    # row read "out of memory"; --devices is "devices the deployment spans".
    rc, out, err = run_cli(
        capsys, "compare --systems dgx-h100,dgx-a100 --devices 8 --json infer --model llama-2-70b "
        "--phase decode --batch 8")
    assert rc == 0, err
    rows = json.loads(out)["rows"]
    assert [r["devices"] for r in rows] == [8, 8]
    assert all(r["tokens_per_s"] > 0 for r in rows)
    # a size in the infer arguments is kept
    rc, out, err = run_cli(
        capsys, "compare --systems dgx-h100 --devices 8 --json infer --model llama-2-70b --tp 4 "
        "--phase decode --batch 8")
    assert rc == 0, err
    assert json.loads(out)["rows"][0]["devices"] == 4


def test_train_vpp_without_pp_is_refused_before_lowering(capsys):
    # It lowered, then failed with "group lists a device more than once".
    rc, _out, err = run_cli(
        capsys, "train --model llama-2-7b --system dgx-a100 --nodes 1 --tp 2 --pp 1 --vpp 2 "
        "--mbs 1 --gbs 8 --seq 2048 --quiet")
    assert rc == 2, err
    assert "vpp=2 needs pipeline parallelism" in err
    assert "more than once" not in err


def test_train_says_where_its_trace_and_timeline_went(capsys, tmp_path):
    trace, timeline = tmp_path / "t.json", tmp_path / "t.png"
    rc, out, err = run_cli(
        capsys, "train --model llama-2-7b --system dgx-a100 --nodes 1 --tp 8 --mbs 1 --gbs 8 "
        f"--seq 2048 --quiet --trace {trace} --timeline {timeline}")
    assert rc == 0, err
    assert f"trace: {trace}" in out and f"timeline: {timeline}" in out
    assert trace.stat().st_size > 0 and timeline.stat().st_size > 0


def test_one_rank_collective_says_nothing_crosses_a_link(capsys):
    rc, out, err = run_cli(capsys, "collective all-to-all --system dgx-h100 --ranks 1 --bytes 1GiB")
    assert rc == 0, err
    assert "bottleneck: none (one rank: no data crosses a link)" in out


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        # MoE-only flags on a dense model were ignored without a word.
        ("--model llama-2-7b --tp 8 --routing zipf:1.2", ["--routing: llama-2-7b is dense", "drop it"]),
        ("--model llama-2-7b --tp 1 --ep-dispatch-dtype fp8", ["--ep-dispatch-dtype: llama-2-7b"]),
        # An EP kernel with no EP all-to-all to price.
        ("--model mixtral-8x7b --tp 8 --ep-dispatch deepep", ["--ep 1 has none", "--ep > 1"]),
    ],
)
def test_infer_refuses_moe_flags_that_would_be_ignored(capsys, flags, words):
    rc, _out, err = run_cli(capsys, f"infer --system dgx-h100 --phase decode {flags}")
    assert rc == 2, err
    for word in words:
        assert word in err, err


def test_infer_moe_flags_still_run_where_they_apply(capsys):
    rc, _out, err = run_cli(
        capsys, "infer --model mixtral-8x7b --system dgx-h100 --tp 1 --ep 8 --phase decode "
        "--routing zipf:1.2 --ep-dispatch deepep")
    assert rc == 0, err


@pytest.mark.parametrize(
    ("command", "words"),
    [
        # TensorRT-LLM on a 910B and MindIE on an H100 were priced as if they ran there.
        ("infer --model llama-2-7b --system atlas-800t-a2 --tp 1 --phase decode --engine trtllm-0.10",
         ["--engine trtllm-0.10 runs on nvidia devices", "ascend-910b2 is davinci"]),
        ("infer --model llama-2-7b --system dgx-h100 --tp 1 --phase decode --engine mindie-1.0",
         ["--engine mindie-1.0 runs on davinci devices"]),
        ("sd --target qwen2-57b-a14b --draft qwen2-0.5b --system atlas-800t-a2 --devices 2 "
         "--engine trtllm-0.17", ["--engine trtllm-0.17 runs on nvidia"]),
        ("infer --model llama-2-7b --system dgx-h100 --serve --prefill-system dgx-h100 "
         "--decode-system atlas-800t-a2 --prefill-devices 1 --decode-devices 1 --engine trtllm-1.0",
         ["the decode pool's ascend-910b2 is davinci"]),
    ],
)
def test_an_engine_on_a_device_it_does_not_run_on_is_refused(capsys, command, words):
    rc, _out, err = run_cli(capsys, command)
    assert rc == 2, err
    for word in words:
        assert word in err, err


def test_engines_run_on_their_own_platform(capsys):
    for command in (
        "infer --model llama-2-7b --system atlas-800t-a2 --tp 1 --phase decode --engine vllm-ascend-0.9",
        "infer --model llama-2-7b --system dgx-h100 --tp 1 --phase decode --engine trtllm-0.17",
        "infer --model llama-2-7b --system atlas-800t-a2 --tp 1 --phase decode",  # vllm-0.6: any
    ):
        rc, _out, err = run_cli(capsys, command)
        assert rc == 0, (command, err)


@pytest.mark.parametrize(
    "command",
    [
        "sd --target qwen2-57b-a14b --draft llama-2-7b --system hgx-h800 --devices 2 --batch 1",
        "infer --model llama-2-70b --system dgx-h100 --tp 8 --serve --draft qwen2-0.5b --requests 10",
    ],
)
def test_a_draft_of_another_tokenizer_is_refused(capsys, command):
    # vLLM's SpecDecodeWorker asserts draft and target vocab sizes are equal.
    rc, _out, err = run_cli(capsys, command)
    assert rc == 2, err
    assert "a draft must share the target's tokenizer" in err


def test_hw_list_json_carries_the_tables_figures(capsys):
    # "Every command prints a readable table and takes --json": hw list's JSON had names only.
    rc, out, err = run_cli(capsys, "hw list --json")
    assert rc == 0, err
    d = json.loads(out)
    h100 = next(r for r in d["device_figures"] if r["name"] == "h100-sxm5-80gb")
    assert h100["matrix_peak_bf16_flops"] == pytest.approx(989e12)
    assert h100["matrix_peak_fp8_flops"] == pytest.approx(1979e12, rel=0.01)
    assert h100["matrix_peak_mxfp4_flops"] is None
    assert {r["name"] for r in d["system_figures"]} == set(d["systems"])
    trt = next(r for r in d["engine_figures"] if r["name"] == "trtllm-0.10")
    assert trt["device_archs"] == ["nvidia"]


def test_infer_notes_a_context_past_the_models_positions(capsys):
    rc, _out, err = run_cli(
        capsys, "infer --model llama-2-70b --system dgx-h100 --tp 8 --phase decode --context 1000000")
    assert rc == 0, err  # priced as asked ...
    assert "note: --context 1000000 is past llama-2-70b's 4,096 positions" in err  # ... and said
    rc, _out, err = run_cli(
        capsys, "infer --model llama-2-70b --system dgx-h100 --tp 8 --phase decode --context 4095")
    assert rc == 0 and "note:" not in err


def test_serve_trace_with_stream_flags_is_refused(capsys, tmp_path):
    # --trace gives every arrival and length; --requests/--rate beside it were ignored.
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,10\n0.5,200,20\n")
    base = f"infer --model llama-2-7b --system dgx-a100 --devices 1 --serve --trace {trace}"
    rc, _out, err = run_cli(capsys, f"{base} --requests 10 --rate 3")
    assert rc == 2, err
    assert "--rate, --requests: --trace gives each request's arrival and lengths" in err
    rc, out, err = run_cli(capsys, base)
    assert rc == 0, err
    assert "2/2 requests" in out


def test_attention_seq_range_must_end_on_the_range(capsys):
    # '1024,2048,...,3000' ran 1024 and 2048 only, without a word.
    rc, _out, err = run_cli(capsys, "attention --seq 1024,2048,...,3000")
    assert rc == 2, err
    assert "3000 is not in the range 1024,2048,..." in err and "4096" in err
