"""xpusim.whatif: saved commands are read into requests and varied as objects; as_dict()
is the command's --json."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from xpusim.sim.api.train import TrainRequest
from xpusim.sim.api.whatif import WhatIfRequest
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.studies.whatif import load_saved

import xpusim

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = dict(model="qwen2-0.5b", system="atlas-800t-a2", nodes=1, tp=2, pp=2, mbs=1, gbs=8,
             seq=1024)  # fmt: skip
SMALL_TOML = 'command = "train"\n[args]\n' + "".join(
    f"{k} = {json.dumps(v)}\n" for k, v in SMALL.items()
)


def test_kwargs_equal_the_command(capsys, tmp_path):
    saved, plot, csv = EXAMPLES / "ep_whatif.toml", tmp_path / "t.png", tmp_path / "p.csv"
    vary = ["system.inter_node_bandwidth=0.5x,2x", "device.hbm_bandwidth=2x"]
    argv = ["whatif", str(saved), "--plot", str(plot), "--csv", str(csv), "--json"]
    assert main([*argv, "--vary", vary[0], "--vary", vary[1]]) == 0
    want = json.loads(capsys.readouterr().out)
    got = xpusim.whatif(saved=str(saved), vary=tuple(vary), plot=str(plot), csv=str(csv))
    assert got.as_dict() == want
    assert got.command == "ep" and got.metric == "total_time_s"
    assert set(got.elasticities) == {"system.inter_node_bandwidth", "device.hbm_bandwidth"}
    assert got.files == {"tornado": str(plot), "csv": str(csv)}


def test_the_files_vary_is_the_default(tmp_path):
    saved = EXAMPLES / "llama_decode_whatif.toml"
    got = xpusim.whatif(WhatIfRequest(saved=saved, plot=str(tmp_path / "t.png")))
    assert [s["field"] for s in got.sensitivity] == [
        v.partition("=")[0] for v in load_saved(saved).vary
    ]


def test_request_object_equals_keywords(tmp_path):
    kw = dict(saved=str(EXAMPLES / "sd_whatif.toml"), vary="device.hbm_bandwidth=2x",
              plot=str(tmp_path / "t.png"))  # fmt: skip
    assert xpusim.whatif(WhatIfRequest(**kw)).as_dict() == xpusim.whatif(**kw).as_dict()


def test_a_request_is_studied_as_it_is(tmp_path):
    """No file: a TrainRequest's base point is xpusim.train of the same request."""
    request = TrainRequest(**SMALL)
    got = xpusim.whatif(saved=request, vary="device.matrix_peak=0.5x,2x",
                        plot=str(tmp_path / "t.png"))  # fmt: skip
    assert got.command == "train" and got.metric == "tokens_per_s"
    assert got.base_metric == xpusim.train(request).tokens_per_s
    assert 0 < got.elasticities["device.matrix_peak"] <= 1


def test_saved_args_take_flag_style_keys(tmp_path):
    saved = tmp_path / "train.toml"
    saved.write_text(SMALL_TOML + "no-sequence-parallel = true\nattention-impl = 'standard'\n")
    request = load_saved(saved).request
    assert request == TrainRequest(**SMALL, sequence_parallel=False, attention_impl="standard")
    got = xpusim.whatif(saved=str(saved), vary="device.hbm_bandwidth=2x",
                        plot=str(tmp_path / "t.png"))  # fmt: skip
    assert got.base_metric == xpusim.train(request).tokens_per_s


def test_unknown_saved_key_names_the_key_and_the_file(tmp_path):
    saved = tmp_path / "train.toml"
    saved.write_text(SMALL_TOML + "tensor_parallel = 2\n")
    with pytest.raises(InputError, match=rf"{saved}: args: unknown option 'tensor_parallel'"):
        xpusim.whatif(saved=str(saved), vary="device.hbm_bandwidth=2x")


def test_unknown_keyword_and_missing_saved_are_named():
    with pytest.raises(InputError, match="'varry'"):
        xpusim.whatif(saved=str(EXAMPLES / "ep_whatif.toml"), varry="device.hbm_bandwidth=2x")
    with pytest.raises(InputError, match="needs a saved command"):
        xpusim.whatif(vary="device.hbm_bandwidth=2x")


def test_a_base_point_that_does_not_fit_is_bad_input(tmp_path):
    """whatif studies a working point: one out of memory is refused, naming the verdict."""
    request = replace(TrainRequest(**SMALL), model="llama-2-70b", recompute="none")
    with pytest.raises(InputError, match="base point: NegativeVerdict: out of memory"):
        xpusim.whatif(saved=request, vary="device.hbm_bandwidth=2x", plot=str(tmp_path / "t.png"))
