"""The robustness and contract gaps the QA report listed, one test (or more) per fix.

Each bad input must end in exit 2 (3 for a negative verdict) with a message naming the
flag or field, never a traceback; the builders behind the CLI raise ``InputError``.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest
from cli_run import SAVED_TRAIN, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_device
from xpusim.hwprofiles.errors import ProfileError
from xpusim.sim import ops
from xpusim.sim.api.train import build_plan
from xpusim.sim.cli import train as train_cli
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError, NegativeVerdict
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.kvcache import plan_memory, require_kv_fit, step_kv_bytes
from xpusim.sim.inference.workload import LengthDist
from xpusim.sim.models import load_model
from xpusim.sim.report import check_output_file, check_plot_path, write_csv
from xpusim.sim.studies.whatif import Point, base_inputs, load_saved, train_request

EXAMPLES = Path(__file__).parent.parent / "examples"


# --------------------------------------------------------------------------- profiles


def test_directory_as_a_profile_is_named(tmp_path, capsys):
    with pytest.raises(ProfileError, match="is a directory"):
        load_device(str(tmp_path))
    rc, _, err = run_cli(capsys, f"hw show {tmp_path}")
    assert rc == 2 and "is a directory" in err


def test_directory_as_a_calibration_is_named(tmp_path):
    with pytest.raises(ProfileError, match="is a directory"):
        load_device("h100-sxm5-80gb", calibration=tmp_path)


def test_overlay_without_device_names_the_field(tmp_path, capsys):
    cal = tmp_path / "cal.toml"
    cal.write_text('kind = "calibration"\n')
    with pytest.raises(ProfileError, match="lacks field 'device'"):
        load_device(str(cal))
    rc, _, err = run_cli(capsys, f"hw show {cal}")
    assert rc == 2 and "lacks field 'device'" in err


@pytest.mark.parametrize(
    ("a", "b", "words"),
    [
        ("h100-sxm5-80gb", "dgx-h100", "cannot diff a device with a system"),
        ("dgx-h100", "h100-sxm5-80gb", "cannot diff a system with a device"),
    ],
)
def test_hw_diff_device_with_system(capsys, a, b, words):
    rc, _, err = run_cli(capsys, f"hw diff {a} {b}")
    assert rc == 2 and words in err


def test_hw_diff_two_devices_still_works(capsys):
    rc, out, _ = run_cli(capsys, "hw diff a100-sxm4-80gb a800-sxm4-80gb --json")
    assert rc == 0
    fields = {d["field"] for d in json.loads(out)["differences"]}
    assert "hbm_capacity" not in fields  # both 80 GB: only real differences are listed


# --------------------------------------------------------------------------- op builders


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"stride": 0}, "stride must be >= 1"),
        ({"kernel": -3}, "kernel must be >= 1"),
        ({"kernel": 0}, "kernel must be >= 1"),
        ({"padding": -1}, "padding must be >= 0"),
        ({"groups": 0}, "groups must be >= 1"),
        ({"kernel": 5, "padding": 0}, "leaves no output"),  # 3x3 input, 5x5 kernel
    ],
)
def test_conv2d_rejects_impossible_geometry(kwargs, words):
    args = {"kernel": 3, "stride": 1, "padding": None, **kwargs}
    with pytest.raises(InputError, match=words):
        ops.conv2d(
            "conv",
            1,
            3,
            8,
            3,
            3,
            args["kernel"],
            args["stride"],
            args["padding"],
            groups=args.get("groups", 1),
        )


def test_conv2d_output_size_by_hand():
    # 8x8, kernel 3, stride 2, padding 1: (8 + 2 - 3) // 2 + 1 = 4.
    op = ops.conv2d("conv", 2, 3, 16, 8, 8, 3, stride=2)
    assert (op.shape.h_out, op.shape.w_out) == (4, 4)
    assert op.flops == 2.0 * (2 * 4 * 4) * 16 * (3 * 3 * 3)


@pytest.mark.parametrize(
    "command",
    [
        "op conv2d --in-ch 3 --out-ch 8 --height 8 --width 8 --stride 0",
        "op conv2d --in-ch 3 --out-ch 8 --height 8 --width 8 --kernel -3",
    ],
)
def test_op_conv2d_cli_exit_2(capsys, command):
    rc, _, err = run_cli(capsys, f"{command} --device h100-sxm5-80gb")
    # Caught at the boundary (sim.limits) with the flag's name, before ops.conv2d.
    assert rc == 2 and ("--stride must be >= 1" in err or "--kernel must be >= 1" in err)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "words"),
    [
        (0, None, "heads must be >= 1"),
        (8, 3, "multiple of kv_heads"),
        (8, 0, "kv_heads must be >= 1"),
        (4, 8, "multiple of kv_heads"),
    ],
)
def test_fused_attention_rejects_bad_heads(heads, kv_heads, words):
    with pytest.raises(InputError, match=words):
        ops.fused_attention("attn", 1, heads, 128, 128, 64, kv_heads=kv_heads)


def test_fused_attention_accepts_gqa_and_per_rank_averages():
    gqa = ops.fused_attention("attn", 1, 8, 128, 128, 64, kv_heads=2)
    assert gqa.shape.kv_heads == 2
    # A sharded model's per-rank average (heads / tp) may be fractional: not a GQA error.
    ops.fused_attention("attn", 1, 2.5, 1, 128, 64, kv_heads=1)


@pytest.mark.parametrize(
    "flags", ["--heads 0", "--heads 8 --kv-heads 3", "--heads 8 --kv-heads 0", "--head-dim 0"]
)
def test_op_attention_cli_exit_2(capsys, flags):
    rc, _, err = run_cli(capsys, f"op attention --seq 128 {flags} --device h100-sxm5-80gb")
    # A zero size is caught at the boundary naming the flag; the GQA check in ops.
    assert rc == 2 and ("must be >= 1, got 0" in err or "attention:" in err)


# --------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("name", ["a.png", "b.svg", "c.pdf", "D.PNG"])
def test_check_plot_path_accepts_figure_formats(tmp_path, name):
    assert check_plot_path(tmp_path / name) == tmp_path / name


@pytest.mark.parametrize(
    ("name", "words"), [("x.xyz", "unknown figure format"), ("x", "no suffix")]
)
def test_check_plot_path_rejects_unknown_suffix(tmp_path, name, words):
    with pytest.raises(InputError, match=words):
        check_plot_path(tmp_path / name, "--plot")


def test_check_plot_and_output_paths_reject_directories(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        check_plot_path(tmp_path)
    with pytest.raises(InputError, match="--csv .* is a directory"):
        check_output_file(tmp_path, "--csv")
    with pytest.raises(InputError, match="is a directory"):
        write_csv(tmp_path, [{"a": 1}])


SD_SMALL = "sd --target qwen2-57b-a14b --draft qwen2-0.5b --system hgx-a800 --devices 2 --alpha 0.9"


@pytest.mark.parametrize(
    "command",
    [
        "collective all-reduce --system dgx-h100 --sweep 1KiB:2KiB --plot {tmp}/x.xyz",
        f"{SD_SMALL} --batch 1 --plot {{tmp}}/x.xyz",
        "ep --model pangu-ultra-moe --system atlas-800t-a2 --tokens-per-device 128 --ep 8 "
        "--sweep ep=8 --plot {tmp}/x.xyz",
        "collective all-reduce --system dgx-h100 --sweep 1KiB:2KiB --csv {tmp}",
        f"{SD_SMALL} --batch 1 --csv {{tmp}}",
    ],
)
def test_plotting_commands_check_the_path_first(capsys, tmp_path, command):
    rc, _, err = run_cli(capsys, command.format(tmp=tmp_path))
    assert rc == 2
    assert "--plot" in err or "--csv" in err
    assert list(tmp_path.iterdir()) == []  # checked before anything is written


def test_whatif_checks_the_plot_path(capsys, tmp_path):
    saved = tmp_path / "saved.toml"
    saved.write_text(SAVED_TRAIN)
    rc, _, err = run_cli(capsys, f"whatif {saved} --vary device.hbm_bandwidth=2x --plot x.xyz")
    assert rc == 2 and "unknown figure format" in err


def test_explore_out_is_a_file(capsys, tmp_path):
    out = tmp_path / "taken.toml"
    out.write_text("")
    rc, _, err = run_cli(
        capsys,
        f"explore {EXAMPLES / 'small_study.toml'} --shortlist 1 --no-plots --no-cache --out {out}",
    )
    assert rc == 2 and "--out" in err and "is a file" in err


# --------------------------------------------------------------------------- ep

EP = "ep --model pangu-ultra-moe --system atlas-800t-a2 --tokens-per-device 128 --ep 8"


@pytest.mark.parametrize(
    ("flag", "words"),
    [
        ("--top-k 0", "--top-k must be >= 1"),
        ("--experts 0", "--experts must be >= 1"),
        ("--hidden 0", "--hidden must be >= 1"),
        ("--top-k -2", "--top-k must be >= 1"),
        ("--shared-experts -1", "--shared-experts must be >= 0"),
    ],
)
def test_ep_zero_is_not_the_model_value(capsys, flag, words):
    rc, _, err = run_cli(capsys, f"{EP} {flag}")
    assert rc == 2 and words in err


def test_ep_explicit_top_k_replaces_the_model(capsys):
    rc, out, _ = run_cli(capsys, f"{EP} --top-k 2 --json")
    assert rc == 0
    payload = json.loads(out)
    assert payload["top_k"] == 2 and payload["experts"] == 256  # experts from the model


# --------------------------------------------------------------------------- infer

INFER = "infer --model llama-2-7b --system dgx-a100 --devices 1"
SERVE = f"{INFER} --serve --rate 1 --requests 5"


def test_infer_kv_that_does_not_fit_is_an_oom_verdict(capsys):
    rc, out, err = run_cli(capsys, f"{INFER} --phase decode --batch 1 --context 10000000 --json")
    assert rc == 3
    assert "out of memory" in err and "--context" in err and "weights" in err
    payload = json.loads(out)
    assert payload["oom"] is True
    mem = payload["memory"]
    # Llama-2-7B: 32 layers x 2 (K, V) x 32 heads x 128 x 2 bytes = 512 KiB per token.
    assert mem["kv_bytes_per_token"] == 32 * 2 * 32 * 128 * 2
    assert mem["kv_needed_bytes"] == pytest.approx(10_000_001 * mem["kv_bytes_per_token"])
    assert mem["kv_needed_bytes"] > mem["kv_cache_bytes"]
    assert mem["fits"] is False


def test_infer_kv_boundary(capsys):
    """The largest context that fits runs (exit 0); one more token's worth per request fails."""
    engine = load_engine("vllm-0.6")
    memory = plan_memory(
        load_model("llama-2-7b"),
        load_device("a100-sxm4-80gb").hbm_capacity,  # dgx-a100's device
        1,
        1,
        "bf16",
        engine.memory_utilization,
        engine.max_batched_tokens,
        max_num_seqs=engine.max_num_seqs,
    )
    fits = int(memory.kv_cache // memory.kv_bytes_per_token) - 1  # context + the new token
    rc, out, _ = run_cli(capsys, f"{INFER} --phase decode --batch 1 --context {fits} --json")
    assert rc == 0 and json.loads(out)["memory"]["fits"] is True
    rc, _, err = run_cli(capsys, f"{INFER} --phase decode --batch 1 --context {fits + 1}")
    assert rc == 3 and "out of memory" in err


@settings(max_examples=40, deadline=None)
@given(
    requests=st.integers(1, 512),
    context=st.integers(0, 200_000),
    ep=st.sampled_from([1, 2, 4]),
)
def test_require_kv_fit_agrees_with_the_byte_count(requests, context, ep):
    memory = plan_memory(load_model("qwen2-57b-a14b"), 80e9, 2, ep)
    needed = step_kv_bytes(memory, requests, context, ep)
    assert needed == pytest.approx(requests * (context + 1) / ep * memory.kv_bytes_per_token)
    if needed <= memory.kv_cache:
        require_kv_fit(memory, needed, "step")
    else:
        with pytest.raises(NegativeVerdict, match="out of memory"):
            require_kv_fit(memory, needed, "step")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ("--prompt-len -10", "--prompt-len"),
        ("--prompt-len const:0", "--prompt-len"),
        ("--output-len 0", "--output-len"),
        ("--draft eagle --gamma 4 --alpha 1.5", "--alpha must be in [0, 1]"),
        ("--draft eagle --gamma 4 --alpha -0.1", "--alpha must be in [0, 1]"),
        ("--draft eagle --gamma 0 --alpha 0.8", "--gamma must be >= 1"),
        ("--draft eagle --gamma 2 --alpha 0.8 --draft-devices 0", "--draft-devices"),
    ],
)
def test_serve_rejects_bad_options(capsys, flags, words):
    rc, _, err = run_cli(capsys, f"{SERVE} {flags}")
    assert rc == 2 and words in err


def test_length_dist_parse():
    assert LengthDist.parse("5", "--prompt-len") == LengthDist("const", 5.0)
    assert LengthDist.parse("const:7", "--prompt-len") == LengthDist("const", 7.0)
    for bad in ("0", "-10", "const:-1", "abc"):
        with pytest.raises(InputError, match="--prompt-len"):
            LengthDist.parse(bad, "--prompt-len")


# --------------------------------------------------------------------------- sd


@pytest.mark.parametrize(
    ("flags", "words"),
    [("--context -1", "--context must be >= 0"), ("--draft-devices 0", "--draft-devices")],
)
def test_sd_rejects_bad_options(capsys, flags, words):
    rc, _, err = run_cli(capsys, f"{SD_SMALL} --batch 1 {flags}")
    assert rc == 2 and words in err


# --------------------------------------------------------------------------- whatif plan



def _train_args(text: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *shlex.split(text)])


def _point(tmp_path: Path, extra: str = "") -> Point:
    saved = tmp_path / "saved.toml"
    saved.write_text(SAVED_TRAIN + extra)
    cmd = load_saved(saved)
    system, spec = base_inputs(cmd)
    return Point(cmd, system, spec)


def test_whatif_train_plan_is_the_train_plan(tmp_path):
    plan, _, _, _ = build_plan(train_request(_point(tmp_path)))
    want, recompute, _, _ = build_plan(
        train_cli.request_from(_train_args("--tp 2 --pp 2 --mbs 1 --gbs 16 --seq 2048"))
    )
    assert recompute == "auto"
    assert plan.sequence_parallel is True  # train: on whenever tp > 1
    for name in ("tp", "pp", "mbs", "gbs", "seq", "sequence_parallel", "zero", "dtype"):
        assert getattr(plan, name) == getattr(want, name), name


def test_whatif_train_plan_false_and_plan_only_fields(tmp_path):
    point = _point(tmp_path, "sequence_parallel = false\nfragmentation = 0.1\n")
    plan, _, _, _ = build_plan(train_request(point))
    assert plan.sequence_parallel is False  # --no-sequence-parallel reached train's parser
    assert plan.fragmentation == 0.1  # a plan field train has no flag for


def test_whatif_train_nodes_default_like_train(tmp_path):
    saved = tmp_path / "saved.toml"
    saved.write_text(SAVED_TRAIN.replace("nodes = 1\n", "").replace("tp = 2", "tp = 8"))
    system, _ = base_inputs(load_saved(saved))
    # tp 8 x pp 2 = 16 devices on 8-NPU Atlas 800T A2 servers: 2 nodes, as `xpusim train`.
    assert system.nodes == 2


# --------------------------------------------------------------------------- torch-free calibrate

NO_TORCH = (
    "import sys; sys.modules['torch'] = None  # as if torch were not installed\n"
    "from xpusim.sim.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def run_without_torch(args: list[str], cwd: Path) -> tuple[int, str]:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], cwd=cwd, capture_output=True, text=True
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stderr


def _routed_csv(tmp_path: Path, routing: bool = True) -> Path:
    """Measurements made by the uncalibrated model itself, MoE rows with a recorded routing
    (uniform: tokens x top_k / experts rows per expert), built without torch."""
    from dataclasses import replace

    from xpusim.calibrate.harness import summarise
    from xpusim.calibrate.pipeline import Measured, predict_case, write_measurements
    from xpusim.calibrate.suites import cases

    base = load_device("cpu-host")
    rows = []
    for case in cases(["gemm", "memcpy", "add", "softmax", "moe"], quick=True):
        if case.suite == "moe":
            p = case.params
            per_expert = int(p["tokens"] * p["top_k"] / p["experts"])
            case = replace(case, routing=(per_expert,) * int(p["experts"]))
        t = predict_case(case, base)
        rows.append(Measured(case if routing else replace(case, routing=None), summarise([t] * 5)))
    return write_measurements(tmp_path / "m.csv", rows)


def test_routing_round_trips_through_the_csv(tmp_path):
    from xpusim.calibrate.pipeline import read_measurements

    measured = read_measurements(_routed_csv(tmp_path))
    moe = [m for m in measured if m.case.suite == "moe"]
    grid = [m for m in moe if m.case.family == "in-range"]
    assert {m.case.params["tokens"] for m in grid} == {64, 256, 512}
    for m in moe:  # tokens x top_k / experts rows per expert, as written
        p = m.case.params
        per_expert = int(p["tokens"] * p["top_k"] / p["experts"])
        assert m.case.routing == (per_expert,) * int(p["experts"])
    assert all(m.case.routing is None for m in measured if m.case.suite != "moe")


def test_recorded_routing_is_the_graph_torch_would_build():
    pytest.importorskip("torch")
    from xpusim.calibrate.suites import cases

    case = next(c for c in cases(["moe"], quick=True))
    routed = case.with_routing()
    assert routed.routing is not None and routed == case  # routing is not the case's identity
    assert sum(routed.routing) <= case.params["tokens"] * case.params["top_k"]
    a, b = routed.graph().ops(), case.graph().ops()
    assert [(o.name, o.flops) for o in a] == [(o.name, o.flops) for o in b]


def test_calibrate_needs_torch_to_measure(tmp_path):
    rc, err = run_without_torch(["calibrate", "--quick", "--out", "o.toml"], tmp_path)
    assert rc == 2
    assert "needs torch: pip install -c constraints.txt -e '.[torch]'" in err
    assert "--from-measurements" in err  # the torch-free alternative is named


def test_validate_needs_torch_to_measure(tmp_path):
    csv = _routed_csv(tmp_path)
    assert (
        main(["calibrate", "--from-measurements", str(csv), "--out", str(tmp_path / "o.toml")]) == 0
    )
    rc, err = run_without_torch(["validate", "--calibration", "o.toml", "--out", "v"], tmp_path)
    assert rc == 2 and "needs torch" in err and "--measurements" in err


def test_refit_and_validate_from_a_csv_need_no_torch(tmp_path):
    _routed_csv(tmp_path)
    rc, err = run_without_torch(
        ["calibrate", "--from-measurements", "m.csv", "--out", "o.toml", "--json"], tmp_path
    )
    assert rc == 0, err
    assert (tmp_path / "o.toml").exists()
    rc, err = run_without_torch(
        ["validate", "--calibration", "o.toml", "--measurements", "m.csv", "--out", "v"],
        tmp_path,
    )
    assert rc == 0, err
    rows = (tmp_path / "v" / "validation.csv").read_text()
    assert "moe" in rows  # the MoE held-out cases were priced from their recorded routing


def test_csv_without_routing_names_what_torch_is_for(tmp_path):
    _routed_csv(tmp_path, routing=False)
    rc, err = run_without_torch(
        ["calibrate", "--from-measurements", "m.csv", "--out", "o.toml"], tmp_path
    )
    assert rc == 2 and "'routing' column" in err and "needs torch" in err


@pytest.mark.parametrize("drop", [["suite"], ["suite", "median_s"]])
def test_measurements_csv_names_the_missing_columns(tmp_path, capsys, drop):
    import csv

    src = _routed_csv(tmp_path)
    with src.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    bad = tmp_path / "bad.csv"
    with bad.open("w", newline="") as fh:
        keep = [k for k in rows[0] if k not in drop]
        writer = csv.DictWriter(fh, keep, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    rc, _, err = run_cli(capsys, f"calibrate --from-measurements {bad} --out {tmp_path}/o.toml")
    assert rc == 2
    assert f"missing column(s) {', '.join(drop)}" in err and "--from-measurements" in err
    overlay = tmp_path / "o.toml"
    assert main(["calibrate", "--from-measurements", str(src), "--out", str(overlay)]) == 0
    capsys.readouterr()
    rc, _, err = run_cli(
        capsys, f"validate --calibration {overlay} --measurements {bad} --out {tmp_path}/v"
    )
    assert rc == 2 and "--measurements" in err and "missing column(s) suite" in err


def test_measurements_csv_unknown_suite_and_bad_cell(tmp_path, capsys):
    src = _routed_csv(tmp_path)
    lines = src.read_text().splitlines()
    (tmp_path / "suite.csv").write_text("\n".join([lines[0], "nope" + lines[1][4:]]) + "\n")
    rc, _, err = run_cli(
        capsys, f"calibrate --from-measurements {tmp_path}/suite.csv --out {tmp_path}/o.toml"
    )
    assert rc == 2 and "suite.csv:2: unknown suite 'nope'" in err
    rc, _, err = run_cli(capsys, f"calibrate --from-measurements {tmp_path} --out x.toml")
    assert rc == 2 and "is a directory" in err


# --------------------------------------------------------------------------- collective size


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ("all-reduce --ranks 1000000", ["--ranks 1000000", "131,072", "fewer --ranks"]),
        ("all-to-all --ranks 131073", ["--ranks 131073", "131,072"]),
        ("all-reduce --nodes 20000", ["--nodes 20000 x 8", "160,000 ranks", "fewer --nodes"]),
    ],
)
def test_collective_rejects_absurd_rank_counts(capsys, flags, words):
    rc, _, err = run_cli(capsys, f"collective {flags} --system dgx-h100")
    assert rc == 2
    for word in words:
        assert word in err


def test_cost_collective_caps_the_group():
    from xpusim.hwprofiles import load_system
    from xpusim.sim.network import cost_collective
    from xpusim.sim.network.api import MAX_RANKS

    system = load_system("dgx-h100", nodes=MAX_RANKS // 8 + 1)
    with pytest.raises(InputError, match="above the limit of 131,072"):
        cost_collective(system, "all-reduce", range(MAX_RANKS + 1), 1e6)


def test_flow_backend_rejects_a_huge_all_to_all_before_listing_it(capsys):
    # 100,000 ranks: 10^10 flows; the check counts them instead of listing them.
    rc, _, err = run_cli(
        capsys, "collective all-to-all --system dgx-h100 --ranks 100000 --backend flow"
    )
    assert rc == 2 and "too many for the flow backend" in err and "--backend analytical" in err


@settings(max_examples=40, deadline=None)
@given(
    ranks=st.integers(2, 48),
    system=st.sampled_from(["dgx-h100", "atlas-800t-a2", "atlas-800t-a3", "pcie-l40"]),
    kind=st.sampled_from(["all-to-all", "all-reduce", "all-gather"]),
    limit=st.integers(10, 20_000),
)
def test_flow_early_check_only_rejects_what_the_exact_check_would(ranks, system, kind, limit):
    """The count-based check is a lower bound: whenever it rejects, the incidence matrix
    listed from the real flows and links is larger than the limit too."""
    from unittest import mock

    from xpusim.hwprofiles import load_system
    from xpusim.sim.ir import CollectiveKind
    from xpusim.sim.network import flow
    from xpusim.sim.network.algorithms import build, candidates
    from xpusim.sim.network.topology import Topology

    sysm = load_system(system)
    sysm = load_system(system, nodes=-(-ranks // sysm.devices_per_node))
    topo = Topology(sysm)
    group = tuple(range(ranks))
    ck = CollectiveKind(kind)
    for algorithm in candidates(ck, topo, group):
        for phase in build(ck, algorithm, topo, group, 1e6):
            flows = phase.expand()
            links = {link for s, d, _ in flows for link in topo.path(s, d)}
            with mock.patch.object(flow, "MAX_CELLS", limit):
                if flow._too_large(topo, phase) is not None:
                    assert len(flows) * len(links) > limit


# --------------------------------------------------------------------------- argument checks


def test_explore_top_must_be_positive(capsys):
    rc, _, err = run_cli(capsys, f"explore {EXAMPLES / 'small_study.toml'} --top -1 --no-plots")
    assert rc == 2 and "--top must be >= 1" in err


TRAIN = "train --model llama-3-8b --system atlas-800t-a2 --nodes 1 --gbs 8 --seq 128 --tp 2"


@pytest.mark.parametrize("dtype", ["int4", "int8", "fp64"])
def test_train_rejects_inference_dtypes(capsys, dtype):
    rc, _, err = run_cli(capsys, f"{TRAIN} --dtype {dtype} --quiet")
    assert rc == 2 and f"--dtype '{dtype}'" in err and "bf16, fp16, fp32, fp8" in err


def test_train_plan_file_dtype_is_named(capsys, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text('[plan]\ndtype = "int8"\n')
    rc, _, err = run_cli(capsys, f"{TRAIN} --plan {plan} --quiet")
    assert rc == 2 and f"{plan}: dtype 'int8'" in err


@pytest.mark.parametrize("dtype", ["fp8", "fp16"])
def test_train_accepts_training_dtypes(dtype):
    plan, _, _, _ = build_plan(train_cli.request_from(_train_args(f"--dtype {dtype}")))
    assert plan.dtype == dtype


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ("--gamma 4", "--gamma needs --draft"),
        ("--alpha 0.7", "--alpha needs --draft"),
        ("--gamma 2 --draft-devices 2", "--gamma, --draft-devices needs --draft"),
    ],
)
def test_serve_speculative_options_need_a_draft(capsys, flags, words):
    rc, _, err = run_cli(capsys, f"{SERVE} {flags}")
    assert rc == 2 and words in err


def test_serve_draft_gets_the_default_gamma(capsys):
    rc, out, _ = run_cli(capsys, f"{SERVE} --draft eagle --json")
    assert rc == 0
    payload = json.loads(out)
    assert (payload["gamma"], payload["alpha"]) == (4, 0.8)


# --------------------------------------------------------------------------- sd memory


def _sd_memory():
    # SD_SMALL: qwen2-57b-a14b on 2 x A800 (hgx-a800), vLLM 0.6, bf16.
    from xpusim.hwprofiles import load_system
    from xpusim.sim.inference.lowering import plan_for, require_memory

    engine = load_engine("vllm-0.6")
    return require_memory(
        load_model("qwen2-57b-a14b"), load_system("hgx-a800"), plan_for(2, None, 1), engine, "bf16"
    )


def test_sd_batch_that_fits_nowhere_is_an_oom_verdict(capsys):
    rc, _, err = run_cli(capsys, f"{SD_SMALL} --batch 1000000")
    assert rc == 3
    assert "out of memory" in err and "SD verification of batch 1000000" in err
    assert "--batch" in err


def test_sd_rows_that_do_not_fit_are_listed_not_simulated(capsys):
    memory = _sd_memory()
    context, gamma = 512, 4
    # A verification round keeps batch x (context + gamma + 1) tokens per device (EP 1).
    largest = int(memory.kv_cache // ((context + gamma + 1) * memory.kv_bytes_per_token))
    batches = f"1,{largest},{largest + 1},1000000"
    rc, out, _ = run_cli(capsys, f"{SD_SMALL} --batch {batches} --gamma {gamma} --json")
    assert rc == 0
    group = json.loads(out)["groups"][0]
    assert [r["batch"] for r in group["rows"]] == [1, largest]
    oom = group["oom_rows"]
    assert [r["batch"] for r in oom] == [largest + 1, 1_000_000]
    assert all(r["fits"] is False and "speedup" not in r for r in oom)
    assert oom[0]["kv_needed_bytes"] == pytest.approx(
        (largest + 1) * (context + gamma + 1) * memory.kv_bytes_per_token
    )
    assert oom[0]["kv_needed_bytes"] > group["kv_cache_bytes"]
