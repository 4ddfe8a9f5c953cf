"""Gaps a structured fuzz of every command found (2026-12-07): each input below gave a
traceback, a message that did not name the field, or exit 0 on nonsense. Each case runs
the real command in-process and checks the exit code and the words of the message.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_run import run_cli

ROOT = Path(__file__).resolve().parent.parent
CAL = ROOT / "calibrate" / "data" / "cpu-host"

# Files the cases name as {key}; written into tmp_path.
FILES = {
    "overlay_no_device": ("no_device.toml", 'kind = "calibration"\n'),
    "overlay_provenance_int": (
        "prov_int.toml", 'kind = "calibration"\ndevice = "cpu-host"\nprovenance = 5\n'
    ),
    "overlay_version": (
        "version.toml", 'kind = "calibration"\ndevice = "cpu-host"\nschema_version = 2\n'
    ),
    "a_file": ("a_file.txt", "not a folder\n"),
    "plan_reserved_negative": ("reserved.toml", "[plan]\nruntime_reserved_gib = -1.0\n"),
    "plan_reserved_nan": ("reserved_nan.toml", "[plan]\nruntime_reserved_gib = nan\n"),
    "trace_short_row": (
        "trace_short.csv", "arrival_s,prompt_tokens,output_tokens\n0,10,10\n\n1,5\n"
    ),
    "plan_gbs_huge": ("gbs_huge.toml", "[plan]\ngbs = 1000000000\n"),
    "plan_pad_huge": ("pad_huge.toml", "[plan]\npad_layers = 1000000000\n"),
    "plan_chunks_huge": (
        "chunks_huge.toml", "[plan]\ntp = 8\noverlap_tp = true\ntp_overlap_chunks = 100000000\n"
    ),
    "null_config": ("null.json", "null"),
    "hist_words": ("hist_words.txt", "a b c\n"),
    "saved_devices_list": (
        "saved_list.toml",
        'command = "infer"\n[args]\nmodel = "llama-3-8b"\nsystem = "dgx-h100"\ndevices = [1]\n',
    ),
    "saved_batch_table": (
        "saved_table.toml",
        'command = "infer"\n[args]\nmodel = "llama-3-8b"\nsystem = "dgx-h100"\ndevices = 1\n'
        "[args.batch]\na = 1\n",
    ),
    "saved_vary_int": (
        "saved_vary.toml",
        'command = "infer"\n[args]\nmodel = "llama-3-8b"\nsystem = "dgx-h100"\ndevices = 1\n'
        "[whatif]\nvary = 5\n",
    ),
    "saved_metric_list": (
        "saved_metric.toml",
        'command = "infer"\n[args]\nmodel = "llama-3-8b"\nsystem = "dgx-h100"\ndevices = 1\n'
        '[whatif]\nmetric = ["time_s"]\nvary = ["device.hbm_bandwidth=2x"]\n',
    ),
    "saved_devices_true": (
        "saved_bool.toml",
        'command = "infer"\n[args]\nmodel = "llama-3-8b"\nsystem = "dgx-h100"\ndevices = true\n',
    ),
    "saved_model_true": (
        "saved_model_bool.toml",
        'command = "infer"\n[args]\nmodel = true\nsystem = "dgx-h100"\ndevices = 1\n',
    ),
}

VALIDATE = "validate --calibration {overlay} --measurements {measurements}"
GEMM_CPU = "op gemm --m 8 --n 8 --k 8 --device cpu-host"
SD_DENSE = "sd --target qwen3-8b --draft qwen2-0.5b --system hgx-a800 --devices 1 --batch 1"
TRAIN_DENSE = "train --model llama-3-8b --system atlas-800t-a2 --nodes 1 --gbs 8 --seq 128 --quiet"
REFIT = "calibrate --from-measurements {measurements} --out {tmp}/refit.toml"
TRAIN_PLAN = "train --model llama-3-8b --system atlas-800t-a2 --nodes 1 --seq 128 --quiet --plan"

CASES = [
    # validate --out: a file or an unwritable folder raised FileExistsError /
    # FileNotFoundError after the work
    (f"{VALIDATE} --out {{a_file}}", 2, ["--out", "is a file", "names a folder"]),
    (f"{VALIDATE} --out /proc/xpusim-validate", 2, ["--out /proc/xpusim-validate",
                                                    "cannot create the folder"]),
    # calibration overlays: provenance = 5 raised TypeError; a missing device read
    # "unknown device 'None'"; schema_version was never read
    ("validate --calibration {overlay_provenance_int} --measurements {measurements}", 2,
     ["field 'provenance'", "[provenance] table"]),
    ("validate --calibration {overlay_no_device} --measurements {measurements}", 2,
     ["field 'device'", "base device"]),
    (f"{GEMM_CPU} --calibration {{overlay_no_device}}", 2, ["field 'device'", "base device"]),
    (f"{GEMM_CPU} --calibration {{overlay_provenance_int}}", 2, ["field 'provenance'"]),
    (f"{GEMM_CPU} --calibration {{overlay_version}}", 2, ["field 'schema_version'", "got 2"]),
    # validate: an unknown suite name was dropped silently (--check-suites checked nothing)
    (f"{VALIDATE} --suites gemm,gemmm", 2, ["--suites: unknown gemmm", "choose from", "bmm"]),
    (f"{VALIDATE} --check-suites fastatention", 2, ["--check-suites: unknown fastatention"]),
    # validate --published dropped the local mode's --check, thresholds, --out, --device
    # (and the local mode --jobs): they are refused like --calibration already was
    ("validate --published --check", 2, ["--check: options of a local calibration"]),
    ("validate --published --max-median-error 0.2 --out {tmp}/v", 2,
     ["--max-median-error, --out", "drop them, or drop --published"]),
    (f"{VALIDATE} --jobs 2", 2, ["--jobs: options of --published"]),
    # profiles: a true/false field took 0, 1 or "yes" (pydantic's lax bool); a TDP of
    # -700 W or 0 W was accepted (compare divides tokens/s by it)
    ("hw show {system_nvls_int}", 2, ["collective_library.nvls", "true or false", "got 0"]),
    ("collective all-reduce --system {system_nvls_word}", 2, ["collective_library.nvls",
                                                              "true or false"]),
    ("op gemm --m 8 --n 8 --k 8 --device {device_async_int}", 2, ["kernels.async_mma",
                                                                  "true or false"]),
    ("hw show {device_tdp_negative}", 2, ["field 'tdp_w'", "greater than 0", "-700"]),
    ("hw show {device_tdp_zero}", 2, ["field 'tdp_w'", "greater than 0"]),
    # engine profiles: schema_version was never read ("x", 2, [1] all passed)
    ("hw show {engine_version_word}", 2, ["field 'schema_version' must be 1", "got 'x'"]),
    ("infer --model llama-3-8b --system hgx-a800 --devices 1 --engine {engine_version_2}", 2,
     ["field 'schema_version' must be 1", "got 2"]),
    # plan files: a negative runtime reservation gave memory back
    (f"{TRAIN_PLAN} {{plan_reserved_negative}}", 2, ["plan.runtime_reserved_gib", ">= 0",
                                                    "-1.0"]),
    (f"{TRAIN_PLAN} {{plan_reserved_nan}}", 2, ["plan file", "runtime_reserved_gib = nan",
                                               "finite"]),
    # plan files skipped the flags' limits: these ran for minutes (--gbs 1e9 is refused)
    (f"{TRAIN_PLAN} {{plan_gbs_huge}}", 2, ["plan file", "gbs = 1000000000", "16,777,216"]),
    (f"{TRAIN_PLAN} {{plan_pad_huge}}", 2, ["plan file", "pad_layers = 1000000000", "65,536"]),
    (f"{TRAIN_PLAN} {{plan_chunks_huge}}", 2, ["tp_overlap_chunks = 100000000", "1,024"]),
    # saved commands: a list or table for a number, or a [whatif] of the wrong shape,
    # raised TypeErrors (vary = 5: a traceback)
    ("whatif {saved_devices_list}", 2, ["args.devices = [1]", "expected an integer, not a list"]),
    ("whatif {saved_batch_table} --vary device.hbm_bandwidth=2x", 2,
     ["args.batch", "not a table"]),
    ("whatif {saved_vary_int}", 2, ["whatif.vary = 5", "list of texts"]),
    ("whatif {saved_metric_list}", 2, ["whatif.metric = ['time_s']", "result field's name"]),
    # messages in Python's words: "got NoneType", "could not convert string to float"
    ("model show {null_config}", 2, ["expected a JSON object of config keys", "got null"]),
    ("ep --model pangu-ultra-moe --tokens-per-device 128 --routing hist:{hist_words}", 2,
     ["the histogram", "must hold numbers", "'a' is not one"]),
    # saved commands: `devices = true` ran on 1 device (a bool is an int)
    ("whatif {saved_devices_true} --vary device.hbm_bandwidth=2x", 2,
     ["args.devices = true", "expected an integer", "on/off flags"]),
    ("whatif {saved_model_true} --vary device.hbm_bandwidth=2x", 2,
     ["args.model = true", "expected a text"]),
    # whatif: a non-numeric field printed its whole value (600 characters of MemoryLevel)
    ("whatif {saved_whatif} --vary device.memory=2x", 2,
     ["--vary device.memory: the field is not numeric", "...", "vary a number field"]),
    # attention --tp priced tiling-AllReduce on --system's own device, not --device
    ("attention --seq 4096 --device h100-sxm5-80gb --tp 2", 2,
     ["--system atlas-800t-a2", "ascend-910b2, not --device h100-sxm5-80gb"]),
    ("attention --seq 4096 --tp 2 --system dgx-h100", 2,
     ["devices are h100-sxm5-80gb, not --device ascend-910b2"]),
    # hw diff: "a engine"
    ("hw diff h100-sxm5-80gb vllm-0.6", 2, ["a device with an engine", "two engines"]),
    # calibrate --from-measurements read the CSV whole: --suites, --dtype, --threads and
    # --measurements (timing options) were dropped silently
    (f"{REFIT} --suites gemm", 2, ["--suites: an option of a timing run", "drop it"]),
    (f"{REFIT} --measurements {{tmp}}/c.csv --threads 2", 2,
     ["--measurements, --threads: options of a timing run", "drop them"]),
    (f"{REFIT} --dtype bf16", 2, ["--dtype: an option of a timing run"]),
    # collective: --csv/--plot without --sweep wrote nothing (exit 0); --bytes with
    # --sweep was dropped
    ("collective all-reduce --csv {tmp}/c.csv", 2, ["--csv/--plot", "add --sweep"]),
    ("collective all-reduce --plot {tmp}/c.png", 2, ["--csv/--plot", "add --sweep"]),
    ("collective all-reduce --sweep --bytes 1MiB", 2, ["--bytes 1MiB", "--sweep 1KiB:4GiB",
                                                       "give one of them"]),
    # MoE-only flags on a dense model: infer refused them, sd and train ignored them
    (f"{SD_DENSE} --routing zipf:1", 2, ["--routing: qwen3-8b is dense", "drop it"]),
    (f"{SD_DENSE} --ep-dispatch deepep", 2, ["--ep-dispatch: qwen3-8b is dense"]),
    (f"{TRAIN_DENSE} --moe-routing zipf:1", 2, ["--moe-routing: llama-3-8b is dense"]),
    (f"{TRAIN_DENSE} --moe-dispatcher flex --moe-fold", 2,
     ["--moe-dispatcher, --moe-fold: llama-3-8b is dense", "drop them"]),
    # a draft head (eagle, mtp) runs on the target's devices: --draft-devices was ignored
    (f"{SD_DENSE.replace('qwen2-0.5b', 'mtp')} --draft-devices 2", 2,
     ["--draft-devices 2", "mtp head runs inside the target"]),
    ("infer --model llama-3-8b --system hgx-a800 --devices 1 --serve --requests 3 --draft eagle "
     "--draft-devices 2", 2, ["--draft-devices 2", "eagle head"]),
    # a trace row with a missing column: "output_tokens None: expected an integer, got
    # NoneType"; the line number counted records, not lines
    ("infer --model llama-3-8b --system hgx-a800 --devices 1 --serve --trace {trace_short_row}", 2,
     ["line 4", "holds 2 of the 3 columns", "give all three"]),
]


# Shipped profiles with one field made nonsense: (source, pattern, replacement).
PROFILE_EDITS = {
    "system_nvls_int": ("systems/dgx-a100.toml", "nvls = false", "nvls = 0"),
    "system_nvls_word": ("systems/dgx-a100.toml", "nvls = false", 'nvls = "yes"'),
    "device_async_int": ("devices/h100-sxm5-80gb.toml", "async_mma = true", "async_mma = 1"),
    "device_tdp_negative": ("devices/h100-sxm5-80gb.toml", "tdp_w = 700", "tdp_w = -700"),
    "device_tdp_zero": ("devices/h100-sxm5-80gb.toml", "tdp_w = 700", "tdp_w = 0"),
    "engine_version_word": ("engines/vllm-0.6.toml", "schema_version = 1", 'schema_version = "x"'),
    "engine_version_2": ("engines/vllm-0.6.toml", "schema_version = 1", "schema_version = 2"),
}


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # default out/ folders land here
    out = {}
    for key, (name, text) in FILES.items():
        (tmp_path / name).write_text(text)
        out[key] = str(tmp_path / name)
    for key, (source, before, after) in PROFILE_EDITS.items():
        text = (ROOT / "hwprofiles" / source).read_text()
        assert before in text, (source, before)
        (tmp_path / f"{key}.toml").write_text(text.replace(before, after, 1))
        out[key] = str(tmp_path / f"{key}.toml")
    shutil.copy(CAL / "overlay.toml", tmp_path / "overlay.toml")
    out["overlay"] = str(tmp_path / "overlay.toml")
    out["measurements"] = str(CAL / "measurements.csv")
    out["tmp"] = str(tmp_path)
    out["saved_whatif"] = str(ROOT / "examples" / "llama_decode_whatif.toml")
    return out


@pytest.mark.parametrize(("command", "code", "words"), CASES, ids=[c[0][:70] for c in CASES])
def test_fuzz_gap_is_a_clean_error(capsys, paths, command, code, words):
    rc, _out, err = run_cli(capsys, command.format(**paths))
    assert rc == code, err
    assert len(err) < 1000, err  # a message, not a dump
    assert not list(Path(paths["tmp"]).glob("c.*"))  # nothing written on an error
    for word in words:
        assert word in err, f"{word!r} not in: {err}"
