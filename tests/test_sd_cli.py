"""``xpusim sd`` end to end."""

from __future__ import annotations

import csv
import json

from xpusim.sim.cli.main import main


def test_sd_json_rows_and_groups(capsys, tmp_path):
    plot = tmp_path / "sd.png"
    table = tmp_path / "sd.csv"
    argv = [
        "sd",
        "--target",
        "qwen2-57b-a14b",
        "--draft",
        "qwen2-0.5b",
        "--system",
        "hgx-a800",
        "--devices",
        "2",
        "--gamma",
        "4",
        "--alpha",
        "0.95",
        "--batch",
        "1,8,16,64",
        "--compare-dense",
        "opt-30b",
        "--draft-dense",
        "opt-350m",
        "--topk",
        "2,16",
        "--json",
        "--csv",
        str(table),
        "--plot",
        str(plot),
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in out["rows"]] == [1, 8, 16, 64]
    keys = {
        "batch",
        "t_ar_s",
        "t_sd_round_s",
        "t_draft_s",
        "t_verify_s",
        "t_reject_s",
        "speedup",
        "target_efficiency",
        "experts_loaded",
    }
    assert keys <= set(out["rows"][0])
    assert [g["label"] for g in out["groups"]] == ["qwen2-57b-a14b", "opt-30b", "top-2", "top-16"]
    assert out["groups"][1]["top_k"] is None
    assert plot.stat().st_size > 1000
    with table.open() as fh:
        assert len(list(csv.DictReader(fh))) == 16


def test_sd_eagle_sigma_text(capsys):
    assert (
        main(
            [
                "sd",
                "--target",
                "mixtral-8x7b",
                "--draft",
                "eagle",
                "--system",
                "hgx-a800",
                "--devices",
                "2",
                "--gamma",
                "3",
                "--sigma",
                "0.66",
                "--batch",
                "1,4,8",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "peak" in text and "eagle" in text


def test_sd_bad_input(capsys):
    base = [
        "sd",
        "--target",
        "qwen2-57b-a14b",
        "--draft",
        "qwen2-0.5b",
        "--system",
        "hgx-a800",
        "--devices",
        "2",
    ]
    assert main(base + ["--alpha", "1.5"]) == 2
    assert main(base + ["--gamma", "2", "--alpha", "0.9,0.8,0.7"]) == 2
    assert main(base + ["--compare-dense", "opt-30b"]) == 2
    assert main(base + ["--topk", "65"]) == 2
    assert main(base + ["--batch", "0,4"]) == 2
