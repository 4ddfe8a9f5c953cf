"""``xpusim collective``: JSON fields, sweeps with a plot, node inference, errors."""

from __future__ import annotations

import json

import pytest
from xpusim.hwprofiles import list_systems
from xpusim.sim.cli.main import main


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.skipif("dgx-h100" not in list_systems(), reason="dgx-h100 profile not present")
def test_all_reduce_dgx_h100_json(capsys):
    out = _json(
        capsys,
        [
            "collective",
            "all-reduce",
            "--system",
            "dgx-h100",
            "--ranks",
            "8",
            "--bytes",
            "1GiB",
            "--json",
        ],
    )
    for key in (
        "time_s",
        "algorithm_bandwidth",
        "bus_bandwidth",
        "algorithm",
        "link_bytes",
        "bottleneck",
        "schema_version",
    ):
        assert key in out
    # NCCL's default on an NVLS-capable NVSwitch: in-switch reduction, Simple protocol.
    assert out["algorithm"] == "nvls" and out["protocol"] == "Simple"
    assert out["bus_bandwidth"] < 2 * 450e9
    assert out["bus_bandwidth"] == pytest.approx(out["algorithm_bandwidth"] * 1.75)


def test_text_output(capsys):
    assert main(["collective", "all-to-all", "--system", "atlas-800t-a2", "--ranks", "16"]) == 0
    captured = capsys.readouterr()
    assert "busbw" in captured.out and "bottleneck" in captured.out
    assert "need 2 nodes" in captured.err


def test_ranks_beyond_one_node_infers_nodes(capsys):
    out = _json(
        capsys, ["collective", "all-reduce", "--system", "atlas-800t-a2", "--ranks", "32", "--json"]
    )
    assert out["nodes"] == 4
    assert "need 4 nodes" in out["note"]
    assert out["algorithm"] == "hierarchical"


def test_flow_backend_from_cli(capsys):
    a = _json(
        capsys,
        [
            "collective",
            "reduce-scatter",
            "--system",
            "atlas-800t-a2",
            "--ranks",
            "16",
            "--bytes",
            "64MiB",
            "--json",
        ],
    )
    f = _json(
        capsys,
        [
            "collective",
            "reduce-scatter",
            "--system",
            "atlas-800t-a2",
            "--ranks",
            "16",
            "--bytes",
            "64MiB",
            "--backend",
            "flow",
            "--json",
        ],
    )
    assert f["backend"] == "flow"
    assert f["time_s"] == pytest.approx(a["time_s"], rel=0.05)


def test_sweep_table_and_plot(tmp_path, capsys):
    plot = tmp_path / "ar.png"
    csv = tmp_path / "ar.csv"
    assert (
        main(
            [
                "collective",
                "all-reduce",
                "--system",
                "atlas-800t-a2",
                "--sweep",
                "8B:1MiB",
                "--plot",
                str(plot),
                "--csv",
                str(csv),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "busbw(GB/s)" in out
    assert plot.stat().st_size > 0
    assert len(csv.read_text().splitlines()) == 1 + 18  # 8 B .. 1 MiB doubling


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--ranks", "16", "--nodes", "1"], "needs 2 nodes"),
        (["--bytes", "lots"], "cannot read --bytes"),
        (["--sweep", "1MiB"], "MIN:MAX"),
        (["--system", "atlas-800t-a9"], "unknown system"),
        (["--algorithm", "pairwise"], "does not apply"),
    ],
)
def test_errors_exit_2(capsys, argv, match):
    assert main(["collective", "all-reduce", "--system", "atlas-800t-a2", *argv]) == 2
    assert match in capsys.readouterr().err
