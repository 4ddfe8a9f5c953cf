"""Findings of a new user's audit of the CLI (2026-12-07), each a real command run in-process
through ``xpusim.sim.cli.main.main``: its exit code and what it prints."""

from __future__ import annotations

import json
import shlex
import textwrap
from pathlib import Path

import pytest
from xpusim.sim.cli.main import main
from xpusim.sim.studies import whatif as whatif_study


def run_cli(capsys, command: str) -> tuple[int, str, str]:
    try:
        rc = main(shlex.split(command))
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


SAVED_TRAIN = textwrap.dedent(
    """\
    command = "train"
    [args]
    model = "llama-3-8b"
    system = "atlas-800t-a2"
    nodes = 1
    tp = 2
    pp = 2
    mbs = 1
    gbs = 16
    seq = 2048
    [whatif]
    metric = "no_such_metric"
    vary = ["device.hbm_bandwidth=0.5x,2x"]
    """
)


def test_whatif_unknown_metric_is_refused_before_the_variations_run(capsys, tmp_path, monkeypatch):
    # The README: "Every input is checked before work starts". The metric was checked only
    # after every point had been simulated.
    saved = tmp_path / "saved.toml"
    saved.write_text(SAVED_TRAIN)
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
