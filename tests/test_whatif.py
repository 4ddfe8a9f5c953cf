"""What-if studies: field variation, elasticity, the whatif command."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from xpusim.hwprofiles import load_system
from xpusim.sim.api.sd import SdRequest, sd
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.studies.whatif import (
    Point,
    SavedCommand,
    elasticity,
    load_saved,
    parse_vary,
    vary_point,
)

SMALL_TRAIN = """
command = "train"
[args]
model = "qwen2-0.5b"
system = "atlas-800t-a2"
nodes = 1
tp = 2
pp = 2
mbs = 1
gbs = 8
seq = 1024
"""


@given(
    st.floats(-2, 2),
    st.floats(0.1, 10),
    st.lists(st.floats(0.1, 10), min_size=2, max_size=5, unique=True),
)
def test_elasticity_recovers_a_power_law(a, c, xs):
    if max(xs) / min(xs) < 1.01:
        return
    assert elasticity(xs, [c * x**a for x in xs]) == pytest.approx(a, abs=1e-6)


def test_elasticity_needs_two_points():
    assert math.isnan(elasticity([1.0], [3.0]))


def test_parse_vary_aliases_and_errors():
    v = parse_vary("system.inter_node_bandwidth=0.5x,2x")
    assert v.field == "system.nic.bandwidth" and v.values == ("0.5x", "2x")
    assert parse_vary("system.intra_node_bandwidth=1x").field == "system.intra_link.bandwidth"
    with pytest.raises(InputError, match="FIELD=V1"):
        parse_vary("device.hbm_bandwidth")
    with pytest.raises(InputError, match="start with device"):
        parse_vary("gpu.hbm=2x")
    with pytest.raises(InputError, match="not a number"):
        parse_vary("device.hbm_bandwidth=fast")


def test_vary_point_scales_fields():
    system = load_system("atlas-800t-a2", nodes=1)
    base = Point(SavedCommand("train", {}, "tokens_per_s", ()), system, None)
    p, m = vary_point(base, "device.hbm_bandwidth", "2x", "device.hbm_bandwidth")
    assert m == 2 and p.system.device.hbm_bandwidth == 2 * system.device.hbm_bandwidth
    p, m = vary_point(base, "system.nic.bandwidth", "50e9", "system.inter_node_bandwidth")
    assert p.system.nic.bandwidth == 50e9 and m == pytest.approx(50e9 / system.nic.bandwidth)
    p, m = vary_point(base, "device.matrix_peak", "0.5x", "device.matrix_peak")
    assert p.system.device.matrix_peak["bf16"] == system.device.matrix_peak["bf16"] / 2
    assert base.system is system  # frozen profile untouched
    with pytest.raises(InputError, match="not a field of Device"):
        vary_point(base, "device.hbm_speed", "2x", "device.hbm_speed")
    with pytest.raises(InputError, match="no model"):
        vary_point(base, "model.hidden", "2x", "model.hidden")


def test_saved_command_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('command = "dance"\n')
    with pytest.raises(InputError, match="whatif supports"):
        load_saved(bad)
    bad.write_text('command = "train"\n[whatif]\nmetrc = "mfu"\n')
    with pytest.raises(InputError, match="metrc"):
        load_saved(bad)


def test_whatif_train_cli(tmp_path, capsys):
    saved = tmp_path / "train.toml"
    saved.write_text(SMALL_TRAIN)
    plot = tmp_path / "tornado.png"
    code = main(
        [
            "whatif",
            str(saved),
            "--vary",
            "device.matrix_peak=0.5x,2x",
            "--vary",
            "system.roce_bandwidth=0.5x,2x",
            "--vary",
            "model.hidden=0.5x,1x",
            "--plot",
            str(plot),
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    sens = {s["field"]: s for s in out["sensitivity"]}
    # A single node: no RoCE traffic, so its bandwidth cannot matter.
    assert sens["system.roce_bandwidth"]["elasticity"] == pytest.approx(0, abs=1e-9)
    # More compute never hurts and cannot more than double throughput per doubling.
    assert 0 < sens["device.matrix_peak"]["elasticity"] <= 1
    assert sens["model.hidden"]["elasticity"] < 0  # a smaller model trains faster
    assert plot.exists() and len(out["points"]) == 1 + 2 + 2 + 1


def test_whatif_ep_cli(tmp_path, capsys):
    saved = tmp_path / "ep.toml"
    saved.write_text(
        'command = "ep"\n[args]\nmodel = "pangu-ultra-moe"\nep = 16\ntokens_per_device = 2048\n'
    )
    assert (
        main(
            [
                "whatif",
                str(saved),
                "--vary",
                "system.inter_node_bandwidth=0.5x,2x",
                "--plot",
                str(tmp_path / "t.png"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "system.inter_node_bandwidth" in text and "elasticity" in text


def test_whatif_bad_field_exits_2(tmp_path, capsys):
    saved = tmp_path / "train.toml"
    saved.write_text(SMALL_TRAIN)
    assert main(["whatif", str(saved), "--vary", "device.warp_speed=2x"]) == 2
    assert "warp_speed" in capsys.readouterr().err


def test_whatif_infer_decode_is_bandwidth_bound(tmp_path, capsys):
    saved = tmp_path / "decode.toml"
    saved.write_text(
        'command = "infer"\n[args]\nmodel = "llama-3-8b"\nsystem = "dgx-h100"\n'
        'devices = 1\nphase = "decode"\nbatch = 8\ncontext = 2048\n'
    )
    code = main(
        [
            "whatif",
            str(saved),
            "--vary",
            "device.hbm_bandwidth=0.5x,2x",
            "--vary",
            "device.matrix_peak=0.5x,2x",
            "--plot",
            str(tmp_path / "t.png"),
            "--json",
        ]
    )
    assert code == 0
    sens = {s["field"]: s["elasticity"] for s in json.loads(capsys.readouterr().out)["sensitivity"]}
    # Decode reads every weight and the KV cache per token: HBM-bound, compute barely matters.
    assert 0 < sens["device.hbm_bandwidth"] <= 1
    assert abs(sens["device.matrix_peak"]) < 0.1 < sens["device.hbm_bandwidth"]


def test_whatif_infer_rejects_serve(tmp_path, capsys):
    saved = tmp_path / "serve.toml"
    saved.write_text(
        'command = "infer"\n[args]\nmodel = "llama-3-8b"\nsystem = "dgx-h100"\nserve = true\n'
    )
    assert main(["whatif", str(saved), "--vary", "device.hbm_bandwidth=2x"]) == 2
    assert "serve" in capsys.readouterr().err


SMALL_SD = """
command = "sd"
[args]
target = "qwen2-57b-a14b"
draft = "qwen2-0.5b"
system = "hgx-a800"
devices = 2
gamma = 4
alpha = "0.8"
batch = "1,16,64"
"""


def test_whatif_sd_base_matches_the_sd_command(tmp_path, capsys):
    saved = tmp_path / "sd.toml"
    saved.write_text(SMALL_SD)
    sd_argv = ["sd", "--target", "qwen2-57b-a14b", "--draft", "qwen2-0.5b", "--system"]
    sd_argv += ["hgx-a800", "--devices", "2", "--gamma", "4", "--alpha", "0.8"]
    assert main([*sd_argv, "--batch", "1,16,64", "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)
    code = main(
        [
            "whatif",
            str(saved),
            "--vary",
            "device.hbm_bandwidth=0.5x,2x",
            "--vary",
            "model.moe.top_k=0.5x",
            "--plot",
            str(tmp_path / "t.png"),
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["command"] == "sd" and out["metric"] == "peak_speedup"
    assert out["base_metric"] == pytest.approx(direct["peak"]["speedup"], rel=1e-12)
    points = {(p["field"], p["value"]): p for p in out["points"]}
    assert all(p["error"] is None for p in out["points"])
    # Faster HBM makes the memory-bound plain decode step cheaper relative to the
    # verification, so it changes the speedup; the metric must respond to the system.
    assert points[("device.hbm_bandwidth", "2x")]["peak_speedup"] != out["base_metric"]
    # model.* varies the target: top-4 instead of top-8 is the sd command's --topk 4 group.
    assert main([*sd_argv, "--batch", "1,16,64", "--topk", "4", "--json"]) == 0
    topk = json.loads(capsys.readouterr().out)["groups"][1]["peak"]["speedup"]
    assert points[("model.moe.top_k", "0.5x")]["peak_speedup"] == pytest.approx(topk, rel=1e-12)


def test_sd_takes_a_system_object(tmp_path):
    request = SdRequest(
        target="qwen2-57b-a14b", draft="eagle", devices=2, gamma=3, alpha="0.7", batch="1,8",
        engine="none", system=load_system("hgx-a800"),
    )  # fmt: skip
    system = request.system
    base = sd(request)
    fast = replace(
        system, device=replace(system.device, hbm_bandwidth=2 * system.device.hbm_bandwidth)
    )
    faster = sd(replace(request, system=fast))
    assert base.system == faster.system and len(base.rows) == 2
    # Plain decode of a 57B MoE is HBM-bound: doubling the bandwidth shortens every step.
    for slow_row, fast_row in zip(base.rows, faster.rows, strict=True):
        assert fast_row.t_ar_s < slow_row.t_ar_s


def test_whatif_sd_needs_a_target(tmp_path, capsys):
    saved = tmp_path / "sd.toml"
    saved.write_text('command = "sd"\n[args]\ndraft = "eagle"\nsystem = "hgx-a800"\n')
    assert main(["whatif", str(saved), "--vary", "device.hbm_bandwidth=2x"]) == 2
    assert "args.target" in capsys.readouterr().err


def test_example_sd_whatif_loads():
    saved = load_saved(Path(__file__).resolve().parents[1] / "examples" / "sd_whatif.toml")
    assert saved.command == "sd" and saved.metric == "peak_speedup"
    assert [parse_vary(v).field for v in saved.vary][0] == "device.hbm_bandwidth"
