"""Invariants of the study commands (docs/cost_model.md, "Study commands (invariant sweep,
round 2)"): what a sweep of sd, serve, ep, whatif, compare and explore through the API held,
pinned on small cases, and the one documented exception whose mechanism is the engine's.

Every assertion is on modelled, deterministic quantities.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import fields, replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.cli.main import main
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.speculative import all_accepted, draft_rows
from xpusim.sim.studies.space import Candidate, to_spec
from xpusim.sim.studies.study_file import load_study

import xpusim

SD = dict(target="llama-2-7b", draft="eagle", system="dgx-a100", devices=1)
BATCHES = "1,4,16,64"


def test_sd_ar_step_is_infer_decode_step():
    r = xpusim.sd(**SD, gamma=4, alpha=0.8, batch=BATCHES, context=512)
    for row in r.rows:
        step = xpusim.infer(model="llama-2-7b", system="dgx-a100", devices=1,
                            phase="decode", batch=row.batch, context=512)
        assert row.t_ar_s == pytest.approx(step.time_s, rel=1e-12)


def test_sd_speedup_never_falls_as_alpha_rises():
    runs = [xpusim.sd(**SD, gamma=4, alpha=a, batch=BATCHES) for a in (0.5, 0.7, 0.9)]
    for lo, hi in zip(runs, runs[1:], strict=False):
        for a, b in zip(lo.rows, hi.rows, strict=True):
            assert b.speedup >= a.speedup
            assert b.t_ar_s == a.t_ar_s


def test_sd_step_times_never_fall_as_batch_grows():
    rows = xpusim.sd(**SD, gamma=4, alpha=0.8, batch=BATCHES).rows
    for a, b in zip(rows, rows[1:], strict=False):
        for f in ("t_ar_s", "t_draft_s", "t_verify_s", "t_sd_round_s"):
            assert getattr(b, f) >= getattr(a, f)


def test_sd_draft_time_falls_with_gamma_only_through_bonus_expansion():
    """The documented exception: vLLM V0 runs B + B*alpha^gamma draft rows and prepares
    them once per round, so a longer draft prepares fewer rows (115, 105, 90 at batch 64)."""
    engine = load_engine("vllm-0.6")
    assert engine.draft_bonus_expansion and engine.draft_prepare_once
    assert [draft_rows(engine, 64, all_accepted(0.8, g)) for g in (1, 2, 4)] == [115, 105, 90]
    t = [xpusim.sd(**SD, gamma=g, alpha=0.8, batch="64").rows[0].t_draft_s for g in (1, 2, 4)]
    assert t[0] > t[1] > t[2]
    # Without the expansion (SGLang) the draft time grows with gamma.
    qwen = dict(target="qwen3-30b-a3b", draft="qwen2-0.5b", system="dgx-h100", tp=1, ep=2,
                engine="sglang-0.4")
    t = [xpusim.sd(**qwen, gamma=g, alpha=0.8, batch="64").rows[0].t_draft_s for g in (1, 2, 4)]
    assert t[0] < t[1] < t[2]


def test_serve_throughput_never_falls_as_rate_rises():
    runs = [
        xpusim.serve(model="qwen2-57b-a14b", system="dgx-h100", tp=2, ep=2, requests=60,
                     rate=rate)
        for rate in (0.5, 2, 8, 32)
    ]
    tput = [r.throughput_tokens_per_s for r in runs]
    assert tput == sorted(tput)


def test_serve_more_kv_capacity_never_lowers_throughput():
    system = load_system("dgx-a100")
    bigger = replace(system, device=replace(system.device,
                                            hbm_capacity=system.device.hbm_capacity * 1.5))
    base, more = (
        xpusim.serve(model="llama-2-7b", system=s, devices=1, requests=120, rate=64)
        for s in (system, bigger)
    )
    assert more.metrics["kv_capacity_tokens"] > base.metrics["kv_capacity_tokens"]
    assert more.throughput_tokens_per_s >= base.throughput_tokens_per_s


def test_ep_hierarchical_never_sends_more_inter_node_bytes_and_sweep_equals_runs():
    r = xpusim.ep(model="deepseek-v3", system="dgx-h100", ep=32, tokens_per_device=1024,
                  dispatch="flat,hierarchical")
    flat, hier = r.runs
    assert hier.inter_node_bytes <= flat.inter_node_bytes
    sweep = xpusim.ep_sweep(model="deepseek-v3", system="dgx-h100", sweep="ep=8,16,32",
                            tokens_per_device=1024, dispatch="flat,hierarchical")
    for run in sweep.runs:
        one = xpusim.ep(model="deepseek-v3", system="dgx-h100", ep=run.ep,
                        tokens_per_device=1024, dispatch=run.dispatch)
        assert one.total_time_s == run.total_time_s


def test_whatif_improving_fields_never_lower_tokens_per_s(tmp_path):
    req = xpusim.TrainRequest(model="llama-2-7b", system="dgx-h100", nodes=2, tp=2, pp=2,
                              mbs=1, gbs=64, seq=2048)
    r = xpusim.whatif(saved=req, plot=str(tmp_path / "t.png"), vary=(
        "device.matrix_peak=1.1x,2x", "device.hbm_bandwidth=1.1x,2x",
        "system.inter_node_bandwidth=2x", "system.intra_node_bandwidth=2x",
        "system.inter_node_latency=0.5x"))
    assert r.base_metric == pytest.approx(xpusim.train(req).tokens_per_s, rel=1e-12)
    for point in r.points[1:]:
        assert point["error"] is None
        assert point["tokens_per_s"] >= r.base_metric


def test_compare_rows_equal_train_on_each_system(capsys):
    args = "train --model llama-2-7b --tp 2 --pp 2 --mbs 1 --gbs 64 --seq 2048"
    rc = main(["compare", "--json", "--systems", "atlas-800t-a2,dgx-h100", "--devices", "16",
               *shlex.split(args)])
    assert rc == 0
    for row in json.loads(capsys.readouterr().out)["rows"]:
        one = xpusim.train(model="llama-2-7b", system=row["system"], nodes=2, tp=2, pp=2,
                           mbs=1, gbs=64, seq=2048)
        assert row["tokens_per_s"] == pytest.approx(one.tokens_per_s, rel=1e-12)
        assert row["mfu"] == pytest.approx(one.mfu, rel=1e-12)


def test_explore_candidates_equal_train_on_their_plan(tmp_path):
    study_path = "examples/small_study.toml"
    study = load_study(study_path)
    r = xpusim.explore(study=study_path, shortlist=3, no_plots=True, no_cache=True,
                       out=str(tmp_path))
    names = [f.name for f in fields(Candidate)]
    checked = 0
    for row in r.ranked:
        if row.get("error"):
            continue
        spec = to_spec(Candidate(**{k: row[k] for k in names}), study)
        plan = {k: row[f"plan_{k}"] for k in ("tp", "pp", "vpp", "ep", "cp", "dp", "mbs",
                                               "recompute")}
        # Feasible in explore means train runs it (no NegativeVerdict) to the same numbers.
        one = xpusim.train(model=spec, system=r.system, gbs=study.fixed.global_batch,
                           seq=study.fixed.seq, dtype=study.fixed.dtype, **plan)
        assert row["tokens_per_s"] == pytest.approx(one.tokens_per_s, rel=1e-12)
        assert row["memory_per_device_bytes"] == pytest.approx(one.memory_per_device_bytes,
                                                               rel=1e-12)
        checked += 1
    assert checked > 0


def test_plan_label_names_non_default_selective_modules() -> None:
    """An explore row's label reproduces the candidate: `train --recompute selective` alone
    runs Megatron's default modules (core_attn), so other module sets are named."""
    from xpusim.sim.parallel import ParallelPlan
    from xpusim.sim.studies.plans import plan_label

    base = ParallelPlan(tp=2, pp=2, dp=2, mbs=1, gbs=8, recompute="selective")
    assert plan_label(base).endswith("rc=selective")
    mods = ParallelPlan(tp=2, pp=2, dp=2, mbs=1, gbs=8, recompute="selective",
                        recompute_modules=("norm", "attn", "act"))
    assert plan_label(mods).endswith("rc=selective[norm,attn,act]")
    full = ParallelPlan(tp=2, pp=2, dp=2, mbs=1, gbs=8, recompute="full",
                        recompute_modules=("norm",))
    assert plan_label(full).endswith("rc=full")
