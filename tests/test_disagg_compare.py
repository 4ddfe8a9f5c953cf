"""Disaggregated serving (KV transfer by hand) and the compare command."""

from __future__ import annotations

import json

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.cli.main import main
from xpusim.sim.inference.disagg import KVPath, kv_path, transfer_times
from xpusim.sim.inference.kvcache import kv_bytes_per_token
from xpusim.sim.models.hf_config import load_model


def test_kv_transfer_is_bytes_over_bandwidth_by_hand() -> None:
    path = KVPath(bandwidth=100e9, latency=5e-6, via="test")
    # two caches of 1 GB and 2 GB ready at 0 s and 0.001 s: FIFO on one path
    arrive = transfer_times([0.0, 0.001], [1e9, 2e9], path)
    assert arrive[0] == pytest.approx(1e9 / 100e9 + 5e-6)
    assert arrive[1] == pytest.approx(1e9 / 100e9 + 2e9 / 100e9 + 5e-6)


def test_kv_path_nics_between_systems_by_hand() -> None:
    pre, dec = load_system("ascend-950pr-8"), load_system("atlas-950-superpod")
    path = kv_path(pre, dec, 16, 16)
    # prefill side: 16 devices x one 400 Gb/s NIC each x 0.85; decode side: 16 x 1 TB/s
    assert path.bandwidth == pytest.approx(16 * 50e9 * 0.85)
    assert path.latency == dec.nic.latency


def test_kv_path_inside_one_nvlink_domain() -> None:
    nvl = load_system("gb200-nvl72")
    path = kv_path(nvl, nvl, 8, 16)
    assert path.bandwidth == pytest.approx(8 * 900e9 * 0.802)
    assert "scale-up" in path.via


def test_mla_kv_bytes_per_token_by_hand() -> None:
    spec = load_model("deepseek-v3")
    # MLA caches the 512-wide latent plus the 64-wide rope key per layer, 61 layers
    assert kv_bytes_per_token(spec, "bf16", 1) == (512 + 64) * 2 * 61
    assert kv_bytes_per_token(spec, "fp8", 1) == (512 + 64) * 1 * 61


def test_disaggregated_serving_cli(capsys) -> None:
    rc = main(["infer", "--model", "qwen2-0.5b", "--serve", "--system", "dgx-h100",
               "--devices", "2", "--prefill-system", "dgx-h100", "--prefill-devices", "2",
               "--decode-system", "hgx-h200", "--decode-devices", "2",
               "--requests", "20", "--rate", "5", "--prompt-len", "512", "--output-len", "32",
               "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    split, co = d["disaggregated"], d["colocated"]
    assert split["completed"] == co["completed"] == 20
    assert co["devices"] == 2
    kv = split["kv_transfer"]
    assert kv["bytes_total"] == pytest.approx(20 * 512 * d["kv_bytes_per_token"])
    assert "NICs" in kv["via"]
    assert split["ttft_s"]["mean"] > 0 and split["tpot_s"]["mean"] > 0


def test_disagg_flags_need_devices(capsys) -> None:
    rc = main(["infer", "--model", "qwen2-0.5b", "--serve", "--system", "dgx-h100",
               "--prefill-system", "dgx-h100", "--decode-devices", "2"])
    assert rc == 2
    assert "--prefill-devices" in capsys.readouterr().err


def test_compare_train_cli(capsys, tmp_path) -> None:
    plot = tmp_path / "c.png"
    rc = main(["compare", "--systems", "dgx-h100,dgx-b200", "--devices", "8", "--plot",
               str(plot), "--json", "train", "--model", "qwen2-0.5b", "--tp", "1", "--mbs", "1",
               "--gbs", "8", "--seq", "1024"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    rows = {r["system"]: r for r in d["rows"]}
    assert rows["dgx-h100"]["devices"] == rows["dgx-b200"]["devices"] == 8
    assert rows["dgx-b200"]["tokens_per_s"] > rows["dgx-h100"]["tokens_per_s"]
    r = rows["dgx-h100"]
    assert r["tokens_per_s_per_kw"] == pytest.approx(r["tokens_per_s"] / (8 * 0.7))
    assert plot.exists()


def test_compare_reports_a_system_that_cannot_run(capsys) -> None:
    rc = main(["compare", "--systems", "dgx-h100,gb200-nvl72", "--devices", "8", "train",
               "--model", "qwen2-0.5b", "--tp", "1", "--gbs", "8", "--seq", "1024"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "not a whole number of 72-device nodes" in out


def test_compare_rejects_system_flag(capsys) -> None:
    rc = main(["compare", "--systems", "dgx-h100", "train", "--model", "qwen2-0.5b",
               "--system", "dgx-a100"])
    assert rc == 2
    assert "--system" in capsys.readouterr().err


def test_compare_rows_are_the_studies_results(capsys) -> None:
    """compare runs the command's study function: a row's figures are xpusim.train's, and
    a plan that does not fit is the study's verdict (rc 3, out of memory)."""
    import xpusim

    rc = main(["compare", "--systems", "dgx-h100", "--json", "train", "--model", "qwen2-0.5b",
               "--tp", "1", "--mbs", "1", "--gbs", "8", "--seq", "1024"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    want = xpusim.train(model="qwen2-0.5b", system="dgx-h100", tp=1, mbs=1, gbs=8, seq=1024)
    assert row["tokens_per_s"] == want.tokens_per_s and row["step_s"] == want.step_time_s
    rc = main(["compare", "--systems", "dgx-h100", "--json", "train", "--model", "llama-2-70b",
               "--tp", "1", "--mbs", "1", "--gbs", "8", "--seq", "4096", "--recompute", "none"])
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert rc == 0 and row["rc"] == 3 and row["verdict"] == "out of memory"


def test_compare_draws_no_traces(capsys) -> None:
    rc = main(["compare", "--systems", "dgx-h100", "--json", "train", "--model", "qwen2-0.5b",
               "--gbs", "8", "--trace", "t.json"])
    # Refused on every system, so bad input (exit 2), not a comparison.
    assert rc == 2 and "drop it" in capsys.readouterr().err
