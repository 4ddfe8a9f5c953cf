"""Bad input to every command: exit 2 (3 for a negative verdict), a message naming the field
and the fix, never a Python traceback.

Each case runs ``xpusim ...`` in-process through ``xpusim.sim.cli.main.main`` and checks the return
code, that stderr holds no traceback, and that it names what was wrong. A few cases run as a
real process, where the exit status itself is the contract. Inputs the current tree does not
yet rejected cleanly were fixed and are kept as ``FORMER_GAPS`` regression cases,
so they turn green when fixed without breaking the suite.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import SAVED_TRAIN
from xpusim.sim.cli.main import main

DATA = Path(__file__).parent / "data"

# Small malformed inputs, written into tmp_path by the ``files`` fixture; commands refer to
# them as {NAME}.
BAD_FILES = {
    "bad_toml": ("bad.toml", "this is [not toml\n"),
    "bad_json": ("bad.json", '{"hidden_size": 12,'),
    "list_json": ("list.json", "[1, 2, 3]"),
    "incomplete_json": ("incomplete.json", '{"model_type": "llama"}'),
    "unknown_type_json": ("unknown.json", '{"model_type": "gpt-neo-magic", "hidden_size": 64}'),
    "empty_toml": ("empty.toml", ""),
    "system_incomplete": ("sys.toml", 'schema_version = 1\nkind = "system"\nname = "x"\n'),
    "plan_unknown": ("plan_unknown.toml", "[plan]\ntp = 2\nbogus = 3\n"),
    "hist_words": ("hist.csv", "a,b\n1,2\n"),
    "trace_words": ("trace.csv", "arrival_s,prompt_tokens,output_tokens\n0,abc,10\n"),
    "trace_columns": ("trace_cols.csv", "x,y\n1,2\n"),
    "trace_negative": ("trace_neg.csv", "arrival_s,prompt_tokens,output_tokens\n0,-5,10\n"),
    "saved_bad_command": ("saved_cmd.toml", 'command = "dance"\n[args]\n'),
    "study_partial": ("study.toml", 'name = "x"\n'),
    "cal_no_device": ("cal.toml", 'kind = "calibration"\n'),
    "plan_bad_type": ("plan_bad_type.toml", '[plan]\ntp = "eight"\n'),
    "plan_not_table": ("plan_not_table.toml", "plan = 5\n"),
    "cal_negative": (
        "cal_neg.toml",
        'kind = "calibration"\ndevice = "cpu-host"\n[efficiency]\nmatrix_max = -1\n',
    ),
    "plan_top_unknown": ("plan_top_unknown.toml", "bogus = 1\n[plan]\ntp = 2\n"),
    "plan_nodes_word": ("plan_nodes_word.toml", 'nodes = "abc"\n[plan]\ntp = 2\n'),
    "plan_system_int": ("plan_system_int.toml", "system = 5\n[plan]\ntp = 2\n"),
    "deep_llama": (
        "deep.json",
        '{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1000000000, '
        '"num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100}',
    ),
    "saved_train": (
        "saved.toml",
        SAVED_TRAIN,
    ),
}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for key, (name, text) in BAD_FILES.items():
        path = tmp_path / name
        path.write_text(text)
        paths[key] = str(path)
    paths["missing"] = str(tmp_path / "does-not-exist.toml")
    paths["broken_device"] = str(DATA / "broken_device.toml")
    paths["broken_system"] = str(DATA / "broken_system.toml")
    paths["tmp"] = str(tmp_path)
    paths["small_study"] = str(Path(__file__).parent.parent / "examples" / "small_study.toml")
    # Shipped profiles with one figure made nonsense (TOML allows nan, inf and true).
    root = Path(__file__).parent.parent / "hwprofiles"
    engine = (root / "engines" / "vllm-0.6.toml").read_text()
    device = (root / "devices" / "h100-sxm5-80gb.toml").read_text()
    for key, (text, pattern, value) in {
        "engine_nan": (engine, r"step_overhead_per_seq_us = [0-9.]+", "nan"),
        "engine_inf": (engine, r"step_overhead_per_seq_us = [0-9.]+", "inf"),
        "engine_bool": (engine, r"step_overhead_per_seq_us = [0-9.]+", "true"),
        "device_bool": (device, r"(?m)^bandwidth_gbps = [0-9.]+", "true"),
    }.items():
        name = pattern.split(" =")[0].lstrip("(?m)^")
        paths[key] = str(tmp_path / f"{key}.toml")
        Path(paths[key]).write_text(re.sub(pattern, f"{name} = {value}", text, count=1))
    toy_moe = (DATA / "toy_mla_moe_config.json").read_text()
    paths["moe_ngroup"] = str(tmp_path / "moe_ngroup.json")
    Path(paths["moe_ngroup"]).write_text(toy_moe.replace('"n_group": 2', '"n_group": 3'))
    return paths


def run_cli(capsys, command: str, files: dict[str, str]) -> tuple[int, str]:
    argv = shlex.split(command.format(**files))
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    return rc, capsys.readouterr().err


# (command, expected exit code, words the message must contain)
GEMM = "op gemm --m 8 --n 8 --k 8 --device h100-sxm5-80gb"
EP = "ep --model pangu-ultra-moe --system atlas-800t-a2 --tokens-per-device 128"
ATTN = "attention --device ascend-910b2 --seq 1024"
TRAIN = "train --model llama-3-8b --system atlas-800t-a2 --nodes 1 --gbs 8 --seq 128"
INFER = "infer --model llama-2-7b --system dgx-a100 --devices 1"
SERVE = f"{INFER} --serve --rate 1 --requests 5"
SD = "sd --target qwen2-57b-a14b --draft qwen2-0.5b --system hgx-a800 --devices 2 --gamma 4"
FA = "predict kernel fastattention --shape batch=1,heads=8,seq=1024,head_dim=64"

CASES = [
    # hw: names, paths, malformed profiles
    ("hw show no-such-device", 2, ["no-such-device", "xpusim hw list"]),
    ("hw show ascend-910b", 2, ["Did you mean", "ascend-910b2"]),
    ("hw show {missing}", 2, ["not found"]),
    ("hw show {bad_toml}", 2, ["not valid TOML", "line 1"]),
    ("hw show {empty_toml}", 2, ["field 'hbm'", "docs/profiles.md"]),
    ("hw show {system_incomplete}", 2, ["field 'inter_node'"]),
    ("hw show {broken_device}", 2, ["hbm.bandwidth_gbps", "got 'fast'"]),
    ("hw show {broken_system}", 2, ["intra_node.link_bandwidth_gbps", "greater than 0"]),
    ("hw diff h100-sxm5-80gb nope", 2, ["'nope'"]),
    ("hw list --bogus", 2, ["--bogus"]),
    # model: names, config files, ranges
    ("model show nope-model", 2, ["unknown model", "Presets"]),
    ("model show {missing}", 2, ["not found"]),
    ("model show {bad_json}", 2, ["not valid JSON", "line 1"]),
    ("model show {list_json}", 2, ["JSON object"]),
    ("model show {incomplete_json}", 2, ["hidden_size"]),
    ("model show {unknown_type_json}", 2, ["model_type", "Supported"]),
    ("model show llama-2-7b --seq 0", 2, ["--seq"]),
    ("model show llama-2-7b --seq abc", 2, ["--seq", "invalid int"]),
    # op
    ("op gemm --m -1 --n 8 --k 8 --device h100-sxm5-80gb", 2, ["--m must be >= 1, got -1"]),
    ("op gemm --m abc --n 8 --k 8 --device h100-sxm5-80gb", 2, ["--m"]),
    ("op gemm --m 8 --n 8 --k 8 --device nope", 2, ["unknown device 'nope'"]),
    ("op gemm --m 8 --n 8 --k 8 --device dgx-h100", 2, ["unknown device 'dgx-h100'"]),
    (f"{GEMM} --dtype fp99", 2, ["unknown dtype 'fp99'", "bf16"]),
    (f"{GEMM} --calibration {{missing}}", 2, ["not found"]),
    (f"{GEMM} --calibration {{bad_toml}}", 2, ["not valid TOML"]),
    (f"{GEMM} --calibration {{empty_toml}}", 2, ["'kind'", "calibration"]),
    ("op attention --heads 8 --seq -1 --device h100-sxm5-80gb", 2, ["--seq must be >= 1, got -1"]),
    ("op elementwise --numel -5 --device h100-sxm5-80gb", 2, ["--numel must be > 0"]),
    ("op elementwise --numel 1XB --device h100-sxm5-80gb", 2, ["--numel"]),
    # collective
    ("collective all-reduce --system dgx-h100 --bytes 1XB", 2, ["--bytes '1XB'", "GiB"]),
    ("collective all-reduce --system dgx-h100 --bytes abc", 2, ["--bytes 'abc'"]),
    ("collective all-reduce --system dgx-h100 --ranks 0", 2, ["--ranks must be >= 1"]),
    ("collective all-reduce --system dgx-h100 --ranks 100 --nodes 2", 2, ["--nodes 13"]),
    ("collective all-reduce --system nope", 2, ["unknown system 'nope'"]),
    ("collective all-reduce --system h100-sxm5-80gb", 2, ["unknown system", "Did you mean"]),
    ("collective all-reduce --system {bad_toml}", 2, ["not valid TOML"]),
    ("collective all-reduce --system {broken_system}", 2, ["intra_node.link_bandwidth_gbps"]),
    ("collective all-smash --system dgx-h100", 2, ["KIND", "all-reduce"]),
    ("collective all-reduce --system dgx-h100 --algorithm pairwise", 2, ["ring, tree"]),
    ("collective all-to-all --system dgx-h100 --algorithm tree", 2, ["pairwise"]),
    ("collective all-reduce --system dgx-h100 --sweep 4GiB:1KiB", 2, ["MIN <= MAX"]),
    ("collective all-reduce --system dgx-h100 --sweep abc", 2, ["MIN:MAX"]),
    # ep
    ("ep --model nope --system atlas-800t-a2 --ep 8", 2, ["unknown model 'nope'"]),
    ("ep --model llama-2-7b --system atlas-800t-a2 --ep 8", 2, ["dense", "MoE"]),
    (f"{EP} --ep 0", 2, ["--ep must be >= 1"]),
    (f"{EP} --ep 7", 2, ["--ep 7", "256 routed experts"]),
    (f"{EP} --ep 32 --nodes 2", 2, ["--nodes 4"]),
    (f"{EP} --ep 8 --tokens-per-device -5", 2, ["--tokens-per-device"]),
    (f"{EP} --ep 8 --dispatch weird", 2, ["--dispatch", "hierarchical"]),
    (f"{EP} --ep 8 --routing zipf:abc", 2, ["--routing", "zipf:S"]),
    (f"{EP} --ep 8 --routing zipf:-1", 2, ["Zipf exponent"]),
    (f"{EP} --ep 8 --routing hist:{{missing}}", 2, ["--routing", "file not found"]),
    (f"{EP} --ep 8 --routing hist:{{hist_words}}", 2, ["--routing", "histogram"]),
    (f"{EP} --ep 8 --routing gaussian", 2, ["uniform, zipf:S or hist:FILE"]),
    (f"{EP} --ep 8 --capacity-factor 0", 2, ["--capacity-factor", "dropless"]),
    (f"{EP} --ep 8 --top-k 300", 2, ["--top-k 300"]),
    (f"{EP} --ep 8 --dtype fp99", 2, ["unknown dtype"]),
    (f"{EP} --ep 8 --sweep ep=abc", 2, ["--sweep", "integers"]),
    (f"{EP} --ep 8 --sweep foo=1,2", 2, ["ep=8,16,32,64"]),
    (f"{EP} --ep 8 --overlap-compute-s -1", 2, ["--overlap-compute-s"]),
    ("ep --system atlas-800t-a2 --ep 8", 2, ["--model", "--hidden"]),
    ("ep --hidden -1024 --top-k 2 --experts 8 --system atlas-800t-a2 --ep 8", 2, ["--hidden"]),
    # attention
    ("attention --device nope --seq 1024", 2, ["unknown device 'nope'"]),
    ("attention --device ascend-910b2 --seq 0", 2, ["--seq", ">= 1"]),
    ("attention --device ascend-910b2 --seq abc", 2, ["--seq", "integers"]),
    ("attention --device ascend-910b2 --seq 1024,2048,...,1000", 2, ["--seq", "FIRST"]),
    (f"{ATTN} --heads 0", 2, ["--heads"]),
    (f"{ATTN} --batch 0", 2, ["--batch"]),
    (f"{ATTN} --dtype int3", 2, ["--dtype int3"]),
    (f"{ATTN} --outer-block 0", 2, ["--outer-block"]),
    (f"{ATTN} --sync-us -5", 2, ["--sync-us"]),
    (f"{ATTN} --tp 3 --system atlas-800t-a2", 2, ["TP size (3)"]),
    (f"{ATTN} --tp 16 --system atlas-800t-a2", 2, ["--tp 16", "8 devices"]),
    (f"{ATTN} --tp 2 --system atlas-800t-a2 --blocks 0", 2, ["blocks"]),
    (f"{ATTN} --heads 32 --head-dim 4096", 2, ["head_dim 4096", "L0"]),
    # train: impossible plans, bad files, out-of-memory verdict
    ("train --model nope --system atlas-800t-a2", 2, ["unknown model 'nope'"]),
    ("train --system atlas-800t-a2 --tp 1", 2, ["--model is required"]),
    (f"{TRAIN} --tp 3", 2, ["tp=3", "32 attention heads"]),
    (f"{TRAIN} --tp 0", 2, ["--tp must be >= 1, got 0"]),
    (f"{TRAIN} --tp 1 --pp 5", 2, ["tp*cp*pp = 5"]),
    (f"{TRAIN} --tp 2 --dp 3 --gbs 6", 2, ["--dp"]),
    (f"{TRAIN} --tp 2 --gbs 7", 2, ["gbs=7", "--gbs"]),
    (f"{TRAIN} --tp 2 --seq 0", 2, ["--seq must be >= 1"]),
    (f"{TRAIN} --tp 2 --mbs 0", 2, ["--mbs must be >= 1"]),
    (f"{TRAIN} --tp 2 --vpp 0", 2, ["--vpp must be >= 1"]),
    (f"{TRAIN} --tp 2 --ep 2", 2, ["dense", "ep must be 1"]),
    (f"{TRAIN} --tp 2 --zero 7", 2, ["zero must be 0, 1, 2 or 3"]),
    (f"{TRAIN} --tp 2 --dtype fp99", 2, ["plan.dtype 'fp99'"]),
    (f"{TRAIN} --tp 2 --recompute-modules foo", 2, ["recompute_modules", "norm"]),
    (f"{TRAIN} --tp 2 --order tp-foo", 2, ["order 'tp-foo'"]),
    (f"{TRAIN} --tp 2 --moe-routing zipf:abc", 2, ["moe_routing"]),
    ("train --model llama-3-8b --nodes -1", 2, ["--nodes must be >= 1"]),
    ("train --plan {missing}", 2, ["plan file", "not found"]),
    ("train --plan {bad_toml}", 2, ["plan file"]),
    ("train --plan {plan_unknown} --model llama-3-8b", 2, ["unknown keys ['bogus']"]),
    ("train --model {bad_json} --tp 1", 2, ["not valid JSON"]),
    (
        "train --model pangu-ultra-moe --system atlas-800t-a2 --nodes 4 --tp 8 --ep 3 --gbs 8",
        2,
        ["ep=3 must divide dp=4"],
    ),
    (
        "train --model pangu-ultra-moe --system atlas-800t-a2 --nodes 1 --tp 1 --pp 1 --mbs 1 "
        "--gbs 8 --seq 4096",
        3,
        ["out of memory", "weights", "try --recompute full"],
    ),
    # infer and serving
    ("infer --model nope --system dgx-a100 --devices 1", 2, ["unknown model 'nope'"]),
    ("infer --model llama-2-7b --system nope --devices 1", 2, ["unknown system 'nope'"]),
    (f"{INFER.replace('--devices 1', '--devices 3')}", 2, ["TP=3", "32 attention heads"]),
    (f"{INFER.replace('--devices 1', '--devices 16')}", 2, ["--devices <= 8"]),
    (f"{INFER} --batch 0", 2, ["--batch must be >= 1"]),
    (f"{INFER} --phase prefill --context 0", 2, ["--context >= 1"]),
    (f"{INFER} --phase warmup", 2, ["--phase"]),
    (f"{INFER} --engine nope", 2, ["unknown engine profile 'nope'"]),
    (f"{INFER} --engine {{bad_toml}}", 2, ["not valid TOML"]),
    (f"{INFER} --engine {{empty_toml}}", 2, ["'kind' must be \"engine\""]),
    (f"{INFER} --ep 2", 2, ["--ep needs --tp"]),
    ("infer --model qwen2-57b-a14b --system hgx-a800 --tp 2 --ep 3", 2, ["EP=3", "64 experts"]),
    (
        "infer --model qwen2-57b-a14b --system hgx-a800 --devices 2 --routing bogus",
        2,
        ["--routing"],
    ),
    (
        "infer --model qwen2-57b-a14b --system hgx-a800 --devices 2 --routing {hist_words}",
        2,
        ["--routing", "numbers"],
    ),
    (f"{INFER} --serve --rate 0 --requests 10", 2, ["--rate must be > 0"]),
    (f"{INFER} --serve --rate 1 --requests 0", 2, ["--requests must be >= 1"]),
    (f"{SERVE} --prompt-len abc", 2, ["--prompt-len", "uniform:A:B"]),
    (f"{SERVE} --prompt-len uniform:10:5", 2, ["--prompt-len"]),
    (f"{SERVE} --output-len exp:-3", 2, ["--output-len"]),
    (f"{INFER} --serve --trace {{missing}}", 2, ["--trace", "not found"]),
    (f"{INFER} --serve --trace {{trace_words}}", 2, ["--trace", "line 2"]),
    (f"{INFER} --serve --trace {{trace_columns}}", 2, ["arrival_s"]),
    (f"{INFER} --serve --trace {{trace_negative}}", 2, ["line 2", "prompt_tokens must be >= 1"]),
    (f"{SERVE} --draft nope --gamma 4 --alpha 0.8", 2, ["unknown model 'nope'"]),
    (
        "infer --model deepseek-v3 --system dgx-a100 --devices 1 --phase decode --batch 1",
        3,
        ["exceed the usable device memory", "--devices"],
    ),
    # sd
    (f"{SD.replace('qwen2-57b-a14b', 'nope')} --alpha 0.9", 2, ["unknown model 'nope'"]),
    (f"{SD.replace('hgx-a800', 'nope')} --alpha 0.9", 2, ["unknown system 'nope'"]),
    (f"{SD.replace('--gamma 4', '--gamma 0')} --alpha 0.9", 2, ["gamma must be >= 1"]),
    (f"{SD} --alpha 1.2", 2, ["acceptance rate 1.2", "[0, 1]"]),
    (f"{SD} --alpha abc", 2, ["--alpha"]),
    (f"{SD} --alpha 0.9,0.8", 2, ["2 rates", "gamma is 4"]),
    (f"{SD} --alpha 0.9 --batch 0", 2, ["--batch", ">= 1"]),
    (f"{SD} --alpha 0.9 --batch 1,abc", 2, ["--batch", "integers"]),
    (f"{SD} --sigma 1.5", 2, ["sigma must be in"]),
    (f"{SD} --alpha 0.9 --topk 0", 2, ["--topk 0"]),
    (f"{SD} --alpha 0.9 --topk 1000", 2, ["--topk 1000"]),
    (f"{SD} --alpha 0.9 --compare-dense opt-30b", 2, ["--draft-dense"]),
    (f"{SD.replace('--devices 2', '--devices 3')} --alpha 0.9", 2, ["TP=3", "28"]),
    (
        "sd --target qwen2-57b-a14b --draft qwen2-0.5b --system pcie-l40 --devices 1 --alpha 0.9",
        3,
        ["exceed the usable device memory"],
    ),
    # explore
    ("explore {missing}", 2, ["study file", "not found"]),
    ("explore {bad_toml}", 2, ["not valid TOML"]),
    ("explore {study_partial}", 2, ["hardware: Field required"]),
    ("explore {saved_train}", 2, ["name: Field required"]),
    # whatif
    ("whatif {missing}", 2, ["saved command", "not found"]),
    ("whatif {bad_toml}", 2, ["not valid TOML"]),
    ("whatif {empty_toml}", 2, ["command", "train, ep"]),
    ("whatif {saved_bad_command}", 2, ["'dance'", "train, ep"]),
    ("whatif {saved_train}", 2, ["--vary"]),
    ("whatif {saved_train} --vary nonsense", 2, ["--vary 'nonsense'", "FIELD=V1"]),
    ("whatif {saved_train} --vary device.hbm_bandwidth=abc", 2, ["'abc'", "multiplier"]),
    ("whatif {saved_train} --vary device.hbm_bandwidth=0x", 2, ["must be > 0"]),
    ("whatif {saved_train} --vary device.nope=2x", 2, ["'nope' is not a field of Device"]),
    ("whatif {saved_train} --vary bogus.x=2x", 2, ["device., system. or model."]),
    ("whatif {saved_train} --vary device.hbm_bandwidth=2x --metric nope", 2, ["metric 'nope'"]),
    ("whatif {saved_train} --vary device.hbm_bandwidth=2x --jobs 0", 2, ["--jobs must be >= 1"]),
    # predict
    ("predict kernel nope --shape batch=1", 2, ["fastattention"]),
    (f"{FA} --device nope", 2, ["unknown device 'nope'"]),
    ("predict kernel fastattention --shape abc", 2, ["--shape", "key=value"]),
    ("predict kernel fastattention --shape batch=1,heads=8", 2, ["'seq' is required"]),
    (f"{FA},bogus=3", 2, ["unknown shape key 'bogus'", "valid keys"]),
    (
        "predict kernel fastattention --shape heads=8,seq=-1024,head_dim=64",
        2,
        ["'seq' must be an integer >= 1"],
    ),
    (f"{FA},kv_heads=3", 2, ["multiple of kv_heads"]),
    (f"{FA},causal=maybe", 2, ["'causal' must be 0 or 1"]),
    (f"{FA} --calibration {{missing}}", 2, ["not found"]),
    (
        "predict kernel moe --shape tokens=16,hidden=64,expert_ffn=128,experts=8,top_k=9",
        2,
        ["top_k=9 exceeds num_experts=8"],
    ),
    ("predict kernel cdc --shape upscale=5,height=48,width=48", 2, ["upscale must be one of"]),
    ("predict kernel cdc --shape height=3,width=3", 2, ["multiples of 16"]),
    # validate / calibrate: input checks that come before any timing
    ("validate --calibration {missing}", 2, ["not found"]),
    ("validate --calibration {bad_toml}", 2, ["not valid TOML"]),
    ("validate --calibration {empty_toml}", 2, ["not a calibration overlay"]),
    ("calibrate --out {tmp}/x.toml --suites nope --quick", 2, ["--suites", "unknown nope"]),
    ("calibrate --out {tmp}/x.toml --threads 0 --quick", 2, ["--threads must be >= 1"]),
    ("calibrate --out {tmp}/x.toml --from-measurements {missing}", 2, ["not found"]),
    (
        "calibrate --out {tmp}/x.toml --from-measurements {hist_words}",
        2,
        ["hist.csv", "xpusim calibrate"],
    ),
    ("calibrate --device npu --out {tmp}/x.toml --quick", 2, ["--device npu"]),
    # bench
    ("bench --only nope", 2, ["--only", "engine"]),
    # output paths, checked before any work is done
    (
        "collective all-reduce --system dgx-h100 --sweep 1KiB:2KiB --plot {tmp}/x.xyz",
        2,
        ["--plot", "unknown figure format", ".png"],
    ),
    (f"{TRAIN} --tp 2 --trace {{tmp}}", 2, ["--trace", "is a directory"]),
    (f"{TRAIN} --tp 2 --timeline {{tmp}}/t.xyz", 2, ["--timeline", "unknown figure format"]),
    (f"{SD} --alpha 0.9 --batch 1 --plot {{tmp}}/x.xyz", 2, ["--plot", "unknown figure format"]),
    (f"{SD} --alpha 0.9 --batch 1 --csv {{tmp}}", 2, ["--csv", "is a directory"]),
    (
        "explore {small_study} --shortlist 1 --no-plots --no-cache --out {bad_toml}",
        2,
        ["--out", "is a file"],
    ),
    # found by this QA pass and fixed since (regressions would show here)
    ("hw show {tmp}", 2, ["is a directory", "xpusim hw list"]),
    ("hw show {cal_no_device}", 2, ["lacks field 'device'"]),
    ("hw diff h100-sxm5-80gb dgx-h100", 2, ["cannot diff a device with a system"]),
    (
        "op conv2d --in-ch 3 --out-ch 8 --height 8 --width 8 --stride 0 --device h100-sxm5-80gb",
        2,
        ["stride must be >= 1"],
    ),
    (
        "op conv2d --in-ch 3 --out-ch 8 --height 8 --width 8 --kernel -3 --device h100-sxm5-80gb",
        2,
        ["kernel must be >= 1"],
    ),
    ("op attention --heads 0 --seq 128 --device h100-sxm5-80gb", 2, ["heads must be >= 1"]),
    (
        "op attention --heads 8 --kv-heads 3 --seq 128 --device h100-sxm5-80gb",
        2,
        ["multiple of kv_heads (3)"],
    ),
    (f"{EP} --ep 8 --top-k 0", 2, ["--top-k must be >= 1"]),
    (f"{EP} --ep 8 --experts 0", 2, ["--experts must be >= 1"]),
    ("train --plan {plan_bad_type} --model llama-3-8b", 2, ["tp = 'eight'", "integer"]),
    (
        "train --model llama-3-8b --system atlas-800t-a2 --tp 1 --pp 64 --gbs 64",
        2,
        ["exceed the 32 layers"],
    ),
    (
        f"{INFER} --phase decode --batch 1 --context 10000000",
        3,
        ["out of memory", "KV cache", "--context"],
    ),
    (f"{SERVE} --prompt-len -10", 2, ["--prompt-len", "'-10'"]),
    (f"{SERVE} --draft eagle --gamma 4 --alpha 1.5", 2, ["--alpha must be in [0, 1]"]),
    (f"{SERVE} --draft eagle --gamma 0 --alpha 0.8", 2, ["--gamma must be >= 1"]),
    (f"{SD} --alpha 0.9 --batch 1 --context -1", 2, ["--context must be >= 0"]),
    (f"{FA} --dtype fp99", 2, ["unknown dtype 'fp99'"]),
]


@pytest.mark.parametrize(("command", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clean_error(capsys, files, command, code, words):
    rc, err = run_cli(capsys, command, files)
    assert rc == code, err
    assert "Traceback" not in err
    assert err.strip(), "an error must say what was wrong"
    for word in words:
        assert word in err, f"{word!r} not in: {err}"


FORMER_GAPS = [
    (f"{TRAIN.replace('--nodes 1', '--nodes 0')} --tp 2", ["--nodes"], "--nodes 0 taken as unset"),
    (f"{INFER.replace('--devices 1', '--devices 0')}", ["--devices"], "--devices 0 taken as unset"),
    (
        "op attention --heads 8 --seq 4096 --kv-len 16 --causal --device h100-sxm5-80gb",
        ["--kv-len"],
        "causal with kv_len < q_len must name --kv-len",
    ),
    ("op gemm --m 8 --n 8 --k 8 --dtype fp64 --device ascend-910b2", ["fp64"], "no fp64 unit"),
]


@pytest.mark.parametrize(("command", "words", "why"), FORMER_GAPS, ids=[g[2] for g in FORMER_GAPS])
def test_former_gaps_are_rejected(capsys, files, command, words, why):
    rc, err = run_cli(capsys, command, files)
    assert rc == 2, why
    assert "Traceback" not in err
    for word in words:
        assert word in err, why


# Found by the 2026-12-06 bad-input probe (tracebacks, a hang, and nonsense accepted
# silently); each must now be exit 2 with a message naming the flag, file or field.
PROBE_GAPS = [
    # tracebacks: MemoryError, TypeError, ValueError
    (f"{ATTN} --batch 1048576 --seq 16777216", ["work items", "limit of 16,777,216", "batch"]),
    ("train --model llama-3-8b --plan {plan_not_table}", ["plan file", "[plan] table"]),
    ("train --model llama-3-8b --plan {plan_nodes_word}", ["plan file", "nodes = 'abc'"]),
    ("train --model llama-3-8b --plan {plan_system_int}", ["plan file", "system = 5"]),
    ("train --model llama-3-8b --plan {plan_top_unknown}", ["unknown keys ['bogus']"]),
    (f"{TRAIN} --moe-routing zipf:nan", ["moe_routing 'zipf:nan'", "zipf:S"]),
    # ran for minutes: a config with a billion layers
    ("model show {deep_llama}", ["num_hidden_layers", "65,536"]),
    # nonsense accepted: NaN routing, fractional bytes, blanks in comma lists
    (f"{EP} --ep 8 --routing zipf:nan", ["--routing zipf:nan", "[0, 100]"]),
    (f"{EP} --ep 8 --routing zipf:1e30", ["--routing zipf:1e30", "[0, 100]"]),
    ("collective all-reduce --system dgx-h100 --bytes 0.5", ["--bytes '0.5'", "whole bytes"]),
    ("collective all-reduce --system dgx-h100 --bytes 1.5", ["--bytes '1.5'", "whole bytes"]),
    (f"{EP} --ep 8 --dispatch flat,,hierarchical", ["--dispatch", "empty item"]),
    (f"{EP} --ep 8 --sweep ep=8,,16", ["--sweep", "empty item"]),
    ("attention --device ascend-910b2 --seq 1,,2", ["--seq '1,,2'", "empty item"]),
    (f"{ATTN} --tp 2 --blocks 1,,2", ["--blocks", "empty item"]),
    (f"{SD} --alpha 0.9 --batch 1,,2", ["--batch '1,,2'", "empty item"]),
    (f"{SD} --alpha 0.9 --topk 1,2,", ["--topk", "empty item"]),
    (f"{TRAIN} --recompute selective --recompute-modules norm,,attn", ["--recompute-modules"]),
    ("whatif {saved_train} --vary device.hbm_bandwidth=0.5x,,2x", ["--vary", "empty item"]),
    (f"compare --systems dgx-h100,,dgx-a100 {TRAIN.replace('--system atlas-800t-a2', '')}",
     ["--systems", "empty item"]),
    ("predict kernel fastattention --shape heads=8,,seq=8,head_dim=8", ["--shape", "empty item"]),
    ("validate --published --category gemm,", ["--category", "empty item"]),
    # profiles: nan, inf and true were read as figures
    (f"{INFER} --engine {{engine_nan}}", ["host.step_overhead_per_seq_us", "finite", "nan"]),
    (f"{INFER} --engine {{engine_inf}}", ["host.step_overhead_per_seq_us", "finite", "inf"]),
    (f"{INFER} --engine {{engine_bool}}", ["host.step_overhead_per_seq_us", "True"]),
    ("hw show {device_bool}", ["hbm.bandwidth_gbps", "not true/false"]),
    (f"{GEMM.replace('h100-sxm5-80gb', '{device_bool}')}", ["hbm.bandwidth_gbps"]),
    # values that were taken as "not given", or fractions of a count
    (f"{TRAIN} --devices 8 --per-node 0", ["--per-node must be >= 1"]),
    ("op elementwise --numel 0.5 --device h100-sxm5-80gb", ["--numel 0.5", "whole number"]),
    (f"{TRAIN} --system ''", ["--system ''", "empty value"]),
    (f"{INFER} --engine ''", ["--engine ''", "empty value"]),
    (f"{TRAIN} --trace ''", ["--trace ''", "empty value"]),
    ("hw show ''", ["empty value"]),
    ("explore {small_study} --out ''", ["--out ''", "empty value"]),
    # flags the other kind of run ignored silently
    (f"{SERVE} --slo-ttft 1", ["--slo-ttft", "disaggregated"]),
    (f"{SERVE} --slo-tpot -1", ["--slo-tpot must be > 0"]),
    (f"{INFER} --draft eagle", ["--draft", "--serve"]),
    (f"{INFER} --rate 5 --requests 10", ["--rate, --requests", "--serve"]),
    (f"{SERVE} --batch 4", ["--batch", "single step"]),
    (f"{SERVE} --phase prefill", ["--phase", "single step"]),
    (f"{ATTN} --blocks 2", ["--system/--blocks", "--tp"]),
    (f"{ATTN} --system dgx-h100", ["--system/--blocks", "--tp"]),
    (f"{SD} --alpha 0.9 --batch 1 --draft-dense nope", ["--draft-dense", "--compare-dense"]),
    (f"{TRAIN} --recompute none --recompute-modules attn", ["--recompute-modules", "selective"]),
    # validate: an overlay with a bad figure was found only after minutes of timing; the
    # options of the other mode were ignored
    ("validate --calibration {cal_negative}", ["efficiency.matrix_max", "greater than 0"]),
    ("validate --published --calibration {cal_negative}", ["--calibration", "--published"]),
    ("validate --calibration {cal_negative} --category gemm", ["--category", "--published"]),
    # compare exited 0 when every system refused the arguments
    ("compare --systems dgx-h100,dgx-a100 train --model nope", ["every system refused", "nope"]),
    # a repeated shape key (the last won), a table of -1 rows
    (f"{FA},heads=4", ["'heads' is given twice"]),
    (f"{FA} --top -1", ["--top must be >= 1"]),
    # a Ray address that cannot work (ray.init retried 'nope' for minutes), or that was
    # ignored without --executor ray
    ("explore {small_study} --executor ray --address nope:1", ["--address nope:1", "resolve"]),
    ("explore {small_study} --executor ray --address 10.0.0.1", ["HOST:PORT"]),
    ("whatif {saved_train} --vary device.hbm_bandwidth=2x --address 127.0.0.1:6379",
     ["--address", "--executor ray"]),
    # a config no implementation can build: HF's router views experts as n_group groups
    ("model show {moe_ngroup}", ["'n_group' (3) must divide the 4 routed experts"]),
]


@pytest.mark.parametrize(("command", "words"), PROBE_GAPS, ids=[g[0] for g in PROBE_GAPS])
def test_probe_gaps_are_rejected(capsys, files, command, words):
    rc, err = run_cli(capsys, command, files)
    assert rc == 2, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in: {err}"


def run_process(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xpusim.sim.cli.main", *shlex.split(command)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("command", "code", "word"),
    [
        ("hw show no-such-device", 2, "no-such-device"),
        (f"hw show {DATA / 'broken_system.toml'}", 2, "intra_node.link_bandwidth_gbps"),
        ("op gemm --m -1 --n 8 --k 8", 2, "--m must be >= 1"),
        ("collective all-reduce --system dgx-h100 --bytes 1XB", 2, "--bytes"),
        ("train --model llama-3-8b --system atlas-800t-a2 --nodes 1 --tp 3", 2, "tp=3"),
    ],
)
def test_exit_status_of_the_real_process(command, code, word):
    proc = run_process(command)
    assert proc.returncode == code
    assert "Traceback" not in proc.stderr
    assert word in proc.stderr


NO_TORCH = """
import sys
sys.modules["torch"] = None  # as if torch were not installed
from xpusim.sim.cli.main import main
commands = [
    ["hw", "list"],
    ["model", "show", "llama-2-7b"],
    ["op", "gemm", "--m", "64", "--n", "64", "--k", "64"],
    ["collective", "all-reduce", "--system", "dgx-h100", "--bytes", "1MiB"],
    ["ep", "--model", "pangu-ultra-moe", "--system", "atlas-800t-a2", "--ep", "8",
     "--tokens-per-device", "128"],
    ["attention", "--device", "ascend-910b2", "--seq", "1024"],
    ["train", "--model", "llama-3-8b", "--system", "atlas-800t-a2", "--nodes", "1", "--tp", "2",
     "--gbs", "8", "--seq", "512", "--quiet"],
    ["infer", "--model", "llama-2-7b", "--system", "dgx-a100", "--devices", "1"],
    ["sd", "--target", "qwen2-57b-a14b", "--draft", "qwen2-0.5b", "--system", "hgx-a800",
     "--devices", "2", "--batch", "1,8"],
    ["predict", "kernel", "fastattention", "--shape", "heads=8,seq=1024,head_dim=64"],
    ["predict", "kernel", "moe", "--shape", "tokens=64,hidden=256,expert_ffn=512,experts=8,top_k=2"],
    ["predict", "kernel", "cdc", "--shape", "height=48,width=48"],
]
for argv in commands:
    rc = main(argv)
    assert rc == 0, argv
assert sys.modules["torch"] is None
print("ok", len(commands))
"""


def test_simulator_commands_run_without_torch():
    # sim/ never imports torch; predict uses the kernels' describe() without torch.
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok 12")
