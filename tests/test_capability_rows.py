"""Capabilities that published rows needed: total-token serving throughput, the FA2
training TFLOP/s count, every-k-th-layer activation checkpointing, the H100 NVL device."""

from __future__ import annotations

import json

import pytest
from xpusim.sim.cli.main import main
from xpusim.sim.validation.metrics import metric_for


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


SERVE = [
    "infer", "--model", "qwen2-0.5b", "--system", "dgx-a100", "--devices", "1",
    "--engine", "trtllm-0.6.1", "--serve", "--rate", "10000", "--requests", "16",
    "--prompt-len", "128", "--output-len", "8",
]  # fmt: skip


def test_serve_reports_total_tokens_per_s(capsys):
    out = _json(capsys, SERVE + ["--json"])
    # 16 requests x (128 prompt + 8 output) tokens over the makespan; output alone is 16 x 8.
    assert out["total_tokens_per_s"] == pytest.approx(16 * 136 / out["makespan_s"])
    assert out["throughput_tokens_per_s"] == pytest.approx(16 * 8 / out["makespan_s"])
    assert out["total_tokens_per_s"] == pytest.approx(17 * out["throughput_tokens_per_s"])


def test_serve_text_shows_total_tokens(capsys):
    assert main(SERVE) == 0
    assert "prompt + output tokens/s" in capsys.readouterr().out


def test_serve_api_result_has_total_tokens():
    from xpusim.api import ServeRequest, serve

    r = serve(ServeRequest(model="qwen2-0.5b", system="dgx-a100", devices=1, engine="trtllm-0.6.1",
                           rate=10000, requests=16, prompt_len="128", output_len="8"))
    assert r.total_tokens_per_s == pytest.approx(17 * r.throughput_tokens_per_s)
    assert r.as_dict()["total_tokens_per_s"] == r.total_tokens_per_s


def test_total_tokens_metric_reads_the_field():
    metric = metric_for("infer", "total_tokens_per_s")
    assert metric is not None
    assert metric({}, {"total_tokens_per_s": 123.0}) == 123.0


# --- --recompute-every: torchtitan's selective layer AC -------------------------------

from dataclasses import replace  # noqa: E402

from xpusim.hwprofiles import load_system  # noqa: E402
from xpusim.sim.errors import InputError  # noqa: E402
from xpusim.sim.models.spec import ModelSpec  # noqa: E402
from xpusim.sim.parallel import ParallelPlan  # noqa: E402
from xpusim.sim.training import estimate_memory  # noqa: E402
from xpusim.sim.training.memory import analytical_memory  # noqa: E402

DENSE6 = ModelSpec(
    name="hand-dense6", family="llama", hidden=1024, layers=6, heads=8, kv_heads=4,
    head_dim=128, ffn=4096, vocab=32000,
)  # fmt: skip


def test_layer_recompute_every_kth_layer():
    plan = ParallelPlan(recompute="full", recompute_every=3)
    # torchtitan counts blocks from 1 and checkpoints block n when n % 3 == 0.
    assert [plan.layer_recompute(f"L{i}") for i in range(6)] == [
        "none", "none", "full", "none", "none", "full"]  # fmt: skip
    assert plan.layer_recompute("head") == "full"  # non-layer slots follow --recompute
    assert ParallelPlan(recompute="full").layer_recompute("L0") == "full"


@pytest.mark.parametrize("every, recomputed", [(2, 3), (3, 2), (4, 1), (7, 0)])
def test_recompute_every_memory_by_hand(every, recomputed):
    node = load_system("dgx-a100", nodes=1)
    base = ParallelPlan(tp=1, pp=1, dp=8, mbs=1, seq=2048)
    none = estimate_memory(DENSE6, node, replace(base, recompute="none"))[0]
    full = estimate_memory(DENSE6, node, replace(base, recompute="full"))[0]
    plan = replace(base, recompute="full", recompute_every=every)
    mixed = estimate_memory(DENSE6, node, plan)[0]
    # Full recompute everywhere, plus what each of the 6 - recomputed layers that keep
    # their activations adds over a checkpointed one.
    gap = none.per_layer_activations - full.per_layer_activations
    expected = full.activations + (6 - recomputed) * gap
    assert mixed.activations == pytest.approx(expected, rel=1e-12)
    assert analytical_memory(DENSE6, node, plan) == estimate_memory(DENSE6, node, plan)


def _train(capsys, extra: list[str]) -> dict:
    return _json(capsys, [
        "train", "--model", "llama-2-7b", "--system", "dgx-a100", "--nodes", "1",
        "--tp", "1", "--pp", "1", "--dp", "8", "--zero", "3", "--mbs", "1", "--gbs", "8",
        "--seq", "2048", "--json", *extra,
    ])  # fmt: skip


def test_recompute_every_time_is_between_none_and_full(capsys):
    none = _train(capsys, ["--recompute", "none"])
    full = _train(capsys, ["--recompute", "full"])
    half = _train(capsys, ["--recompute", "full", "--recompute-every", "2"])
    assert half["plan"]["recompute_every"] == 2
    # 32 layers: 16 re-run their forward, so the recompute costs about half of full's.
    assert none["step_time_s"] < half["step_time_s"] < full["step_time_s"]
    mid = (none["step_time_s"] + full["step_time_s"]) / 2
    assert half["step_time_s"] == pytest.approx(mid, rel=0.02)


@pytest.mark.parametrize("flags, needle", [
    (["--recompute", "full", "--recompute-every", "0"], "recompute_every"),
    (["--recompute", "none", "--recompute-every", "2"], "--recompute-every"),
])  # fmt: skip
def test_recompute_every_bad_input(capsys, flags, needle):
    argv = ["train", "--model", "llama-2-7b", "--system", "dgx-a100", "--nodes", "1", *flags]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_recompute_every_plan_validation():
    from xpusim.sim.parallel import validate_plan

    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="recompute_every"):
            validate_plan(DENSE6, ParallelPlan(recompute="full", recompute_every=bad), 8)  # type: ignore[arg-type]


# --- the FlashAttention-2 paper's training TFLOP/s ------------------------------------


def test_fa2_tflops_metric_by_hand():
    from xpusim.sim.models.counting import param_counts
    from xpusim.sim.models.hf_config import load_model

    spec = load_model("gpt3-1.3b")  # 24 layers, hidden 2048
    params = param_counts(spec).total
    # FA2 Table 1: 6*seqlen*params + 12*layers*hidden*seqlen^2 per 2048-token sequence.
    per_seq = 6 * 2048 * params + 12 * 24 * 2048 * 2048**2
    payload = {"tokens_per_step": 512 * 2048, "step_time_s": 4.0, "devices": 8}
    metric = metric_for("train", "tflops_6n_attn")
    assert metric is not None
    got = metric({"model": "gpt3-1.3b", "seq": 2048}, payload)
    assert got == pytest.approx(512 * per_seq / 4.0 / 8 / 1e12, rel=1e-12)
    assert 1.30e9 < params < 1.33e9  # GPT-3 XL, tied embeddings


# --- the H100 NVL device --------------------------------------------------------------


def test_h100_nvl_profile_datasheet_figures():
    from xpusim.hwprofiles import load_device

    nvl, sxm = load_device("h100-nvl"), load_device("h100-sxm5-80gb")
    assert nvl.hbm_bandwidth == pytest.approx(3.9e12)
    assert nvl.hbm_capacity == pytest.approx(94 * 2**30)
    # Dense = half of the datasheet's with-sparsity 1,671 / 3,341 TFLOP/s.
    assert nvl.matrix_peak["bf16"] == pytest.approx(1671e12 / 2, rel=1e-3)
    assert nvl.matrix_peak["fp8"] == pytest.approx(3341e12 / 2, rel=1e-3)
    # The tensor clock the datasheet peak implies on 132 SMs x 4096 FLOP/clk.
    assert nvl.cores == 132
    assert nvl.clock_hz * 132 * 4096 == pytest.approx(nvl.matrix_peak["bf16"], rel=1e-3)
    # Efficiencies carried over from the SXM profile.
    assert nvl.efficiency.memory_max == sxm.efficiency.memory_max
    assert nvl.efficiency.matrix_max == sxm.efficiency.matrix_max


def test_h100_nvl_stream_copy_runs(capsys):
    out = _json(capsys, ["op", "elementwise", "--device", "h100-nvl", "--numel", "33554432",
                         "--inputs", "1", "--dtype", "fp64", "--json"])
    moved = 33554432 * 8 * 2
    # Memory-bound: no faster than the 3.9 TB/s HBM.
    assert moved / out["time_s"] < 3.9e12
